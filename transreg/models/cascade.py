"""Recursive cascade: one registration network applied several times, flows composed.

Pass 1 registers the moving image to the fixed one; pass k registers the moving image
warped by passes 1..k-1 (resampled once from the original, never twice) and the new
displacement is composed onto the total (Zhao et al., "Recursive cascaded networks",
ICCV 2019, with shared weights as in their weight-shared variant). The passes share one
network, so the cascade has the parameters of its base and ``passes`` times its compute.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..spatial import compose, warp
from ..zoo.registry import model_entrypoint, register_model
from .base import RegistrationModel

__all__ = ["RecursiveCascade"]


class RecursiveCascade(RegistrationModel):
    """``passes`` applications of the registration network ``base`` (an architecture
    name built with ``base_args``; other keyword arguments, e.g. ``ndim``, go to it too,
    so the cascade is built like any architecture; or a network built by
    ``transreg.create_model``, shared as it is); the output ``flow`` ``(B, ndim, *S)`` is the composed
    displacement in voxels, ``velocity`` is None (a diffeomorphic base stays
    diffeomorphic: a composition of diffeomorphisms is one)."""

    def __init__(self, base: str | RegistrationModel = "transmorph_micro", base_args: Mapping[str, Any] | None = None,
                 passes: int = 2, **base_overrides: Any):
        super().__init__()
        if isinstance(base, str):
            network = model_entrypoint(base)(**{**dict(base_args or {}), **base_overrides})
        else:  # an existing network, its weights shared, not copied
            network, base = base, getattr(base, "architecture", None)
            if not isinstance(base, str) or not isinstance(getattr(network, "init_args", None), Mapping):
                raise TypeError(f"cannot cascade {type(network).__name__}: it has no .architecture/.init_args "
                                "(build it with transreg.create_model)")
        self._adopt(base, network, passes)

    @classmethod
    def wrapping(cls, network: RegistrationModel, passes: int) -> "RecursiveCascade":
        """A cascade around an existing (e.g. pretrained) ``network``, its weights shared,
        not copied; the network must carry ``.architecture`` and ``.init_args`` (models
        made by ``transreg.create_model`` do)."""
        cascade = cls(network, passes=passes)
        cascade.architecture = "recursive_cascade"
        return cascade

    def _adopt(self, base: str, network: RegistrationModel, passes: int) -> None:
        if isinstance(network, RecursiveCascade):
            raise ValueError("the base of a recursive cascade cannot itself be a cascade: raise `passes` instead")
        if not isinstance(network, RegistrationModel):
            raise TypeError(f"the base {base!r} builds {type(network).__name__}, not a registration network")
        if int(passes) < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.base = network
        self.passes = int(passes)
        self.ndim = network.ndim
        self.in_channels = network.in_channels
        self.size_divisor = network.size_divisor
        # every constructor argument with its value (checkpoint format 2): the base's own
        # recorded arguments, so that later defaults of the base cannot change the model
        self.init_args = {"base": base, "base_args": dict(network.init_args), "passes": self.passes}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.base.set_grad_checkpointing(enable)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, 2C, *P)`` = cat(moving, fixed) → (composed flow ``(B, ndim, *P)``, None)."""
        moving, fixed = x[:, : self.in_channels], x[:, self.in_channels:]
        flow, velocity = self.base.predict(x)
        if self.passes == 1:
            return flow, velocity
        for _ in range(self.passes - 1):
            step, _ = self.base.predict(torch.cat([warp(moving, flow), fixed], dim=1))
            flow = compose(flow, step)  # warp by the flow so far, then by this pass's step
        return flow, None


@register_model
def recursive_cascade(**kwargs: Any) -> RecursiveCascade:
    """Recursive cascade of ``base`` (default ``transmorph_micro``), ``passes`` (default 2) shared-weight passes."""
    return RecursiveCascade(**kwargs)


@register_model
def transmorph_micro_cascade(**kwargs: Any) -> RecursiveCascade:
    """transmorph_micro applied twice (recursive cascade, shared weights; the zoo's cascade)."""
    return RecursiveCascade(**{"base": "transmorph_micro", "passes": 2, **kwargs})
