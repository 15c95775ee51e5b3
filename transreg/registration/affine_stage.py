"""The affine stage of ``transreg register``: its modes and which affine network it uses.

Modes (``--affine``): ``learned`` (a trained affine network, a few forward passes:
:mod:`transreg.registration.learned_affine`), ``classic`` (the optimiser of
:mod:`transreg.registration.affine`), ``learned+classic`` (that optimiser from two
starts, the network's estimate and the centres of mass; the start that fits better after
the coarse level goes on) and ``none``. :data:`DEFAULT_AFFINE_MODE` is
the mode measured best on the test pairs (``evaluate/affine_modes.py``).

The affine network is, in this order: the one named by the caller, the one a
deformable checkpoint names in its ``config.json`` (``"affine_model"``, the stage it was
trained after), or :data:`transreg.zoo.index.DEFAULT_AFFINE_CHECKPOINT` (shipped).
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from torch import Tensor, nn

from .affine import AffineResult, affine_align
from .defaults import AFFINE_MODES, DEFAULT_AFFINE_MODE
from .learned_affine import learned_affine
from .preprocess import Grid

__all__ = ["AFFINE_MODES", "DEFAULT_AFFINE_MODE", "affine_mode", "affine_model_name", "run_affine_stage"]

ModelRef = Union[str, "os.PathLike[str]", nn.Module]


def affine_mode(value: bool | str | None, ndim: int = 3) -> str:
    """The mode of an ``affine`` argument for ``ndim``-D images: ``True``/``None`` → the
    default (``classic`` in 2-D: the zoo's affine network is 3-D), ``False`` → ``"none"``,
    a mode name → itself; anything else raises ``ValueError`` naming the modes."""
    if value is None or value is True:
        return DEFAULT_AFFINE_MODE if ndim == 3 else "classic"
    if value is False:
        return "none"
    if value not in AFFINE_MODES:
        raise ValueError(f"unknown affine mode {value!r}; use one of {', '.join(AFFINE_MODES)}")
    return str(value)


def affine_model_name(requested: ModelRef | None, deformable: nn.Module | None) -> ModelRef:
    """The affine network to use: ``requested``, else the deformable model's recorded
    ``affine_model``, else the zoo's default affine checkpoint."""
    if requested is not None:
        return requested
    recorded = getattr(deformable, "affine_model", None)
    if recorded:
        return recorded
    from ..zoo.index import DEFAULT_AFFINE_CHECKPOINT

    return DEFAULT_AFFINE_CHECKPOINT


def run_affine_stage(mode: str, moving: Tensor, moving_grid: Grid, fixed: Tensor, fixed_grid: Grid,
                     similarity: str = "mi", net: nn.Module | None = None) -> AffineResult:
    """World map fixed → moving (RAS mm) of ``mode`` for ``moving`` ``(1, 1, *Sm)`` on
    ``moving_grid`` and ``fixed`` ``(1, 1, *Sf)`` on ``fixed_grid`` (intensities in [0, 1]);
    ``net``: the affine network of the learned modes; ``similarity`` drives the optimiser."""
    if mode == "none":
        return AffineResult(matrix=np.eye(fixed_grid.ndim + 1))
    if mode == "classic":
        return affine_align(moving, moving_grid, fixed, fixed_grid, similarity=similarity)
    if mode not in ("learned", "learned+classic"):
        raise ValueError(f"unknown affine mode {mode!r}; use one of {', '.join(AFFINE_MODES)}")
    if net is None:
        raise ValueError(f"affine mode {mode!r} needs the affine network")
    result = learned_affine(net, moving, moving_grid, fixed, fixed_grid)
    if mode == "learned":
        return result
    # the optimiser's full schedule from both starts: as good as classic up to 30° and far
    # better at 60° (evaluate/results/affine_v2); 30 + 20 steps left turned heads misaligned
    return affine_align(moving, moving_grid, fixed, fixed_grid, similarity=similarity, init=[result.matrix, "com"])
