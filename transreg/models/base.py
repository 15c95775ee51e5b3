"""What every registration network shares: the call convention and any-size support."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spatial import warp

__all__ = ["RegistrationOutput", "RegistrationModel", "InputError", "records_init_args"]

_Init = TypeVar("_Init", bound=Callable[..., None])


def records_init_args(init: _Init) -> _Init:
    """Decorator for a model's ``__init__``: after it runs, ``self.init_args`` holds every
    constructor argument by name with the value it had, defaults included (what a
    format-2 checkpoint stores, so that it rebuilds the same model whatever later
    defaults become). Tuples are kept; the checkpoint writer turns them into lists."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.init_args = {k: v for k, v in list(bound.arguments.items())[1:]}

    return recording_init  # type: ignore[return-value]


class InputError(ValueError):
    """Raised for inputs a model cannot register (shapes, dimensions, NaN)."""


@dataclass
class RegistrationOutput:
    """``flow`` ``(B, ndim, *S)``: displacement in voxels on the fixed grid;
    ``warped`` ``(B, C, *S)``: moving resampled onto the fixed grid;
    ``velocity``: the stationary velocity (diffeomorphic models), on its own grid."""

    flow: Tensor
    warped: Tensor
    velocity: Tensor | None = None


class RegistrationModel(nn.Module):
    """Base class: ``model(moving, fixed) -> RegistrationOutput``.

    Subclasses set ``ndim``, ``size_divisor`` and implement :meth:`predict`, which maps
    the network input ``cat([moving, fixed], 1)`` ``(B, 2C, *P)`` (``P`` divisible by
    ``size_divisor``) to ``(flow (B, ndim, *P), velocity or None)``. Inputs of any size
    are zero-padded at the end of each axis to ``P`` and the outputs cropped back.
    """

    ndim: int
    size_divisor: int
    in_channels: int = 1

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the encoder and decoder (parts without support ignore it)."""
        for part in (getattr(self, "encoder", None), getattr(self, "decoder", None)):
            if part is not None and hasattr(part, "set_grad_checkpointing"):
                part.set_grad_checkpointing(enable)

    def _check_inputs(self, moving: Tensor, fixed: Tensor) -> None:
        expected = self.ndim + 2
        for name, t in (("moving", moving), ("fixed", fixed)):
            if t.dim() != expected:
                raise InputError(
                    f"{name} must have shape (B, {self.in_channels}, *spatial) with {self.ndim} spatial "
                    f"dims for this {self.ndim}-D model, got shape {tuple(t.shape)}"
                )
            if t.shape[1] != self.in_channels:
                raise InputError(f"{name} must have {self.in_channels} channel(s), got {t.shape[1]}")
        if moving.shape != fixed.shape:
            raise InputError(
                f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape "
                "(resample them onto one grid first, e.g. with transreg.registration.preprocess)"
            )

    def forward(self, moving: Tensor, fixed: Tensor) -> RegistrationOutput:
        flow, velocity = self.displacement(moving, fixed)
        return RegistrationOutput(flow=flow, warped=warp(moving, flow), velocity=velocity)

    def displacement(self, moving: Tensor, fixed: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(flow, velocity)`` of :meth:`forward` without warping the moving image (what
        inference needs when it resamples the original image itself)."""
        self._check_inputs(moving, fixed)
        spatial = moving.shape[2:]
        x = torch.cat([moving, fixed], dim=1)
        pad = []
        for s in reversed(spatial):
            pad += [0, (-s) % self.size_divisor]
        if any(pad):
            x = F.pad(x, pad)
        flow, velocity = self.predict(x)
        if any(pad):
            flow = flow[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
            if velocity is not None:
                stride = x.shape[2] // velocity.shape[2]
                velocity = velocity[(slice(None), slice(None), *(slice(0, -(-s // stride)) for s in spatial))]
        return flow.contiguous(), velocity  # the decoders work channels-last; callers get the plain layout
