"""Training data: NIfTI pairs (folder / CSV, inter-subject or atlas) and synthetic pairs.

Data spec strings (``data.train`` / ``data.val`` in a recipe, ``--data`` on the command line):

- ``synthetic:shapes`` — random shapes with random contrasts, no data needed;
- ``synthetic:labels:DIR`` — SynthMorph synthesis from the label maps in ``DIR``;
- ``synthetic:affine:GLOB[?key=value&...]`` — label maps under large random affines on
  ``data.spacing`` mm grids, for the learned affine stage (:mod:`transreg.data.affine_pairs`;
  ranges ``affine_degrees``, ``affine_scale``, ``affine_shift`` in voxels of that grid;
  options ``field_of_view`` (share of images inside a scanner box) and ``jitter`` (mm));
- ``synthbrain:CSV[?key=value&...]`` / ``synthbrain-t1mean:CSV`` — contrast-agnostic brain
  pairs drawn on the fly from the (aligned) label maps listed in ``CSV`` (options: the
  numbers of :class:`~transreg.data.brain_synth.SynthSettings`, e.g. ``?p_t1=0.5``), and
  fixed T1-mean pairs for validation (:mod:`transreg.data.brain_synth`);
- a folder of NIfTI images (see :mod:`transreg.data.nifti` for the layouts);
- a ``.csv`` file listing images (``image[,labels][,group]``: pairs within a group) or
  pairs (``moving,fixed[,...]``).

:func:`build_datasets` turns a :class:`~transreg.training.config.DataConfig` into a training
dataset (items ``{"moving", "fixed"[, "moving_labels", "fixed_labels"]}``, each
``(1, *S)``) and an optional validation dataset.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from .affine_pairs import AffineLabelPairs
from .augment import augment_pair, random_affine
from .brain_synth import SynthBrainPairs, SynthSettings, T1MeanPairs
from .nifti import PairDataset, Subject, all_label_values, find_subjects, load_subjects, read_csv
from .sampler import StepBatchSampler
from .synthetic import DataError, LabelMapPairs, ShapesPairs

__all__ = [
    "DataError",
    "ShapesPairs",
    "LabelMapPairs",
    "AffineLabelPairs",
    "SynthBrainPairs",
    "T1MeanPairs",
    "PairDataset",
    "StepBatchSampler",
    "augment_pair",
    "random_affine",
    "build_datasets",
    "build_source",
]

VAL_SEED_OFFSET = 1_000_003
#: options of ``synthetic:affine:GLOB?key=value`` (keyword arguments of :class:`AffineLabelPairs`)
AFFINE_PAIR_OPTIONS: dict[str, type] = {"field_of_view": float, "jitter": float}
_SYNTHETIC = (ShapesPairs, LabelMapPairs, AffineLabelPairs)  # generated on the fly: validation = another seed


def _augment_args(cfg: Any) -> dict[str, Any]:
    return {"flip": cfg.flip, "affine_degrees": cfg.affine_degrees, "affine_scale": cfg.affine_scale,
            "affine_shift": cfg.affine_shift}


def _synthetic(spec: str, cfg: Any, seed: int, length: int) -> Dataset:
    if cfg.size is None:
        raise DataError(f"data {spec!r} needs data.size (e.g. --size 64 64 or --size 32 32 32)")
    if spec == "synthetic:shapes":
        return ShapesPairs(cfg.size, num_labels=cfg.num_labels, length=length, seed=seed,
                           shared_contrast=cfg.shared_contrast)
    if spec.startswith("synthetic:labels:"):
        return LabelMapPairs(spec[len("synthetic:labels:"):], cfg.size, length=length, seed=seed,
                             shared_contrast=cfg.shared_contrast)
    if spec.startswith("synthetic:affine:"):
        if cfg.spacing is None or len(set(cfg.spacing)) != 1:
            raise DataError(f"data {spec!r} needs one isotropic data.spacing (e.g. [5, 5, 5]), got {cfg.spacing}")
        spacing = float(cfg.spacing[0])
        pattern, _, query = spec[len("synthetic:affine:"):].partition("?")
        return AffineLabelPairs(pattern, cfg.size, spacing, length=length, seed=seed,
                                degrees=cfg.affine_degrees, scale=cfg.affine_scale, shift=cfg.affine_shift * spacing,
                                **_options(spec, query, AFFINE_PAIR_OPTIONS))
    raise DataError(f"unknown synthetic data {spec!r}: use synthetic:shapes, synthetic:labels:DIR or synthetic:affine:GLOB")


def _subjects(spec: str) -> tuple[list[Subject], list[tuple[Subject, Subject]] | None]:
    path = Path(spec)
    if spec.lower().endswith(".csv"):
        return read_csv(path)
    if path.is_dir():
        return find_subjects(path), None
    if path.exists():
        raise DataError(f"data {spec!r} is a file but not a .csv: give a folder of NIfTI images or a CSV")
    raise DataError(f"data {spec!r} does not exist (a folder, a .csv, synthetic:shapes or synthetic:labels:DIR)")


def _options(spec: str, query: str, known: dict[str, type]) -> dict[str, Any]:
    """``key=value&key=value`` → ``{key: known[key](value)}``: numeric options of a data spec."""
    values: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, _, text = item.partition("=")
        if key not in known:
            raise DataError(f"data {spec!r}: unknown option {key!r}; known: {', '.join(sorted(known))}")
        try:
            values[key] = known[key](float(text))
        except ValueError:
            raise DataError(f"data {spec!r}: option {key} needs a number, got {text!r}") from None
    return values


def _synth_settings(spec: str, query: str) -> SynthSettings:
    """``key=value&key=value`` → :class:`SynthSettings` with those numbers replaced."""
    known = {f.name: type(getattr(SynthSettings, f.name)) for f in dataclasses.fields(SynthSettings)
             if f.name != "std_range"}
    return SynthSettings(**_options(spec, query, known))


def _synth_brain(spec: str, cfg: Any, seed: int, label_values: Any) -> Dataset:
    kind, _, rest = spec.partition(":")
    csv, _, query = rest.partition("?")
    if not csv:
        raise DataError(f"data {spec!r} needs a CSV: {kind}:PATH.csv (image,labels,group)")
    if kind == "synthbrain":
        if cfg.size is None:
            raise DataError(f"data {spec!r} needs data.size (the label maps' shape)")
        return SynthBrainPairs(csv, cfg.size, seed=seed, label_values=label_values,
                               settings=_synth_settings(spec, query))
    return T1MeanPairs(csv, size=cfg.size, seed=seed, label_values=label_values)


def build_source(spec: str, cfg: Any, seed: int, augment: bool, holdout: float = 0.0,
                 label_values: Any = None) -> tuple[Dataset, Dataset | None]:
    """Dataset of one spec and, if ``holdout`` > 0, a validation dataset of that fraction
    of its subjects (random-pair and atlas sources only). ``label_values`` fixes the label
    numbering of ``synthbrain`` sources (the training one, for validation data)."""
    if spec.startswith(("synthbrain:", "synthbrain-t1mean:")):
        return _synth_brain(spec, cfg, seed, label_values), None
    if spec.startswith("synthetic:"):
        return _synthetic(spec, cfg, seed, length=10_000), None
    subjects, pairs = _subjects(spec)
    atlas = None
    if cfg.pairing == "atlas" and pairs is None:
        atlas_subject = Subject(Path(cfg.atlas), Path(cfg.atlas_labels) if cfg.atlas_labels else None)
        atlas = load_subjects([atlas_subject], cfg.spacing, cfg.size)[0]
    size = cfg.size or (tuple(atlas["image"].shape[1:]) if atlas is not None else None)
    items = load_subjects(subjects, cfg.spacing, size)
    index = {s: i for i, s in enumerate(subjects)}
    aug = _augment_args(cfg) if augment else None
    if pairs is not None:
        if holdout:
            raise DataError("data.val_split needs a subject list; for a CSV of pairs give data.val instead")
        return PairDataset(items, pairs=[(index[m], index[f]) for m, f in pairs], seed=seed, augment=aug), None
    groups = [s.group for s in subjects]
    if not holdout:
        return PairDataset(items, atlas=atlas, seed=seed, augment=aug, groups=groups), None
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1 if atlas is not None else 2, round(holdout * len(items)))
    if len(items) - n_val < (1 if atlas is not None else 2):
        raise DataError(f"data.val_split {holdout} leaves too few of the {len(items)} subjects for training")
    val_items = [items[i] for i in order[:n_val]]
    train_items = [items[i] for i in order[n_val:]]
    values = all_label_values([*items, *([atlas] if atlas is not None else [])])  # one numbering for both
    return (PairDataset(train_items, atlas=atlas, seed=seed, augment=aug, label_values=values,
                        groups=[groups[i] for i in order[n_val:]]),
            PairDataset(val_items, atlas=atlas, seed=seed + VAL_SEED_OFFSET, label_values=values,
                        groups=[groups[i] for i in order[:n_val]]))


def build_datasets(cfg: Any, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """``(train, val)`` for a :class:`~transreg.training.config.DataConfig`.

    Validation pairs (at most ``cfg.val_pairs``, never augmented): ``cfg.val`` if given;
    else, for synthetic data, held-out samples of the same generator (another seed); else
    ``cfg.val_split`` of the subjects; else none.
    """
    holdout = cfg.val_split if cfg.val is None else 0.0
    train, val = build_source(cfg.train, cfg, seed, augment=True, holdout=holdout)
    if cfg.val is not None:
        val, _ = build_source(cfg.val, cfg, seed + VAL_SEED_OFFSET, augment=False,
                              label_values=getattr(train, "label_values", None))
        if isinstance(val, _SYNTHETIC):
            val.length = cfg.val_pairs
    elif isinstance(train, _SYNTHETIC):
        val = copy.copy(train)
        val.seed, val.length = seed + VAL_SEED_OFFSET, cfg.val_pairs
    if val is not None and len(val) > cfg.val_pairs:
        val = Subset(val, range(cfg.val_pairs))
    train_labels, val_labels = _label_values(train), _label_values(val) if val is not None else None
    if train_labels is not None and val_labels is not None and train_labels != val_labels:
        raise DataError(f"the validation label maps hold the labels {val_labels}, the training ones {train_labels}: "
                        f"use label maps with the same labels")
    return train, val


def _label_values(dataset: Dataset) -> list[int] | None:
    """The original label values behind the consecutive training labels (None: unknown)."""
    inner = dataset.dataset if isinstance(dataset, Subset) else dataset
    values = getattr(inner, "label_values", None)
    if values is None and getattr(inner, "num_labels", None) is not None:
        values = range(inner.num_labels)
    return None if values is None else [int(v) for v in values]
