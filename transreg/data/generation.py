"""Generation classes: which voxels of a label map share one synthetic intensity.

SynthSeg/SynthMorph synthesise an image from a label map by giving every *generation
class* (a group of labels, e.g. left and right putamen) one random intensity. The tables
come from SynthSeg (``../shared/data/synthseg_labelmaps``) and live next to the data CSV
(``evaluate/build_data.py`` copies them there):

- ``generation_labels.npy`` (L,) label values; ``generation_classes.npy`` (L,) their fine
  classes (0-47; random-contrast synthesis); ``generation_classes_contrast_specific.npy``
  (L,) their T1 classes (0-24), the columns of ``prior_means_t1.npy`` (2, 25: mean and std
  of each T1 class mean, 0-255 scale);
- ``generation_aliases.json`` (optional) ``{"label": generation label}``: labels that
  take the class of another label (the aligned HCP labels 101-105 take those of the aseg
  structures they match); ``"mask": generation label`` is the class of the background
  voxels inside the brain envelope (:func:`transreg.data.brain_maps.brain_envelope`) of the
  subjects in the groups ``"mask_groups"`` (the HCP maps label only five structures; their
  images show the rest of the brain as CSF-like).

Labels with no class get classes of their own (one each, after the table's), so every
structure keeps a boundary in every synthetic image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .synthetic import DataError

__all__ = ["GenerationTable", "load_generation_table"]

FILES = ("generation_labels.npy", "generation_classes.npy", "generation_classes_contrast_specific.npy",
         "prior_means_t1.npy")


@dataclass(frozen=True)
class GenerationTable:
    """Label value → generation class, fine (random contrast) and T1 (prior means)."""

    fine: dict[int, int]
    t1: dict[int, int]
    t1_means: np.ndarray  # (2, T1 classes): prior mean and std of each class mean, 0-255
    aliases: dict[int, int]
    mask_label: int | None  # generation label of the in-mask background, or None
    mask_groups: frozenset[str] = frozenset()  # the groups whose maps get the in-mask class

    @property
    def num_fine(self) -> int:
        return max(self.fine.values()) + 1

    @property
    def num_t1(self) -> int:
        return int(self.t1_means.shape[1])

    def lut(self, label_values: np.ndarray, kind: str) -> tuple[Tensor, int]:
        """``(lut, num_classes)``: ``lut[i]`` the class (``kind`` ``"fine"`` or ``"t1"``) of
        the consecutive label ``i`` whose value is ``label_values[i]``. Labels without a
        class get new classes, one each, numbered after the table's (``num_classes``
        counts them, plus one for the in-mask background, the last class)."""
        table = self.fine if kind == "fine" else self.t1
        base = self.num_fine if kind == "fine" else self.num_t1
        out, extra = [], 0
        for value in (int(v) for v in label_values):
            source = self.aliases.get(value, value)
            if source in table:
                out.append(table[source])
            else:
                out.append(base + extra)
                extra += 1
        return torch.tensor(out, dtype=torch.int64), base + extra

    def mask_class(self, kind: str) -> int | None:
        """The class of background voxels inside the brain mask (None: no mask rule)."""
        if self.mask_label is None:
            return None
        return (self.fine if kind == "fine" else self.t1)[self.mask_label]


def load_generation_table(folder: str | Path) -> GenerationTable:
    """Read the tables of the module docstring from ``folder``; a missing file is a
    :class:`DataError` naming it."""
    folder = Path(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise DataError(f"generation table {str(folder / name)!r} is missing (evaluate/build_data.py copies "
                            f"the SynthSeg tables next to the data CSV)")
    labels = np.load(folder / FILES[0]).astype(int)
    fine = np.load(folder / FILES[1]).astype(int)
    t1 = np.load(folder / FILES[2]).astype(int)
    means = np.load(folder / FILES[3]).astype(np.float64)
    aliases: dict[int, int] = {}
    mask_label, mask_groups = None, []
    alias_file = folder / "generation_aliases.json"
    if alias_file.is_file():
        raw = json.loads(alias_file.read_text())
        mask_label = raw.pop("mask", None)
        mask_groups = raw.pop("mask_groups", [])
        aliases = {int(k): int(v) for k, v in raw.items()}
    return GenerationTable({int(a): int(b) for a, b in zip(labels, fine)}, {int(a): int(b) for a, b in zip(labels, t1)},
                           means, aliases, None if mask_label is None else int(mask_label), frozenset(mask_groups))
