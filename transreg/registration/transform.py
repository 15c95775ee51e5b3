"""The full fixed → moving map of a registration, on the original fixed grid."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..spatial import voxel_grid
from .preprocess import coordinates, sample, sample_affine, spatial_affine

__all__ = ["Transform", "AffineResampling"]


@dataclass
class Transform:
    """The full fixed → moving map on the original fixed grid.

    ``coords`` ``(ndim, *fixed_shape)``: moving-image voxel coordinates of every fixed
    voxel; ``fixed_affine``, ``moving_affine``: the two images' 4×4 voxel → RAS affines.
    """

    coords: Tensor
    fixed_affine: np.ndarray
    moving_affine: np.ndarray

    @property
    def ndim(self) -> int:
        return self.coords.shape[0]

    @classmethod
    def from_displacement(cls, displacement: np.ndarray | Tensor, fixed_affine: np.ndarray,
                          moving_affine: np.ndarray) -> "Transform":
        """From a voxel displacement ``(ndim, *fixed_shape)`` (moving voxel ``x + u(x)``)."""
        u = torch.as_tensor(np.asarray(displacement), dtype=torch.float32)
        return cls(u + voxel_grid(tuple(u.shape[1:])), np.asarray(fixed_affine), np.asarray(moving_affine))

    def displacement_voxel(self) -> np.ndarray:
        """``y(x) − x`` ``(ndim, *S)``: the Learn2Reg displacement (same-grid pairs)."""
        return (self.coords - voxel_grid(tuple(self.coords.shape[1:]), device=self.coords.device)).cpu().numpy()

    def displacement_world(self) -> np.ndarray:
        """``A_m y(x) − A_f x`` ``(ndim, *S)`` in RAS millimetres (in-plane for 2-D), in float64
        (``A_f x`` per axis, :func:`coordinates`), returned as float32."""
        n = self.ndim
        fixed, moving = spatial_affine(self.fixed_affine, n), spatial_affine(self.moving_affine, n)
        offset = fixed.copy()
        offset[:n, n] -= moving[:n, n]  # A_f x − t_m
        world = torch.einsum("ij,j...->i...", torch.as_tensor(moving[:n, :n], device=self.coords.device),
                             self.coords.double())
        world -= coordinates(offset, tuple(self.coords.shape[1:]), self.coords.device, torch.float64)
        return world.float().cpu().numpy()

    def apply(self, data: np.ndarray, labels: bool = False) -> np.ndarray:
        """Resample ``data`` (on the moving grid) onto the fixed grid: linear, or nearest
        neighbour for ``labels`` (dtype kept); zero outside the moving image."""
        return _resampled(data, self.coords.device, labels, lambda image, mode: sample(image, self.coords, mode))


@dataclass
class AffineResampling:
    """``data`` (on its own grid) resampled at ``matrix · x`` (``(ndim + 1)²``, target voxel
    → ``data`` voxel) for every voxel of a ``shape`` grid, when called: linear, or nearest
    neighbour for ``labels`` (dtype kept); zero outside. A plain picklable object, so a
    result can defer the work to the process that writes it."""

    data: np.ndarray
    matrix: np.ndarray
    shape: Sequence[int]
    labels: bool = False
    device: str = "cpu"

    def __call__(self) -> np.ndarray:
        return _resampled(self.data, self.device, self.labels,
                          lambda image, mode: sample_affine(image, self.matrix, self.shape, mode))


def _resampled(data: np.ndarray, device: torch.device | str, labels: bool,
               sample_at: Callable[[Tensor, str], Tensor]) -> np.ndarray:
    """``data`` through ``sample_at(image (1, 1, *S), mode)``: nearest neighbour on int64
    for ``labels`` (``data``'s dtype kept), else linear on float32 → the array."""
    image = torch.as_tensor(np.ascontiguousarray(data), device=device)[None, None]
    if labels:
        return sample_at(image.to(torch.int64), "nearest")[0, 0].cpu().numpy().astype(data.dtype)
    return sample_at(image.float(), "bilinear")[0, 0].cpu().numpy()
