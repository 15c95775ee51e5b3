"""``overlay.png``: judge a registration at a glance.

One row per orientation (sagittal, coronal, axial mid-slices for 3-D; one row for 2-D),
columns: fixed, moving before registration (on the fixed grid), warped moving, and a
checkerboard of fixed and warped. The fixed image's edges (the boundary of the fixed
image above half its maximum) are drawn in red on the moving and warped panels. Slices
are shown in RAS orientation (anterior / superior up) with their physical aspect ratio.

Drawn with numpy and Pillow (no matplotlib: importing and drawing with it took longer
than the rest of writing the outputs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from nibabel import orientations
from PIL import Image, ImageDraw, ImageFont

from .preprocess import spatial_affine

__all__ = ["save_overlay", "checkerboard"]

_VIEWS = {3: ("sagittal", "coronal", "axial"), 2: ("slice",)}
_NAMES = ("fixed", "moving (before)", "warped", "checkerboard fixed / warped")
PANEL = 224  # pixels of a panel's longer side
_MARGIN, _HEADER, _LABEL = 4, 18, 60  # pixels: between panels, column titles, row labels
_EDGE = np.array([255, 0, 0], dtype=np.uint8)


def _display(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``plane`` scaled to [0, 1] between ``lo`` and ``hi`` (all zero if ``hi <= lo``)."""
    return np.clip((plane - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(plane, dtype=np.float32)


def checkerboard(a: np.ndarray, b: np.ndarray, size: int, parity: int = 0) -> np.ndarray:
    """``a`` where ``parity`` + the sum of the square indices (voxel index // ``size``) is
    even, ``b`` elsewhere."""
    index = sum(np.arange(n).reshape([-1 if k == axis else 1 for k in range(a.ndim)]) // size
                for axis, n in enumerate(a.shape))
    return np.where((index + parity) % 2 == 0, a, b)


def _mid(image: np.ndarray, axis: int | None) -> np.ndarray:
    return image if axis is None else image[(slice(None),) * axis + (image.shape[axis] // 2,)]


def _panel_size(shape: tuple[int, int], spacing: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a plane of ``shape`` voxels (first axis horizontal)."""
    extent = np.asarray(shape) * np.asarray(spacing)
    width, height = np.maximum(np.rint(extent / extent.max() * PANEL), 1).astype(int)
    return int(width), int(height)


def _pixels(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A plane (first axis horizontal, second vertical, up) as a ``(height, width)`` image
    of ``size`` (nearest neighbour)."""
    width, height = size
    rows = np.minimum((np.arange(height)[::-1] + 0.5) * plane.shape[1] / height, plane.shape[1] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * plane.shape[0] / width, plane.shape[0] - 1).astype(int)
    return plane[np.ix_(cols, rows)].T


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (one pixel wide)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def save_overlay(path: str | Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray,
                 affine: np.ndarray, title: str = "") -> None:
    """Write the overlay PNG. ``fixed``, ``moving``, ``warped``: ``(X, Y[, Z])`` arrays on
    the fixed grid (moving resampled without registration), ``affine`` the fixed 4×4."""
    ndim = fixed.ndim
    ornt = orientations.io_orientation(spatial_affine(affine, ndim))
    volumes = [orientations.apply_orientation(x, ornt) for x in (fixed, moving, warped)]
    spacing = np.empty(ndim)  # after reorientation, new axis ornt[i, 0] is old axis i
    spacing[ornt[:, 0].astype(int)] = np.linalg.norm(spatial_affine(affine, ndim)[:ndim, :ndim], axis=0)
    tile = max(1, max(fixed.shape) // 8)  # 8 checkerboard squares along the longest axis
    views = _VIEWS[ndim]
    font = ImageFont.load_default(size=11)
    top = _HEADER + (_HEADER if title else 0)
    canvas = Image.new("RGB", (_LABEL + 4 * (PANEL + _MARGIN), top + len(views) * (PANEL + _MARGIN)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width // 2, 2), title, fill="black", font=font, anchor="ma")
    for col, name in enumerate(_NAMES):
        draw.text((_LABEL + col * (PANEL + _MARGIN) + PANEL // 2, top - 15), name, fill="black", font=font, anchor="ma")
    ranges = [np.percentile(volume, [1.0, 99.0]) for volume in volumes]  # display: 1st to 99th percentile
    level = 0.5 if ranges[0][1] > ranges[0][0] else 0.0  # half the fixed image's displayed maximum
    for row, view in enumerate(views):
        axis = row if ndim == 3 else None
        shown = [a for a in range(ndim) if a != axis]
        planes = [_display(_mid(volume, axis), *limits) for volume, limits in zip(volumes, ranges)]
        parity = 0 if axis is None else (volumes[0].shape[axis] // 2) // tile  # the 3-D pattern's slice
        planes.append(checkerboard(planes[0], planes[2], tile, parity))
        size = _panel_size(planes[0].shape, (spacing[shown[0]], spacing[shown[1]]))
        edges = _edges(_pixels(planes[0], size) > level) if planes[0].max() > level else None
        y = top + row * (PANEL + _MARGIN)
        draw.text((2, y + PANEL // 2), view, fill="black", font=font, anchor="lm")
        for col, plane in enumerate(planes):
            rgb = np.repeat((_pixels(plane, size) * 255).astype(np.uint8)[..., None], 3, axis=-1)
            if col in (1, 2) and edges is not None:
                rgb[edges] = _EDGE
            x = _LABEL + col * (PANEL + _MARGIN)
            canvas.paste(Image.fromarray(rgb), (x + (PANEL - size[0]) // 2, y + (PANEL - size[1]) // 2))
    canvas.save(str(path), optimize=False, compress_level=1)
