"""Registration pairs from NIfTI files: a folder or a CSV, inter-subject or atlas pairs.

Sources (paths in a CSV are relative to the CSV's folder):

- a folder with ``images/`` and optionally ``labels/`` (label maps named like their
  images);
- a flat folder of images, where ``NAME_seg``, ``NAME_label``, ``NAME_labels`` or
  ``NAME_aseg`` (``.nii``/``.nii.gz``) is the label map of ``NAME``;
- a CSV with columns ``image[,labels][,group]`` (subjects: pairs are drawn; with a
  ``group`` column, e.g. the dataset of each subject, only within a group, so that a
  pair never mixes two label numberings) or ``moving,fixed[,moving_labels,fixed_labels]``
  (explicit pairs).

Every file is read, checked and preprocessed when the dataset is built (so bad data fails
before training starts) with :mod:`transreg.registration.io` and :mod:`transreg.registration.preprocess`:
reorientation to RAS (3-D), optional resampling to ``spacing`` mm, crop/pad to ``size``
around the image centre, percentile intensity normalisation to [0, 1]. Images are
expected to be roughly aligned already (e.g. affinely pre-registered, as in the OASIS and
IXI training sets).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..registration.io import ImageError, load_image
from ..registration.preprocess import Grid, Preprocessing, coordinates, normalize_intensity, resample_image, sample, voxel_map
from .augment import augment_pair
from .synthetic import DataError, item_generator

__all__ = ["Subject", "find_subjects", "read_csv", "load_subjects", "all_label_values", "PairDataset", "LABEL_SUFFIXES"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_SUFFIXES = ("_seg", "_labels", "_label", "_aseg")


@dataclass(frozen=True)
class Subject:
    """An image file, its optional label-map file and its optional pairing group."""

    image: Path
    labels: Path | None = None
    group: str | None = None


def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def find_subjects(folder: str | Path) -> list[Subject]:
    """Subjects of a folder (``images/`` + ``labels/``, or a flat folder, see module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist")
    if (folder / "images").is_dir():
        images = _nifti_files(folder / "images")
        label_dir = folder / "labels"
        by_stem = {_stem(p): p for p in _nifti_files(label_dir)} if label_dir.is_dir() else {}
        if by_stem and set(by_stem) - {_stem(p) for p in images}:
            extra = sorted(set(by_stem) - {_stem(p) for p in images})
            raise DataError(f"label maps without an image in {label_dir}: {', '.join(extra[:5])}")
        subjects = [Subject(p, by_stem.get(_stem(p))) for p in images]
        where = folder / "images"
    else:
        files = _nifti_files(folder)
        labels = {}
        for p in files:
            stem = _stem(p)
            for suffix in LABEL_SUFFIXES:
                if stem.endswith(suffix):
                    labels[stem[: -len(suffix)]] = p
        images = [p for p in files if p not in labels.values()]
        subjects = [Subject(p, labels.get(_stem(p))) for p in images]
        orphans = sorted(set(labels) - {_stem(p) for p in images})
        if orphans:
            raise DataError(f"label maps without an image in {folder}: {', '.join(orphans[:5])}")
        where = folder
    if not subjects:
        raise DataError(f"no NIfTI images (*.nii, *.nii.gz) in {str(where)!r}")
    return subjects


def read_csv(path: str | Path) -> tuple[list[Subject], list[tuple[Subject, Subject]] | None]:
    """``(subjects, pairs)``: pairs is None for an ``image[,labels]`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data CSV {str(path)!r} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"data CSV {str(path)!r} has no rows")
    columns = set(rows[0])
    base = path.parent

    def file(row: dict[str, str], key: str) -> Path | None:
        value = (row.get(key) or "").strip()
        return (base / value) if value else None

    if {"moving", "fixed"} <= columns:
        pairs = [(Subject(file(r, "moving"), file(r, "moving_labels")), Subject(file(r, "fixed"), file(r, "fixed_labels")))
                 for r in rows]
        for i, (m, f) in enumerate(pairs):
            if m.image is None or f.image is None:
                raise DataError(f"{path}: row {i + 2} lacks a moving or fixed image")
        subjects = list(dict.fromkeys(s for pair in pairs for s in pair))
        return subjects, pairs
    if "image" in columns:
        subjects = []
        for i, r in enumerate(rows):
            image = file(r, "image")
            if image is None:
                raise DataError(f"{path}: row {i + 2} has no image")
            subjects.append(Subject(image, file(r, "labels"), (r.get("group") or "").strip() or None))
        return subjects, None
    raise DataError(
        f"data CSV {str(path)!r} needs columns image[,labels][,group] or moving,fixed[,moving_labels,fixed_labels]; "
        f"it has {', '.join(sorted(columns))}"
    )


def _load(subject: Subject, prep: Preprocessing, size: Sequence[int] | None) -> dict[str, Tensor]:
    try:
        image = load_image(subject.image)
        grid = Grid.of(image)
        target = Preprocessing(spacing=prep.spacing, orientation=prep.orientation if image.ndim == 3 else None,
                               normalization=prep.normalization, size=tuple(size) if size else None).grid(grid)
        out = {"image": resample_image(image.data, grid, target)[0]}
        if subject.labels is not None:
            labels = load_image(subject.labels, labels=True, name="label map")
            if labels.shape != image.shape or not np.allclose(labels.affine, image.affine, atol=1e-3):
                raise DataError(
                    f"label map {subject.labels} (shape {labels.shape}) does not match its image {subject.image} "
                    f"(shape {image.shape}): same grid and affine needed"
                )
            coords = coordinates(voxel_map(target, grid), target.shape)
            lab = torch.as_tensor(np.asarray(labels.data, dtype=np.int64))[None, None]
            out["labels"] = sample(lab, coords, mode="nearest")[0]
    except (ImageError, FileNotFoundError) as err:
        raise DataError(str(err)) from None
    out["image"] = torch.from_numpy(normalize_intensity(out["image"].numpy(), prep.normalization)[0])
    return out


def load_subjects(subjects: Sequence[Subject], spacing: Sequence[float] | None, size: Sequence[int] | None) -> list[dict[str, Tensor]]:
    """Read and preprocess every subject → ``{"image": (1, *S) float32, "labels": (1, *S)
    int64 (if any)}``. Without ``size`` all subjects take the first one's model grid size."""
    prep = Preprocessing(spacing=tuple(spacing) if spacing else None, orientation="RAS", normalization="percentile")
    loaded: list[dict[str, Tensor]] = []
    for subject in subjects:
        item = _load(subject, prep, size)
        if loaded and item["image"].dim() != loaded[0]["image"].dim():
            raise DataError(f"{subject.image} is {item['image'].dim() - 1}-D but {subjects[0].image} is "
                            f"{loaded[0]['image'].dim() - 1}-D: use images of one dimension")
        if size is None and loaded:
            size = tuple(loaded[0]["image"].shape[1:])
            item = _load(subject, prep, size)
        elif size is None:
            size = tuple(item["image"].shape[1:])
        loaded.append(item)
    with_labels = [s.labels is not None for s in subjects]
    if any(with_labels) and not all(with_labels):
        missing = [str(s.image) for s in subjects if s.labels is None]
        raise DataError(f"some images have label maps and some do not (without: {', '.join(missing[:3])}); "
                        f"give every image a label map or none")
    return loaded


def all_label_values(items: Sequence[dict[str, Tensor]]) -> list[int]:
    """Sorted label values (with 0) of every item's label map."""
    return sorted({0, *(int(v) for it in items if "labels" in it for v in torch.unique(it["labels"]))})


def _relabeller(values: Sequence[int]):
    table = torch.as_tensor(list(values))

    def relabel(item: dict[str, Tensor]) -> dict[str, Tensor]:
        if "labels" not in item:
            return item
        return {**item, "labels": torch.searchsorted(table, item["labels"])}

    return relabel


def _partners(groups: Sequence[str | None] | None, n: int) -> list[list[int]]:
    """For each subject, the subjects it may be paired with: every other one, or with
    ``groups`` every other one of its group (each group needs two subjects)."""
    if groups is None or all(g is None for g in groups):
        return [[j for j in range(n) if j != i] for i in range(n)]
    if len(groups) != n:
        raise DataError(f"{len(groups)} pairing groups for {n} subjects")
    partners = [[j for j in range(n) if j != i and groups[j] == groups[i]] for i in range(n)]
    alone = sorted({str(groups[i]) for i in range(n) if not partners[i]})
    if alone:
        raise DataError(f"pairing group(s) {', '.join(alone)} hold a single subject: random pairs are drawn "
                        f"within a group, so each group needs at least 2")
    return partners


class PairDataset(Dataset):
    """Pairs of preprocessed subjects.

    ``pairs`` given: those (moving, fixed) index pairs. Otherwise ``atlas`` given:
    atlas → each subject. Otherwise random inter-subject pairs (moving ≠ fixed; with
    ``groups``, one label per item, the moving subject is drawn from the fixed one's
    group), one epoch = ``len(items)`` pairs. Item ``k`` is a pure function of ``(seed, k)``;
    augmentation (flips, small affine) is applied when ``augment`` is set.
    """

    def __init__(self, items: Sequence[dict[str, Tensor]], pairs: Sequence[tuple[int, int]] | None = None,
                 atlas: dict[str, Tensor] | None = None, seed: int = 0, augment: dict | None = None,
                 label_values: Sequence[int] | None = None, groups: Sequence[str | None] | None = None):
        if pairs is None and atlas is None and len(items) < 2:
            raise DataError(f"random inter-subject pairs need at least 2 images, got {len(items)}")
        self.partners = _partners(groups, len(items)) if pairs is None and atlas is None else None
        everything = [*items, *([atlas] if atlas is not None else [])]
        values = sorted(label_values) if label_values is not None else all_label_values(everything)
        #: original label value of each consecutive training label (Dice losses need 0..K-1)
        self.label_values = values if any("labels" in it for it in everything) else None
        relabel = _relabeller(values)
        self.items = [relabel(it) for it in items]
        self.atlas = relabel(atlas) if atlas is not None else None
        self.pairs = list(pairs) if pairs is not None else None
        self.seed = seed
        self.augment = augment or {}
        self.ndim = everything[0]["image"].dim() - 1
        self.num_labels = len(values) if self.label_values else None
        if atlas is not None and (atlas["image"].shape != self.items[0]["image"].shape):
            raise DataError(f"the atlas grid {tuple(atlas['image'].shape[1:])} differs from the subjects' "
                            f"{tuple(self.items[0]['image'].shape[1:])}: set data.size")

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.items)

    def _pair(self, key: int, gen: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        i = key % len(self)
        if self.pairs is not None:
            m, f = self.pairs[i]
            return self.items[m], self.items[f]
        if self.atlas is not None:
            return self.atlas, self.items[i]
        partners = self.partners[i]
        return self.items[partners[int(torch.randint(len(partners), (), generator=gen))]], self.items[i]

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        gen = item_generator(self.seed, int(key))
        moving, fixed = self._pair(int(key), gen)
        out = {"moving": moving["image"], "fixed": fixed["image"]}
        if "labels" in moving and "labels" in fixed:
            out["moving_labels"], out["fixed_labels"] = moving["labels"], fixed["labels"]
        if self.augment:
            out = augment_pair(out, gen, **self.augment)
        return out
