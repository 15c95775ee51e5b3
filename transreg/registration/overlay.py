"""``overlay.png``: judge a registration at a glance (matplotlib, Agg backend).

One row per orientation (sagittal, coronal, axial mid-slices for 3-D; one row for 2-D),
columns: fixed, moving before registration (on the fixed grid), warped moving, and a
checkerboard of fixed and warped. The fixed image's edges (an iso-contour) are drawn in
red on the moving and warped panels.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nibabel import orientations  # noqa: E402

from .preprocess import spatial_affine  # noqa: E402

__all__ = ["save_overlay", "checkerboard"]

_VIEWS = {3: ("sagittal", "coronal", "axial"), 2: ("slice",)}


def _display_range(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1.0, 99.0])
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image, dtype=np.float32)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """``a`` on the white squares, ``b`` on the black ones, ``tiles`` squares along the longest axis."""
    size = max(1, max(a.shape) // tiles)
    index = (np.indices(a.shape) // size).sum(0)
    return np.where(index % 2 == 0, a, b)


def _mid(image: np.ndarray, axis: int | None) -> np.ndarray:
    return image if axis is None else image.take(image.shape[axis] // 2, axis=axis)


def save_overlay(path: str | Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray,
                 affine: np.ndarray, title: str = "") -> None:
    """Write the overlay PNG. ``fixed``, ``moving``, ``warped``: ``(X, Y[, Z])`` arrays on
    the fixed grid (moving resampled without registration), ``affine`` the fixed 4×4."""
    ndim = fixed.ndim
    ornt = orientations.io_orientation(spatial_affine(affine, ndim))
    images = [_display_range(orientations.apply_orientation(x, ornt)) for x in (fixed, moving, warped)]
    spacing = np.empty(ndim)  # after reorientation, new axis ornt[i, 0] is old axis i
    spacing[ornt[:, 0].astype(int)] = np.linalg.norm(spatial_affine(affine, ndim)[:ndim, :ndim], axis=0)
    images.append(checkerboard(images[0], images[2]))
    names = ("fixed", "moving (before)", "warped", "checkerboard fixed / warped")
    views = _VIEWS[ndim]
    fig, axes = plt.subplots(len(views), 4, figsize=(12, 3.2 * len(views)), squeeze=False)
    for row, view in enumerate(views):
        axis = row if ndim == 3 else None
        shown = [a for a in range(ndim) if a != axis]
        level = 0.5 * float(images[0].max())
        fixed_plane = _mid(images[0], axis)
        for col, (name, image) in enumerate(zip(names, images)):
            plane = _mid(image, axis)
            ax = axes[row, col]
            ax.imshow(plane.T, cmap="gray", origin="lower", vmin=0, vmax=1,
                      aspect=spacing[shown[1]] / spacing[shown[0]], interpolation="nearest")
            if col in (1, 2) and fixed_plane.max() > level:
                ax.contour(fixed_plane.T, levels=[level], colors="r", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(view, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=80)
    plt.close(fig)
