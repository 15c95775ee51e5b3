"""The full fixed → moving map of a registration, on the original fixed grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .preprocess import sample, spatial_affine

__all__ = ["Transform"]


def _identity(shape: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


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
        return cls(u + _identity(tuple(u.shape[1:])), np.asarray(fixed_affine), np.asarray(moving_affine))

    def displacement_voxel(self) -> np.ndarray:
        """``y(x) − x`` ``(ndim, *S)``: the Learn2Reg displacement (same-grid pairs)."""
        return (self.coords - _identity(tuple(self.coords.shape[1:]), self.coords.device)).cpu().numpy()

    def displacement_world(self) -> np.ndarray:
        """``A_m y(x) − A_f x`` ``(ndim, *S)`` in RAS millimetres (in-plane for 2-D)."""
        n = self.ndim
        fixed = torch.as_tensor(spatial_affine(self.fixed_affine, n), device=self.coords.device)
        moving = torch.as_tensor(spatial_affine(self.moving_affine, n), device=self.coords.device)
        y = self.coords.double().reshape(n, -1)
        x = _identity(tuple(self.coords.shape[1:]), self.coords.device).double().reshape(n, -1)
        world = (moving[:n, :n] @ y + moving[:n, n:]) - (fixed[:n, :n] @ x + fixed[:n, n:])
        return world.reshape(self.coords.shape).float().cpu().numpy()

    def apply(self, data: np.ndarray, labels: bool = False) -> np.ndarray:
        """Resample ``data`` (on the moving grid) onto the fixed grid: linear, or nearest
        neighbour for ``labels`` (dtype kept); zero outside the moving image."""
        image = torch.as_tensor(np.ascontiguousarray(data), device=self.coords.device)[None, None]
        if labels:
            out = sample(image.to(torch.int64), self.coords, mode="nearest")
            return out[0, 0].cpu().numpy().astype(data.dtype)
        return sample(image.float(), self.coords)[0, 0].cpu().numpy()
