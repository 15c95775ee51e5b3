"""Apply a saved displacement field to another image: ``apply_transform(TRANSFORM, IMAGE)``.

``TRANSFORM`` is an ITK displacement field as ``transreg register`` writes it
(``displacement_itk.nii.gz``) and as ANTs / ITK / SimpleITK write them (``*Warp.nii.gz``):
a 5-D NIfTI ``(X, Y, Z, 1, 3)`` (``(X, Y, 1, 1, 2)`` in 2-D), vectors ``d(p)`` in LPS
millimetres on the field's grid; the output point ``p`` takes the image's value at
``p + d(p)``. The result is what SimpleITK's ``Resample(image, reference,
DisplacementFieldTransform(field), interpolator, 0)`` computes, with ITK's conventions:
the field is interpolated linearly and is zero outside its grid; a point samples the
image when its continuous index lies in ``[-0.5, n - 0.5)`` on every axis (neighbours
clamped to the image, as ITK's linear interpolator does), else the output is 0.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from ..spatial import voxel_grid, warp
from .io import RAS_TO_LPS, Image, ImageError, load_image
from .preprocess import Grid, spatial_affine

__all__ = ["INTERPOLATIONS", "apply_transform", "read_displacement_itk"]

INTERPOLATIONS = ("linear", "nearest")


def read_displacement_itk(path: str | os.PathLike[str]) -> tuple[Tensor, np.ndarray]:
    """An ITK displacement field → ``(ndim, *S)`` float64 displacement in RAS mm, and the
    file's 4×4 voxel → RAS affine. A folder is read as ``transreg register``'s output (its ``displacement_itk.nii.gz``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "displacement_itk.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"transform file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as err:  # nibabel raises several types for unreadable files
        raise ImageError(f"transform {path} is not a readable NIfTI file: {err}") from None
    shape = data.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] not in (2, 3) or (shape[4] == 2 and shape[2] != 1):
        hint = " (displacement_voxel.nii.gz holds voxel units: use displacement_itk.nii.gz)" if len(shape) == 4 else ""
        raise ImageError(f"transform {path} has shape {shape}; an ITK displacement field is 5-D (X, Y, Z, 1, 3) "
                         f"or (X, Y, 1, 1, 2){hint}")
    ndim = shape[4]
    vectors = data[:, :, :, 0, :] if ndim == 3 else data[:, :, 0, 0, :]
    if not np.all(np.isfinite(vectors)):
        raise ImageError(f"transform {path} contains NaN or infinite displacements")
    ras = np.moveaxis(vectors, -1, 0) * RAS_TO_LPS[:ndim].reshape(ndim, *([1] * ndim))
    return torch.from_numpy(ras), np.asarray(img.affine, dtype=np.float64)


def _map(matrix: np.ndarray, points: Tensor) -> Tensor:
    """``matrix`` ``(n + 1)²`` applied to points ``(n, *S)``."""
    n = points.shape[0]
    m = torch.as_tensor(matrix, dtype=torch.float64, device=points.device)
    return (m[:n, :n] @ points.reshape(n, -1) + m[:n, n:]).reshape(points.shape)


def _sample_itk(values: Tensor, index: Tensor, mode: str) -> Tensor:
    """``values`` ``(C, *S)`` at continuous indices ``index`` ``(ndim, *T)`` the ITK way
    (module docstring) → ``(C, *T)``, zero outside."""
    identity = voxel_grid(tuple(index.shape[1:]), torch.float64, index.device)
    out = warp(values[None], (index - identity)[None], mode=mode, padding="border")[0]
    size = torch.tensor(values.shape[1:], dtype=index.dtype, device=index.device).view(-1, *([1] * (index.dim() - 1)))
    inside = ((index >= -0.5) & (index < size - 0.5)).all(dim=0)
    return out * inside


def _is_integer_file(path: Path) -> bool:
    try:
        proxy = nib.load(str(path)).dataobj
        return bool(np.issubdtype(proxy.dtype, np.integer) and proxy.slope == 1 and proxy.inter == 0)
    except Exception:  # unreadable: load_image names the problem
        return False


def apply_transform(transform: str | os.PathLike[str], image: str | os.PathLike[str],
                    reference: str | os.PathLike[str] | None = None, interp: str = "linear",
                    device: str | torch.device = "cpu") -> Image:
    """Resample ``image`` through the displacement field ``transform`` onto ``reference``'s
    grid (default: the field's grid) → :class:`Image` with the reference affine.

    ``interp``: ``"linear"`` (float32 output) or ``"nearest"`` (the image's dtype: integer
    label maps stay integer). Raises ``FileNotFoundError`` / :class:`ImageError` naming
    the problem.
    """
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interp!r}")
    device = torch.device(device)
    displacement, field_affine = read_displacement_itk(transform)
    ndim = displacement.shape[0]
    field_grid = Grid(tuple(displacement.shape[1:]), spatial_affine(field_affine, ndim))
    image = Path(image)
    moving = load_image(image, labels=interp == "nearest" and _is_integer_file(image), name="image")
    ref = None if reference is None else load_image(reference, name="reference image")
    for what, n in (("image", moving.ndim), ("reference image", ndim if ref is None else ref.ndim)):
        if n != ndim:
            raise ImageError(f"the {what} is {n}-D but the transform {transform} is {ndim}-D")
    target, target_affine = (field_grid, field_affine) if ref is None else (Grid.of(ref), ref.affine)

    world = _map(target.affine, voxel_grid(target.shape, torch.float64, device))
    if target.shape == field_grid.shape and np.allclose(target.affine, field_grid.affine, atol=1e-6):
        d = displacement.to(device)  # the field's own grid: no interpolation
    else:
        d = _sample_itk(displacement.to(device), _map(np.linalg.inv(field_grid.affine), world), "bilinear")
    index = _map(np.linalg.inv(Grid.of(moving).affine), world + d)
    values = torch.as_tensor(moving.data.astype(np.float64), device=device)[None]
    out = _sample_itk(values, index, "bilinear" if interp == "linear" else "nearest")[0].cpu().numpy()
    dtype = moving.data.dtype if interp == "nearest" else np.float32
    return Image(out.astype(dtype), target_affine, f"{image} through {transform}")
