"""Spatial augmentation of registration pairs: random flips and a small random affine."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..spatial import affine_to_flow, warp

__all__ = ["rotation_matrix", "random_affine", "augment_pair"]


def rotation_matrix(angles: Tensor, ndim: int) -> Tensor:
    """Rotation matrix from one angle (2-D) or three Euler angles (3-D), radians."""
    if ndim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return torch.tensor([[c, -s], [s, c]])
    r = torch.eye(3)
    for axis, angle in enumerate(angles.tolist()):
        i, j = [a for a in range(3) if a != axis]
        m = torch.eye(3)
        m[i, i] = m[j, j] = math.cos(angle)
        m[i, j], m[j, i] = -math.sin(angle), math.sin(angle)
        r = m @ r
    return r


def random_affine(shape: tuple[int, ...], gen: torch.Generator, degrees: float, scale: float, shift: float) -> Tensor:
    """Displacement ``(1, ndim, *shape)`` (voxels) of a random affine about the grid centre:
    rotations ``U(-degrees, degrees)`` per plane, per-axis scaling ``U(1-scale, 1+scale)``,
    translation ``U(-shift, shift)`` voxels."""
    ndim = len(shape)
    n_angles = 1 if ndim == 2 else 3
    angles = (torch.rand(n_angles, generator=gen) * 2 - 1) * math.radians(degrees)
    scales = 1 + (torch.rand(ndim, generator=gen) * 2 - 1) * scale
    shifts = (torch.rand(ndim, generator=gen) * 2 - 1) * shift
    a = rotation_matrix(angles, ndim) @ torch.diag(scales)
    centre = (torch.tensor(shape, dtype=torch.float32) - 1) / 2
    t = centre - a @ centre + shifts
    matrix = torch.cat([a, t[:, None]], dim=1)[None]
    return affine_to_flow(matrix, shape)


def augment_pair(item: dict[str, Tensor], gen: torch.Generator, flip: bool = False, affine_degrees: float = 0.0,
                 affine_scale: float = 0.0, affine_shift: float = 0.0) -> dict[str, Tensor]:
    """Flip every tensor of the pair along the same random axes (each with probability
    1/2); then, if any affine range is non-zero, resample the moving image (linear) and
    its labels (nearest) with one small random affine. Tensors are ``(C, *S)``."""
    out = dict(item)
    ndim = out["moving"].dim() - 1
    if flip:
        axes = [1 + a for a in range(ndim) if float(torch.rand((), generator=gen)) < 0.5]
        if axes:
            out = {k: v.flip(axes) for k, v in out.items()}
    if affine_degrees or affine_scale or affine_shift:
        flow = random_affine(tuple(out["moving"].shape[1:]), gen, affine_degrees, affine_scale, affine_shift)
        out["moving"] = warp(out["moving"][None], flow)[0]
        if "moving_labels" in out:
            out["moving_labels"] = warp(out["moving_labels"][None], flow, mode="nearest")[0]
    return out
