"""Apply saved transforms to another image: ``apply_transform(TRANSFORMS, IMAGE)``.

``TRANSFORMS`` is one transform file or a chain of them, in antsApplyTransforms' order
(``-t 1Warp.nii.gz -t 0GenericAffine.mat``): the output point ``p`` goes through the
first, then the second, ..., and the image's value at the last point is the output's.
Each is an ITK displacement field (``displacement_itk.nii.gz``, ANTs ``*Warp.nii.gz``:
``p → p + d(p)``) or an ITK linear transform file (ANTs ``0GenericAffine.mat``, ``.txt``,
``.tfm``), read by :mod:`transreg.registration.itk_transforms`. In SimpleITK terms the
chain ``[T1, T2, ..., Tk]`` is ``CompositeTransform([Tk, ..., T2, T1])`` (a composite
applies its last-added transform first), and the result is what ``Resample(image,
reference, composite, interpolator, 0)`` computes, with ITK's conventions: a field is
interpolated linearly and is zero outside its grid; a point samples the image when its
continuous index lies in ``[-0.5, n - 0.5)`` on every axis (neighbours clamped to the
image, as ITK's linear interpolator does), else the output is 0. The output grid is
``reference``'s, else the first displacement field's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from ..spatial import voxel_grid, warp
from .io import Image, ImageError, load_image
from .itk_transforms import AffineMap, DisplacementField, read_displacement_itk, read_transform
from .preprocess import Grid

__all__ = ["INTERPOLATIONS", "apply_transform", "read_displacement_itk"]

INTERPOLATIONS = ("linear", "nearest")

PathLike = Union[str, os.PathLike]


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


def _chain(transforms: PathLike | Sequence[PathLike | tuple[PathLike, bool]]) -> list[AffineMap | DisplacementField]:
    items = [transforms] if isinstance(transforms, (str, os.PathLike)) else list(transforms)
    if not items:
        raise ValueError("no transform given")
    chain = []
    for item in items:
        path, inverse = (item, False) if isinstance(item, (str, os.PathLike)) else item
        if not isinstance(path, (str, os.PathLike)) or not isinstance(inverse, bool):
            raise TypeError(f"a transform is a path or a (path, inverse: bool) pair, got {item!r}")
        chain.append(read_transform(path, inverse))
    dims = {t.ndim for t in chain}
    if len(dims) > 1:
        raise ImageError("the transforms mix 2-D and 3-D: " + ", ".join(f"{t.source} ({t.ndim}-D)" for t in chain))
    return chain


def apply_transform(transform: PathLike | Sequence[PathLike | tuple[PathLike, bool]], image: PathLike,
                    reference: PathLike | None = None, interp: str = "linear",
                    device: str | torch.device = "cpu") -> Image:
    """Resample ``image`` through ``transform`` onto ``reference``'s grid → :class:`Image`
    with the reference affine.

    ``transform``: one file (a path) or a list of them in antsApplyTransforms' order (module
    docstring); an entry ``(path, True)`` is that linear transform inverted (ANTs'
    ``[file,1]``). ``reference`` defaults to the grid of the first displacement field and is
    required when the chain has none. ``interp``: ``"linear"`` (float32 output) or
    ``"nearest"`` (the image's dtype: integer label maps stay integer). Raises
    ``FileNotFoundError`` / :class:`ImageError` naming the problem.
    """
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interp!r}")
    device = torch.device(device)
    chain = _chain(transform)
    ndim = chain[0].ndim
    fields = [t for t in chain if isinstance(t, DisplacementField)]
    if reference is None and not fields:
        raise ValueError("a reference image (--reference) is required: no transform is a displacement field "
                         "whose grid the output could take")
    image = Path(image)
    moving = load_image(image, labels=interp == "nearest" and _is_integer_file(image), name="image")
    ref = None if reference is None else load_image(reference, name="reference image")
    for what, n in (("image", moving.ndim), ("reference image", ndim if ref is None else ref.ndim)):
        if n != ndim:
            raise ImageError(f"the {what} is {n}-D but the transform {chain[0].source} is {ndim}-D")
    if ref is None:
        target, target_affine = fields[0].grid, fields[0].affine
    else:
        target, target_affine = Grid.of(ref), ref.affine

    points = _map(target.affine, voxel_grid(target.shape, torch.float64, device))
    for position, t in enumerate(chain):
        if isinstance(t, AffineMap):
            points = _map(t.matrix, points)
            continue
        grid, d = t.grid, t.displacement.to(device)
        if position > 0 or target.shape != grid.shape or not np.allclose(target.affine, grid.affine, atol=1e-6):
            d = _sample_itk(d, _map(np.linalg.inv(grid.affine), points), "bilinear")
        # else: the points are the field's own grid points, no interpolation
        points = points + d
    index = _map(np.linalg.inv(Grid.of(moving).affine), points)
    values = torch.as_tensor(moving.data.astype(np.float64), device=device)[None]
    out = _sample_itk(values, index, "bilinear" if interp == "linear" else "nearest")[0].cpu().numpy()
    dtype = moving.data.dtype if interp == "nearest" else np.float32
    through = ", ".join(t.source for t in chain)
    return Image(out.astype(dtype), target_affine, f"{image} through {through}")
