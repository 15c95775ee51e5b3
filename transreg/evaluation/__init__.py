"""Evaluation and comparison of registration methods on a CSV of native-position pairs.

:func:`compare` runs each method (baselines ``identity``, ``affine``, optionally ANTs
SyN, and networks by name) through the full registration of every pair, computes the
protocol of DESIGN.md (Dice per structure, HD95, folding, SDlogJ, runtime, parameters,
MACs, peak memory) and writes ``per_pair.csv``, ``summary.csv``, ``summary.md``,
``dice_boxplot.png`` and ``dice_vs_runtime.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .dataset import DatasetError, EvalPair, parse_label_spec, read_pairs, select_labels
from .methods import BASELINES, Method, ants_available, make_method
from .paired import PairedDifference, paired_differences
from .report import OUTPUT_FILES, write_results
from .runner import Evaluation, evaluate, residual_displacement

__all__ = ["DatasetError", "EvalPair", "Evaluation", "read_pairs", "select_labels", "parse_label_spec",
           "make_method", "evaluate", "residual_displacement", "write_results", "compare", "OUTPUT_FILES",
           "PairedDifference", "paired_differences"]

ANTS_MISSING = "ANTs SyN skipped: antspyx not installed (pip install 'transreg[ants]')"


def _device(device: str | torch.device | None) -> torch.device:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev} requested but no CUDA GPU is available; use --device cpu")
    return dev


def compare(models: Sequence[str], data: str | Path, out: str | Path, *, baselines: bool = True,
            ants: bool | None = None, labels: str = "aseg30", device: str | torch.device | None = None,
            title: str | None = None, command: str = "", progress: bool = True,
            warmup: bool = True, subcommand: str = "compare",
            reference: str | None = None) -> tuple[Evaluation, dict[str, Path]]:
    """Evaluate ``models`` (names as given; ``identity``/``affine``/``ants`` are the
    baselines) on the pairs CSV ``data`` and write the results into ``out``.

    ``baselines``: prepend identity and affine (if not named). ``ants``: add ANTs SyN
    (``None``: when antspyx is importable, else a note in the table). ``labels``:
    ``aseg30``, ``all`` or a comma list. Raises before any work for a bad CSV, label
    spec, device or output folder. ``subcommand`` (``compare`` or ``evaluate``) names the
    default title. ``reference``: the method every other one is compared with pair by
    pair (Dice and HD95 differences with bootstrap intervals; default: the first of
    ``models``; none when only one method runs).
    """
    from ..registration.outputs import check_output_dir

    out = Path(out)
    pairs = read_pairs(data)
    label_spec = parse_label_spec(labels)
    dev = _device(device)
    check_output_dir(out)
    names = list(dict.fromkeys(models))
    if baselines:
        names = [b for b in BASELINES if b not in names] + names
    want_ants = ants_available() if ants is None else ants
    notes = [ANTS_MISSING] if ants is None and not want_ants else []
    if want_ants and "ants" not in names:
        names.append("ants")
    reference = reference if reference is not None else next(iter(dict.fromkeys(models)), None)
    if reference is not None and reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the compared methods: {', '.join(names)}")
    methods: list[Method] = [make_method(n, dev) for n in names]
    evaluation = evaluate(methods, pairs, label_spec, progress=progress, warmup=warmup)
    evaluation.notes[:0] = notes
    if reference is not None and len(names) > 1:
        evaluation.paired = paired_differences(evaluation.rows, reference)
    untrained = [r["method"] for r in evaluation.summary if r["trained"] is False]
    if title is None:
        title = f"transreg {subcommand} — {Path(data).name}"
        if untrained:
            title += f" — untrained weights: {', '.join(untrained)}"
    if untrained:
        evaluation.notes.append(f"untrained weights (random initialisation): {', '.join(untrained)}; "
                                "their deformations are near zero, so they score close to the affine baseline")
    written = write_results(out, evaluation, title, command, str(data), dev)
    return evaluation, written
