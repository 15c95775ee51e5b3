"""Preprocessing to a model's input space and back: grids, resampling, intensities.

Geometry is kept as world mappings, never as edited arrays: a :class:`Grid` is a shape
plus an ``(ndim + 1)²`` voxel → world (RAS mm) affine, and every resampling samples the
source image at ``source.affine⁻¹ · W · target.affine · x`` for target voxel ``x``
(``W`` a world transform, default identity). Reorienting, changing the spacing and
cropping/padding only change the target grid, so a result computed on the model grid
maps back to the original fixed grid exactly through the same affines.

2-D images use the in-plane part of the 4×4 affine (rows and columns of the first two
axes plus the translation), i.e. the image plane is taken as the world x-y plane.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from nibabel import orientations
from torch import Tensor

from ..zoo.preprocessing import IntensitySpec, PreprocessingError
from .io import Image, ImageError

__all__ = [
    "Grid",
    "Preprocessing",
    "spatial_affine",
    "voxel_map",
    "coordinates",
    "sample",
    "sample_affine",
    "normalize_intensity",
    "resample_image",
]


def spatial_affine(affine: np.ndarray, ndim: int) -> np.ndarray:
    """The ``(ndim + 1)²`` voxel → world affine of a 2-D or 3-D image from its 4×4 affine."""
    keep = list(range(ndim)) + [3]
    out = np.asarray(affine, dtype=np.float64)[np.ix_(keep, keep)].copy()
    if abs(np.linalg.det(out[:ndim, :ndim])) < 1e-12:
        raise ImageError(f"the {ndim}-D image plane is not the world x-y plane; its affine is singular there")
    return out


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: ``shape`` and ``affine`` ``(ndim + 1, ndim + 1)`` voxel → world mm."""

    shape: tuple[int, ...]
    affine: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, image: Image) -> "Grid":
        return cls(image.shape, spatial_affine(image.affine, image.ndim))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[: self.ndim, : self.ndim], axis=0)

    def _with_voxel_map(self, shape: Sequence[int], new_to_old: np.ndarray) -> "Grid":
        return Grid(tuple(int(s) for s in shape), self.affine @ new_to_old)

    def reoriented(self, codes: str) -> "Grid":
        """Permute/flip the voxel axes so they point closest to ``codes`` (e.g. ``"RAS"``)."""
        current = orientations.io_orientation(self.affine)
        change = orientations.ornt_transform(current, orientations.axcodes2ornt(codes[: self.ndim]))
        shape = [0] * self.ndim
        for axis, (new_axis, _) in enumerate(change):
            shape[int(new_axis)] = self.shape[axis]
        return self._with_voxel_map(shape, orientations.inv_ornt_aff(change, self.shape))

    def resampled(self, spacing: float | Sequence[float]) -> "Grid":
        """Same field of view (voxel cells) and centre, voxels of ``spacing`` mm."""
        new = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (self.ndim,))
        extent = np.asarray(self.shape) * self.spacing
        shape = np.maximum(np.rint(extent / new), 1).astype(int)
        scale = new / self.spacing
        centre_old, centre_new = (np.asarray(self.shape) - 1) / 2, (shape - 1) / 2
        new_to_old = np.eye(self.ndim + 1)
        new_to_old[: self.ndim, : self.ndim] = np.diag(scale)
        new_to_old[: self.ndim, self.ndim] = centre_old - scale * centre_new
        return self._with_voxel_map(shape, new_to_old)

    def cropped_or_padded(self, size: Sequence[int]) -> "Grid":
        """``size`` voxels per axis around the same centre (crop or pad symmetrically)."""
        if len(size) != self.ndim:
            raise ValueError(f"size {tuple(size)} must have {self.ndim} entries")
        new_to_old = np.eye(self.ndim + 1)
        new_to_old[: self.ndim, self.ndim] = (np.asarray(self.shape) - np.asarray(size)) // 2
        return self._with_voxel_map(size, new_to_old)

    def pooled(self, factor: int) -> "Grid":
        """The grid of ``avg_pool(kernel=stride=factor)`` (partial cells at the end dropped)."""
        shape = [max(s // factor, 1) for s in self.shape]
        new_to_old = np.eye(self.ndim + 1)
        new_to_old[: self.ndim, : self.ndim] *= factor
        new_to_old[: self.ndim, self.ndim] = (factor - 1) / 2
        return self._with_voxel_map(shape, new_to_old)


@dataclass(frozen=True)
class Preprocessing:
    """A model's input space: ``spacing`` mm (``None``: the fixed image's), ``orientation``
    axis codes (``None``: the fixed image's), intensity ``normalization`` (see
    :func:`normalize_intensity`), ``size`` (crop/pad the model grid, ``None``: no change).
    Built from a checkpoint's ``config.json`` ``"preprocessing"`` dict."""

    spacing: float | tuple[float, ...] | None = 2.0
    orientation: str | None = "RAS"
    normalization: Mapping[str, Any] | str = "percentile"
    size: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None, **overrides: Any) -> "Preprocessing":
        """From a checkpoint's ``"preprocessing"`` dict (keys ``spacing``, ``orientation``,
        ``size``, ``normalization`` or ``intensity``; ``None`` values and other keys such as
        ``modality`` leave the defaults), then ``overrides`` that are not ``None``."""
        config = {k: v for k, v in dict(config or {}).items() if v is not None}
        if "intensity" in config and "normalization" not in config:  # a checkpoint's record
            config["normalization"] = config["intensity"]
        values = {k: config[k] for k in ("spacing", "orientation", "normalization", "size") if k in config}
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("spacing", "size"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if "normalization" in values:
            values["normalization"] = _normalization_spec(values["normalization"])
        return cls(**values)

    def grid(self, fixed: Grid) -> Grid:
        """The model grid: the fixed image's field of view, reoriented, resampled, cropped."""
        grid = fixed.reoriented(self.orientation) if self.orientation else fixed
        if self.spacing is not None:
            grid = grid.resampled(self.spacing)
        if self.size is not None:
            grid = grid.cropped_or_padded(self.size)
        return grid

    def as_dict(self) -> dict[str, Any]:
        return {"spacing": self.spacing, "orientation": self.orientation,
                "normalization": self.normalization, "size": self.size}


def voxel_map(target: Grid, source: Grid, world: np.ndarray | None = None) -> np.ndarray:
    """``(ndim + 1)²`` matrix: target voxel → source voxel through the world map ``world``
    (target world point → source world point; identity if ``None``)."""
    world = np.eye(target.ndim + 1) if world is None else world
    return np.linalg.solve(source.affine, world @ target.affine)


def coordinates(matrix: np.ndarray | Tensor, shape: Sequence[int], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Source voxel coordinates ``(ndim, *shape)`` (``dtype``) of ``x ↦ matrix · x``.

    Row ``i`` is ``Σ_j matrix[i, j] · x_j + matrix[i, ndim]``, summed in float64 from one
    broadcast axis per ``j`` (no dense identity grid)."""
    m = torch.as_tensor(matrix, dtype=torch.float64, device=device)
    ndim = len(shape)
    axes = [torch.arange(n, device=device, dtype=torch.float64).view([-1 if a == j else 1 for a in range(ndim)])
            for j, n in enumerate(shape)]
    out = torch.empty(ndim, *shape, dtype=dtype, device=device)
    for i in range(ndim):
        row = m[i, ndim] + m[i, 0] * axes[0]
        for j in range(1, ndim):
            row = row + m[i, j] * axes[j]
        out[i] = row
    return out


def sample(image: Tensor, coords: Tensor, mode: str = "bilinear", padding: str = "zeros") -> Tensor:
    """Sample ``image`` ``(B, C, *src)`` at voxel coordinates ``coords`` ``(ndim, *tgt)``
    (``mode`` linear or nearest; ``padding`` zeros or border outside) → ``(B, C, *tgt)``.

    ``grid_sample(align_corners=True)`` as :func:`transreg.spatial.warp`: positions in
    float32 at least, integer images sampled in float32 and rounded back to their dtype."""
    ndim = coords.shape[0]
    if image.dim() != ndim + 2:
        raise ValueError(f"image must have shape (B, C, *spatial) with {ndim} spatial dims, got {tuple(image.shape)}")
    integer = not torch.is_floating_point(image)
    source = image if image.dtype in (torch.float32, torch.float64) else image.float()
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in image.shape[2:]], dtype=source.dtype, device=coords.device)
    # grid_sample wants (B, *tgt, ndim) with the last image axis first
    grid = (coords.to(source.dtype).movedim(0, -1) * scale - 1.0).flip(-1)
    grid = grid[None].expand(image.shape[0], *grid.shape)
    out = F.grid_sample(source, grid, mode=mode, padding_mode=padding, align_corners=True)
    return (out.round() if integer else out).to(image.dtype)


def lattice_map(matrix: np.ndarray, atol: float = 1e-6) -> tuple[np.ndarray, np.ndarray] | None:
    """``(linear, offset)`` as integers when ``x ↦ matrix · x`` maps voxel centres onto
    voxel centres by a signed permutation of the axes plus a whole-voxel shift (a crop,
    pad, flip or axis swap: sampling is then an exact index lookup), else ``None``."""
    n = matrix.shape[0] - 1
    linear, offset = np.rint(matrix[:n, :n]), np.rint(matrix[:n, n])
    if np.abs(matrix[:n, :n] - linear).max() > atol or np.abs(matrix[:n, n] - offset).max() > atol:
        return None
    if not (np.abs(linear).sum(axis=0) == 1).all() or not (np.abs(linear).sum(axis=1) == 1).all():
        return None
    return linear.astype(int), offset.astype(int)


def sample_affine(image: Tensor, matrix: np.ndarray, shape: Sequence[int], mode: str = "bilinear",
                  padding: str = "zeros") -> Tensor:
    """Sample ``image`` ``(B, C, *src)`` at ``matrix · x`` (``(ndim + 1)²``, target voxel →
    source voxel) for every voxel ``x`` of a ``shape`` grid → ``(B, C, *shape)``, as
    :func:`sample` does; a crop / pad / flip / axis swap (:func:`lattice_map`) is an exact
    index lookup instead of an interpolation (the values grid_sample gives there, up to
    its float32 rounding of the positions)."""
    lattice = lattice_map(np.asarray(matrix, dtype=np.float64))
    if lattice is None:
        return sample(image, coordinates(matrix, shape, image.device), mode, padding)
    linear, offset = lattice
    ndim = len(shape)
    indices, inside = [], torch.ones((1,) * ndim, dtype=torch.bool, device=image.device)
    for axis in range(ndim):  # source axis ``axis`` follows target axis ``along``
        along = int(np.flatnonzero(linear[axis])[0])
        index = linear[axis, along] * torch.arange(shape[along], device=image.device) + int(offset[axis])
        view = [-1 if a == along else 1 for a in range(ndim)]
        inside = inside & ((index >= 0) & (index < image.shape[2 + axis])).view(view)
        indices.append(index.clamp(0, image.shape[2 + axis] - 1).view(view))
    out = image[(slice(None), slice(None), *indices)]
    if padding == "zeros" and not bool(inside.all()):
        out = out * inside.to(out.dtype) if out.is_floating_point() else out.masked_fill(~inside, 0)
    return out.contiguous()


def _normalization_spec(spec: Mapping[str, Any] | str) -> dict[str, Any]:
    """A normalization dict (the typed record of :class:`~transreg.zoo.preprocessing.IntensitySpec`)
    from a dict or a method name (``"percentile"``, ``"minmax"``, ``"ct"``, ``"none"``)."""
    try:
        return IntensitySpec.from_json(spec).to_json()
    except PreprocessingError as err:
        raise ValueError(f"intensity normalization: {err}") from None


def normalize_intensity(data: np.ndarray, spec: Mapping[str, Any] | str = "percentile") -> tuple[np.ndarray, dict]:
    """Map intensities to ``[0, 1]`` and return ``(float32 array, record)``.

    ``spec``: ``"percentile"`` or ``{"method": "percentile", "lower": 0.5, "upper": 99.5}``
    (clip to those percentiles, then rescale), ``{"method": "ct", "level": 40, "width":
    400}`` (CT window in HU), ``{"method": "minmax"}``, or ``"none"``. The record holds the
    method and the values ``lo``/``hi`` mapped to 0 and 1.
    """
    spec = _normalization_spec(spec)
    method = spec["method"]
    if method == "none":
        return data.astype(np.float32), {"method": "none"}
    if method == "percentile":
        lo, hi = np.percentile(data, [float(spec.get("lower", 0.5)), float(spec.get("upper", 99.5))])
    elif method == "ct":
        level, width = float(spec.get("level", 40.0)), float(spec.get("width", 400.0))
        lo, hi = level - width / 2, level + width / 2
    else:  # minmax
        lo, hi = float(data.min()), float(data.max())
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    out = ((np.clip(data, lo, hi) - lo) * scale).astype(np.float32)
    return out, {**spec, "method": method, "lo": float(lo), "hi": float(hi)}


def resample_image(data: np.ndarray, source: Grid, target: Grid, world: np.ndarray | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
    """Linear resampling of ``data`` (on ``source``) onto ``target`` → ``(1, 1, *target)``.

    When the target voxels are larger than the source's, the source is first smoothed
    (Gaussian, σ = (ratio − 1) / 2 source voxels) against aliasing.
    """
    ratio = float(np.min(target.spacing)) / source.spacing
    sigma = np.maximum(ratio - 1.0, 0.0) / 2.0
    if np.any(sigma > 0):
        from scipy import ndimage  # only when smoothing: importing it costs start-up time

        data = ndimage.gaussian_filter(data.astype(np.float32), sigma, mode="nearest")
    image = torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32, device=device)[None, None]
    return sample_affine(image, voxel_map(target, source, world), target.shape)

