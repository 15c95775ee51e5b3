"""Subjects' label maps for synthesis: read, checked, one consecutive numbering.

A *generation map* is an int64 ``(1, 1, *S)`` tensor in ``[0, num_labels]``: the
consecutive label (0 background) of every voxel, and ``num_labels`` (the *mask id*) for
background voxels inside the brain envelope (label 0 inside the labelled voxels closed by
``mask_closing`` voxels with holes filled; subjects of the ``mask_groups`` only: maps
that label only a few structures, whose images show the rest of the brain). Warping it (nearest) moves labels and mask together;
:func:`dice_labels` turns it back into a label map for the Dice loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .nifti import read_csv
from .synthetic import DataError

__all__ = ["BrainMaps", "load_brain_maps", "dice_labels", "brain_envelope"]


@dataclass
class BrainMaps:
    """``maps[i]``: generation map of subject ``i`` ``(1, 1, *S)`` int64; ``groups[i]`` its
    pairing group; ``label_values[k]`` the original value of consecutive label ``k``;
    ``affines[i]`` its NIfTI 4×4 voxel → RAS mm; ``names[i]`` its label file."""

    maps: list[Tensor]
    groups: list[str | None]
    label_values: np.ndarray
    affines: list[np.ndarray]
    names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_values)

    @property
    def mask_id(self) -> int:
        return self.num_labels


def dice_labels(gen_map: Tensor, mask_id: int) -> Tensor:
    """The label map of a generation map: in-mask background → 0."""
    return torch.where(gen_map == mask_id, torch.zeros_like(gen_map), gen_map)


def _read(path: Path | None, what: str, row: int, csv_path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    if path is None:
        raise DataError(f"{csv_path}: row {row} has no {what} (a label map is needed for synthesis)")
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist (listed in {csv_path}, row {row})")
    try:
        img = nib.load(str(path))
        data = np.squeeze(np.asanyarray(img.dataobj))
    except Exception as err:  # nibabel raises many types for broken files
        raise DataError(f"cannot read {what} {str(path)!r}: {err}") from None
    return data, np.asarray(img.affine, dtype=np.float64)


def brain_envelope(labels: np.ndarray, closing: int) -> np.ndarray:
    """Labelled voxels closed by ``closing`` voxels (a cross, iterated), holes filled → bool."""
    from scipy import ndimage

    inside = ndimage.binary_closing(labels > 0, iterations=closing, border_value=0)
    return ndimage.binary_fill_holes(inside | (labels > 0))


def load_brain_maps(csv_path: str | Path, mask_groups: Sequence[str] = (), mask_closing: int = 3,
                    size: Sequence[int] | None = None, label_values: Sequence[int] | None = None) -> BrainMaps:
    """Read the ``image,labels[,group]`` CSV ``csv_path`` (paths relative to it).

    Every label map must be 3-D, integer and not all background (else a :class:`DataError`
    naming the file); with ``size`` every map must have that shape. Subjects of the groups
    ``mask_groups`` get the in-mask background (:func:`brain_envelope`). ``label_values``
    fixes the numbering (e.g. the training one for validation data); values outside it are
    an error; by default the numbering is the sorted union of the maps' values.
    """
    csv_path = Path(csv_path)
    subjects, pairs = read_csv(csv_path)
    if pairs is not None:
        raise DataError(f"{csv_path} lists pairs (moving,fixed); synthesis needs a subject list image,labels[,group]")
    raw, affines, masks = [], [], []
    for row, subject in enumerate(subjects, start=2):
        labels, affine = _read(subject.labels, "label map", row, csv_path)
        if labels.ndim != 3:
            raise DataError(f"label map {str(subject.labels)!r} must be a 3-D volume, got shape {labels.shape}")
        if not np.all(np.isfinite(labels)) or not np.allclose(labels, np.round(labels)):
            raise DataError(f"label map {str(subject.labels)!r} has non-integer values: not a label map")
        labels = np.round(labels).astype(np.int64)
        if not labels.any():
            raise DataError(f"label map {str(subject.labels)!r} is empty (all background)")
        if size is not None and tuple(labels.shape) != tuple(size):
            raise DataError(f"label map {str(subject.labels)!r} has shape {labels.shape}, data.size is {tuple(size)}")
        mask = np.zeros(labels.shape, dtype=bool)
        if subject.group in mask_groups:
            mask = (labels == 0) & brain_envelope(labels, mask_closing)
        raw.append(labels)
        masks.append(mask)
        affines.append(affine)
    found = np.unique(np.concatenate([np.unique(v) for v in raw]))
    if label_values is None:
        values = np.union1d([0], found)
    else:
        values = np.asarray(sorted(set(int(v) for v in label_values) | {0}))
        unknown = np.setdiff1d(found, values)
        if unknown.size:
            raise DataError(f"the label maps of {csv_path} hold labels {unknown.tolist()} that the training "
                            f"numbering {values.tolist()} lacks")
    lut = np.zeros(int(max(values.max(), found.max())) + 1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    maps = []
    for labels, mask in zip(raw, masks):
        consecutive = lut[labels]
        consecutive[mask] = len(values)
        maps.append(torch.from_numpy(consecutive)[None, None])
    return BrainMaps(maps, [s.group for s in subjects], values, affines, [str(s.labels) for s in subjects])
