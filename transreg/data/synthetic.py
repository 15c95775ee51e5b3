"""Synthetic registration pairs: random shapes (no data at all) or real label maps.

Items are dicts ``{"moving", "fixed": (1, *S) float32 in [0, 1], "moving_labels",
"fixed_labels": (1, *S) int64 in [0, num_labels)}``. Item ``k`` is a pure function of
``(seed, k)``: the samplers pass ``k = epoch * len(dataset) + i`` so every epoch sees new
samples while a run stays reproducible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .synth import deform_labels, random_deformation, random_shapes, synthesize_image

__all__ = ["item_generator", "ShapesPairs", "LabelMapPairs", "DataError"]


class DataError(ValueError):
    """Training data that cannot be used (missing, unreadable, inconsistent)."""


def item_generator(seed: int, key: int) -> torch.Generator:
    """The generator of item ``key`` in a dataset seeded with ``seed``."""
    return torch.Generator().manual_seed((seed * 2_654_435_761 + key * 40_503 + 12_345) % (2**63 - 1))


def _pair_from_labels(moving_labels: Tensor, fixed_labels: Tensor, num_labels: int, gen: torch.Generator,
                      max_std: float, shared_contrast: bool) -> dict[str, Tensor]:
    """Deform both label maps by independent random warps, synthesise both images (with
    the same per-label mean intensities if ``shared_contrast``, i.e. mono-modal pairs)."""
    shape = moving_labels.shape[2:]
    means = torch.rand(num_labels, generator=gen) if shared_contrast else None
    out = {}
    for role, labels in (("moving", moving_labels), ("fixed", fixed_labels)):
        labels = deform_labels(labels, random_deformation(shape, gen, max_std=max_std))
        out[role] = synthesize_image(labels, num_labels, gen, means=means)[0]
        out[f"{role}_labels"] = labels[0]
    return out


class ShapesPairs(Dataset):
    """Pairs of random-shape images (SynthMorph "shapes"): one random label map deformed
    by two random smooth warps, each synthesised with its own random contrast
    (``shared_contrast``: the same per-label means for both, a mono-modal pair)."""

    def __init__(self, size: Sequence[int], num_labels: int = 8, length: int = 10_000, seed: int = 0,
                 max_std: float | None = None, shared_contrast: bool = False):
        self.size = tuple(int(s) for s in size)
        self.num_labels = num_labels
        self.length = length
        self.seed = seed
        self.max_std = max_std if max_std is not None else max(1.0, 0.08 * min(self.size))
        self.ndim = len(self.size)
        self.shared_contrast = shared_contrast

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        gen = item_generator(self.seed, int(key))
        labels = random_shapes(self.size, self.num_labels, gen)
        return _pair_from_labels(labels, labels, self.num_labels, gen, self.max_std, self.shared_contrast)


def _resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()


def _prepare_map(volume: np.ndarray, lut: np.ndarray, size: Sequence[int]) -> Tensor:
    """Crop a label volume to its foreground, pad to a cube-like box with the aspect of
    ``size`` and resample (nearest) → consecutive labels at ``size`` (3-D) or at
    ``(*size, depth)`` keeping the voxel aspect (2-D: slices are taken later)."""
    nz = np.nonzero(volume)
    if len(nz[0]) == 0:
        raise DataError("a label map is empty (all background)")
    box = volume[tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)]
    labels = torch.from_numpy(lut[box])
    if len(size) == 3:
        return _resize_labels(labels, size)
    factor = max(labels.shape[0] / size[0], labels.shape[1] / size[1])
    depth = max(1, round(labels.shape[2] / factor))
    return _resize_labels(labels, (size[0], size[1], depth))


class LabelMapPairs(Dataset):
    """SynthMorph pairs from real label maps: two subjects' maps (or one, if only one is
    given), each deformed by a random warp, each synthesised with random contrast.

    ``directory`` holds NIfTI label maps (``*.nii``/``*.nii.gz``), e.g.
    ``../shared/data/synthseg_labelmaps``. Each map is cropped to its foreground and
    resampled (nearest) to ``size``; labels are renumbered consecutively over the union of
    all maps (``self.label_values`` keeps the original values). For a 2-D ``size`` the
    maps are 3-D volumes and each item is a slice near the middle of the last axis.
    """

    def __init__(self, directory: str | Path, size: Sequence[int], length: int = 10_000, seed: int = 0,
                 max_std: float | None = None, files: Sequence[Path] | None = None, shared_contrast: bool = False):
        import nibabel as nib

        self.size = tuple(int(s) for s in size)
        self.ndim = len(self.size)
        self.length = length
        self.seed = seed
        self.max_std = max_std if max_std is not None else max(1.0, 0.08 * min(self.size))
        self.shared_contrast = shared_contrast
        directory = Path(directory)
        if files is None:
            if not directory.is_dir():
                raise DataError(f"label-map folder {str(directory)!r} does not exist")
            files = sorted(p for p in directory.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise DataError(f"no NIfTI label maps (*.nii, *.nii.gz) in {str(directory)!r}")
        volumes = []
        for path in files:
            try:
                data = np.asanyarray(nib.load(str(path)).dataobj)
            except Exception as err:  # nibabel raises many types for broken files
                raise DataError(f"cannot read label map {str(path)!r}: {err}") from None
            data = np.squeeze(data)
            if data.ndim != 3:
                raise DataError(f"label map {str(path)!r} must be a 3-D volume, got shape {data.shape}")
            if not np.all(np.isfinite(data)) or not np.allclose(data, np.round(data)):
                raise DataError(f"label map {str(path)!r} has non-integer values: not a label map")
            volumes.append(np.round(data).astype(np.int64))
        self.files = list(files)
        self.label_values = np.unique(np.concatenate([np.unique(v) for v in volumes]))
        if self.label_values[0] != 0:
            self.label_values = np.concatenate([[0], self.label_values])
        lut = np.zeros(int(self.label_values.max()) + 1, dtype=np.int64)
        lut[self.label_values] = np.arange(len(self.label_values))
        self.num_labels = len(self.label_values)
        self.maps = [_prepare_map(v, lut, self.size) for v in volumes]

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int, gen: torch.Generator) -> Tensor:
        labels = self.maps[index]
        if self.ndim == 2:
            depth = labels.shape[2]
            spread = max(0, depth // 10)
            z = depth // 2 + int(torch.randint(-spread, spread + 1, (), generator=gen))
            labels = labels[:, :, z]
        return labels[None, None]

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        gen = item_generator(self.seed, int(key))
        n = len(self.maps)
        i = int(torch.randint(n, (), generator=gen))
        j = (i + 1 + int(torch.randint(n - 1, (), generator=gen))) % n if n > 1 else i
        return _pair_from_labels(self._draw(i, gen), self._draw(j, gen), self.num_labels, gen, self.max_std,
                                 self.shared_contrast)
