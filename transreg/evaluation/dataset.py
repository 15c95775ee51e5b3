"""The evaluation data set: a CSV of pairs and the labels Dice is computed over.

``DATASET_SPEC`` is a CSV with columns ``moving, fixed, moving_labels, fixed_labels``
(paths relative to the CSV's folder), images in their native position (each method does
its own alignment, affine stage included).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..metrics import aseg_eval_labels

__all__ = ["DatasetError", "EvalPair", "read_pairs", "select_labels", "parse_label_spec", "ASEG_MIN_PRESENT"]

COLUMNS = ("moving", "fixed", "moving_labels", "fixed_labels")
# ``aseg30`` falls back to all non-zero labels when fewer of the 30 aseg labels than this are
# present in both maps (e.g. maps with labels 1–5, whose 2, 3, 4 are not the aseg structures).
ASEG_MIN_PRESENT = 15


class DatasetError(ValueError):
    """An evaluation CSV that cannot be used (missing file or column, empty)."""


@dataclass(frozen=True)
class EvalPair:
    """One row of the CSV: absolute paths, and ``name`` (``"<moving> → <fixed>"``, short)."""

    moving: Path
    fixed: Path
    moving_labels: Path
    fixed_labels: Path
    name: str


def _short(path_text: str) -> str:
    """A short name for a file: its stem, or its folder's name for generic stems (``image``)."""
    path = Path(path_text)
    stem = path.name.split(".nii")[0]
    return path.parent.name if stem in {"image", "img", "t1", "T1", "brain"} and path.parent.name else stem


def read_pairs(csv_path: str | Path) -> list[EvalPair]:
    """Read and check a pairs CSV: every column present, every file existing."""
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"pairs CSV not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; "
                               f"a pairs CSV needs the columns {', '.join(COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{path} lists no pairs")
    pairs = []
    for line, row in enumerate(rows, start=2):
        files = {}
        for column in COLUMNS:
            value = (row.get(column) or "").strip()
            if not value:
                raise DatasetError(f"{path} line {line}: empty {column!r}")
            file = path.parent / value
            if not file.is_file():
                raise DatasetError(f"{path} line {line}: {column} file not found: {file}")
            files[column] = file
        pairs.append(EvalPair(**files, name=f"{_short(row['moving'])} → {_short(row['fixed'])}"))
    return pairs


def parse_label_spec(spec: str) -> str | tuple[int, ...]:
    """``"aseg30"``, ``"all"`` or a comma list of integer labels (``"2,3,41"``)."""
    spec = spec.strip()
    if spec in ("aseg30", "all"):
        return spec
    try:
        labels = tuple(int(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise DatasetError(f"--labels must be aseg30, all or a comma list of integers, got {spec!r}") from None
    if not labels or any(v <= 0 for v in labels):
        raise DatasetError(f"--labels needs positive label values, got {spec!r}")
    return labels


def select_labels(spec: str | Sequence[int], moving_labels: np.ndarray, fixed_labels: np.ndarray) -> tuple[int, ...]:
    """The labels Dice is computed over for one pair.

    ``"aseg30"``: the 30 aseg evaluation labels present in both maps; when fewer than
    :data:`ASEG_MIN_PRESENT` of them are, all non-zero labels present in both maps.
    ``"all"``: all non-zero labels present in both maps. A sequence: those labels.
    """
    if not isinstance(spec, str):
        return tuple(int(v) for v in spec)
    both = np.intersect1d(np.unique(moving_labels), np.unique(fixed_labels))
    both = [int(v) for v in both if v != 0]
    if spec == "aseg30":
        aseg = [v for v in aseg_eval_labels() if v in set(both)]
        if len(aseg) >= ASEG_MIN_PRESENT:
            return tuple(aseg)
        return tuple(both)
    if spec == "all":
        return tuple(both)
    raise DatasetError(f"unknown label set {spec!r}; use aseg30, all or a list of labels")
