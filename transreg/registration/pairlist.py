"""The pairs of a batch registration: a pairs CSV, or an atlas and a list of moving images.

A pairs CSV has the columns ``moving`` and ``fixed`` and optionally ``moving_labels``,
``fixed_labels`` and ``name`` (the pair's output folder); paths are relative to the CSV's
folder. Files are not opened here: a missing or unreadable file fails only its own pair
(:mod:`transreg.registration.batch`). Problems with the list itself (no such CSV, missing
column, empty row, two pairs with one output name) raise :class:`PairListError`.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["Pair", "PairListError", "read_pairs_csv", "atlas_pairs", "RESERVED_NAMES"]

COLUMNS = ("moving", "fixed")
OPTIONAL_COLUMNS = ("moving_labels", "fixed_labels", "name")
RESERVED_NAMES = ("summary.csv",)  # files of the batch output folder itself


class PairListError(ValueError):
    """A pairs CSV or moving-image list that cannot be used."""


@dataclass(frozen=True)
class Pair:
    """One registration: input paths and ``name``, its output folder inside ``OUT/``."""

    name: str
    moving: Path
    fixed: Path
    moving_labels: Path | None = None
    fixed_labels: Path | None = None

    def inputs(self) -> dict[str, Path | None]:
        """``moving``, ``fixed``, ``moving_labels``, ``fixed_labels`` (``None`` when absent)."""
        return {"moving": self.moving, "fixed": self.fixed, "moving_labels": self.moving_labels,
                "fixed_labels": self.fixed_labels}


def _stem(path: Path) -> str:
    return path.name.split(".nii")[0]


def read_pairs_csv(csv_path: str | os.PathLike[str]) -> list[Pair]:
    """The pairs of a CSV (module docstring); output names default to ``<moving>_to_<fixed>``."""
    path = Path(csv_path)
    if not path.is_file():
        raise PairListError(f"pairs CSV not found: {path}")
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PairListError(f"pairs CSV {path} cannot be read: {err}") from None
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise PairListError(f"{path}: missing column(s) {', '.join(missing)}; a pairs CSV needs the columns "
                            f"moving, fixed (optional: {', '.join(OPTIONAL_COLUMNS)})")
    if not rows:
        raise PairListError(f"{path} lists no pairs")
    pairs = []
    for line, row in enumerate(rows, start=2):
        for column in COLUMNS:
            if not row.get(column):
                raise PairListError(f"{path} line {line}: empty {column!r}")
        files = {c: path.parent / row[c] for c in COLUMNS + OPTIONAL_COLUMNS[:2] if row.get(c)}
        name = row.get("name") or f"{_stem(files['moving'])}_to_{_stem(files['fixed'])}"
        pairs.append(Pair(name=name, **files))
    return _checked(pairs, f"{path}")


def _nifti_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise PairListError(f"folder {folder} holds no NIfTI files (.nii / .nii.gz)")
    return files


def atlas_pairs(atlas: str | os.PathLike[str], moving: Iterable[str | os.PathLike[str]],
                atlas_labels: str | os.PathLike[str] | None = None) -> list[Pair]:
    """Every moving image onto the atlas. ``moving``: NIfTI files and folders (their
    ``.nii`` / ``.nii.gz`` files, sorted); output names are the moving images' stems."""
    files: list[Path] = []
    for item in map(Path, moving):
        files.extend(_nifti_files(item) if item.is_dir() else [item])
    if not files:
        raise PairListError("--atlas needs moving images: give NIfTI files or folders of them")
    labels = None if atlas_labels is None else Path(atlas_labels)
    pairs = [Pair(name=_stem(f), moving=f, fixed=Path(atlas), fixed_labels=labels) for f in files]
    return _checked(pairs, "the moving images")


def _checked(pairs: Sequence[Pair], source: str) -> list[Pair]:
    seen: dict[str, Pair] = {}
    for pair in pairs:
        name = pair.name
        if not name or name.startswith(".") or "/" in name or "\\" in name or name in RESERVED_NAMES:
            raise PairListError(f"{source}: {name!r} cannot be an output folder name (no '/', no leading '.', "
                                f"not {', '.join(RESERVED_NAMES)})")
        if name in seen:
            raise PairListError(f"{source}: two pairs would write to the output folder {name!r} "
                                f"({seen[name].moving} and {pair.moving}); name them in a pairs CSV's 'name' column")
        seen[name] = pair
    return list(pairs)
