"""Dimension-generic spatial operations on dense displacement fields.

Convention (DESIGN.md): a displacement ``flow`` has shape ``(B, ndim, *spatial)`` on the
fixed grid, in voxels, channel ``i`` along tensor axis ``i + 2``. The fixed-image point
``x`` corresponds to ``x + flow(x)`` in the moving image. Sampling uses
``grid_sample(align_corners=True)``: voxel ``0`` and voxel ``n - 1`` are the end points.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "warp",
    "integrate",
    "compose",
    "resize_flow",
    "jacobian_determinant",
    "sampling_grid",
    "affine_to_flow",
    "voxel_grid",
]

InterpMode = Literal["bilinear", "nearest"]
PaddingMode = Literal["zeros", "border"]


def _check_flow(flow: Tensor) -> int:
    ndim = flow.dim() - 2
    if ndim not in (2, 3) or flow.shape[1] != ndim:
        raise ValueError(
            f"flow must have shape (B, ndim, *spatial) with ndim 2 or 3, got {tuple(flow.shape)}"
        )
    return ndim


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` itself if float32 or float64, else a float32 copy (bfloat16, float16, integers)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sampling_grid(flow: Tensor, source_shape: Sequence[int] | None = None) -> Tensor:
    """Normalised ``grid_sample`` grid ``(B, *spatial, ndim)`` for ``x + flow(x)``.

    ``source_shape`` is the spatial shape of the image that is sampled (default: the
    flow's own grid). Coordinates are voxel indices of that image, so a source of another
    size is sampled at the same voxel indices. The grid is float32 (or float64) whatever
    the flow's dtype: in bfloat16, positions beyond voxel 128 would round to whole voxels.
    """
    ndim = _check_flow(flow)
    flow = _at_least_float32(flow)
    spatial = flow.shape[2:]
    source_shape = tuple(source_shape) if source_shape is not None else tuple(spatial)
    coords = []
    for axis in range(ndim):
        view = [1] * (ndim + 1)
        view[axis + 1] = spatial[axis]
        base = torch.arange(spatial[axis], device=flow.device, dtype=flow.dtype).view(view)
        scale = 2.0 / max(source_shape[axis] - 1, 1)
        coords.append((flow[:, axis] + base) * scale - 1.0)
    # grid_sample wants (x, y[, z]) = (last axis, ..., first axis)
    return torch.stack(coords[::-1], dim=-1)


def warp(
    image: Tensor,
    flow: Tensor,
    mode: InterpMode = "bilinear",
    padding: PaddingMode = "zeros",
) -> Tensor:
    """Resample ``image`` ``(B, C, *src_spatial)`` at ``x + flow(x)``.

    Returns ``(B, C, *flow_spatial)`` in ``image``'s dtype. Integer images (label maps)
    are sampled in float32 and rounded back; use ``mode="nearest"`` for them. Sampling
    positions and interpolation are float32 at least (a bfloat16 image or flow, e.g.
    under autocast, is sampled in float32 and the result cast back).
    """
    ndim = _check_flow(flow)
    if image.dim() != ndim + 2:
        raise ValueError(
            f"image must have shape (B, C, *spatial) with {ndim} spatial dims to match the "
            f"flow, got {tuple(image.shape)}"
        )
    if image.shape[0] != flow.shape[0]:
        if image.shape[0] == 1:
            image = image.expand(flow.shape[0], *image.shape[1:])
        else:
            raise ValueError(f"batch sizes differ: image {image.shape[0]}, flow {flow.shape[0]}")
    integer = not torch.is_floating_point(image)
    source = _at_least_float32(image)
    grid = sampling_grid(flow.to(source.dtype), image.shape[2:])
    out = F.grid_sample(source, grid, mode=mode, padding_mode=padding, align_corners=True)
    return (out.round() if integer else out).to(image.dtype)


def compose(flow_a: Tensor, flow_b: Tensor, padding: PaddingMode = "border") -> Tensor:
    """Displacement of "warp by ``flow_a``, then by ``flow_b``".

    ``warp(image, compose(a, b)) == warp(warp(image, a), b)``; on points,
    ``x ↦ x + b(x) ↦ x + b(x) + a(x + b(x))``. Both ``(B, ndim, *spatial)``.
    """
    return flow_b + warp(flow_a, flow_b, padding=padding)


def integrate(velocity: Tensor, steps: int = 7, padding: PaddingMode = "zeros") -> Tensor:
    """Scaling and squaring: the displacement of ``exp(velocity)``.

    ``velocity`` ``(B, ndim, *spatial)`` in voxels (a stationary velocity field); the
    result is ``(B, ndim, *spatial)``, float32 for a lower-precision velocity (the
    squarings accumulate in float32). ``padding="zeros"`` matches VoxelMorph.
    """
    _check_flow(velocity)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    flow = _at_least_float32(velocity) / (2**steps)
    for _ in range(steps):
        flow = flow + warp(flow, flow, padding=padding)
    return flow


def resize_flow(flow: Tensor, size: Sequence[int], rescale: bool = True) -> Tensor:
    """Resample a displacement onto a grid of ``size`` (linear interpolation).

    With ``rescale`` the vectors are multiplied by ``size / old_size`` per axis, so they
    stay in voxels of the new grid (voxels are treated as cells: ``align_corners=False``).
    """
    ndim = _check_flow(flow)
    size = tuple(int(s) for s in size)
    if len(size) != ndim:
        raise ValueError(f"size must have {ndim} entries, got {size}")
    mode = "bilinear" if ndim == 2 else "trilinear"
    out = F.interpolate(flow, size=size, mode=mode, align_corners=False)
    if rescale:
        factors = torch.tensor(
            [new / old for new, old in zip(size, flow.shape[2:])], device=flow.device, dtype=flow.dtype
        )
        out = out * factors.view(1, ndim, *([1] * ndim))
    return out


def jacobian_determinant(flow: Tensor, spacing: Sequence[float] | None = None) -> Tensor:
    """Determinant of the Jacobian of ``x ↦ x + flow(x)``, central differences.

    ``flow`` ``(B, ndim, *spatial)`` in voxels → ``(B, *spatial)``. One-sided differences
    at the borders (``torch.gradient``). ``spacing`` is irrelevant for a displacement in
    voxels and only accepted for fields in physical units (then ``flow`` is in the same
    unit as ``spacing``).
    """
    ndim = _check_flow(flow)
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ndim
    flow = flow.float()
    # grads[i][:, j] = d flow_j / d x_i
    grads = torch.gradient(flow, spacing=list(spacing), dim=list(range(2, ndim + 2)))
    a = [[grads[i][:, j] + 1.0 if i == j else grads[i][:, j] for j in range(ndim)] for i in range(ndim)]
    # det(J) = det(Jᵀ), expanded (elementwise: much faster than a batched LU of tiny matrices)
    if ndim == 2:
        return a[0][0] * a[1][1] - a[0][1] * a[1][0]
    return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))


def voxel_grid(shape: Sequence[int], dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
    """The voxel indices of a grid ``shape``: ``(ndim, *shape)``, channel i along axis i
    (the identity map in this module's displacement convention)."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def affine_to_flow(matrix: Tensor, shape: Sequence[int]) -> Tensor:
    """Dense displacement of a voxel-space affine map ``x ↦ A x + t``.

    ``matrix`` ``(B, ndim, ndim + 1)`` or ``(B, ndim + 1, ndim + 1)`` in voxel indices of
    the fixed grid ``shape`` (source voxel = ``A x + t``) → ``(B, ndim, *shape)``.
    """
    ndim = len(shape)
    matrix = matrix[:, :ndim, :]
    points = voxel_grid(shape, matrix.dtype, matrix.device).reshape(ndim, -1)
    mapped = matrix[:, :, :ndim] @ points + matrix[:, :, ndim:]
    return (mapped - points).reshape(matrix.shape[0], ndim, *shape)
