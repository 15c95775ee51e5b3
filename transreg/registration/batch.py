"""Register many pairs with one model load: ``run_batch(pairs, OUT, model=...)``.

Each :class:`~transreg.registration.pairlist.Pair` is registered exactly as
:func:`transreg.register` + :meth:`RegistrationResult.save` do for one pair (same files,
same values) into ``OUT/<pair name>/``. Around that:

- a ``DataLoader`` whose worker processes read the next pairs' NIfTI files while the main
  process computes, and a writer process that writes a pair's folder while the next pair
  is computed;
- atomic pair folders: each is written into ``OUT/.partial/`` and renamed into place, so
  ``OUT/<name>/`` is absent or complete, whatever stops the run (the writer dies with
  the batch process);
- ``resume``: pairs whose folder is complete (``report.json``, every output it lists,
  the same input files) are skipped;
- a pair that fails (unreadable file, NaN image, labels on another grid, …) is recorded
  with its reason; the others go on;
- under ``torchrun`` (``WORLD_SIZE`` > 1; gloo on CPU, NCCL on GPUs) pair ``i`` belongs to
  rank ``i mod world``; each rank writes only its own pairs' folders and rank 0 gathers
  every rank's rows into ``OUT/summary.csv``.
"""
from __future__ import annotations

import collections
import csv
import ctypes
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .io import Image, ImageError, load_image
from .outputs import check_output_dir
from .pairlist import Pair
from .pipeline import network_for, register
from .result import RegistrationResult
from .transform import AffineResampling

__all__ = ["SUMMARY_FIELDS", "SUMMARY_FILE", "is_complete", "run_batch"]

SUMMARY_FILE = "summary.csv"
SUMMARY_FIELDS = ("name", "status", "moving", "fixed", "moving_labels", "fixed_labels", "dice_before",
                  "dice_affine", "dice", "folding_percent", "seconds", "rank", "error")
PARTIAL = ".partial"  # staging folder inside OUT/ for pair folders being written


# --------------------------------------------------------------------------- reading


class _Reader(Dataset):
    """Item ``i``: ``(i, {moving, fixed, moving_labels, fixed_labels: Image | None})``, or
    ``(i, reason)`` when a file cannot be used."""

    def __init__(self, pairs: Sequence[Pair]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Image | None] | str]:
        roles = {"moving": "moving image", "fixed": "fixed image", "moving_labels": "moving labels",
                 "fixed_labels": "fixed labels"}
        try:
            images = {key: None if path is None else load_image(path, labels=key.endswith("labels"), name=roles[key])
                      for key, path in self.pairs[index].inputs().items()}
        except (OSError, ValueError) as err:
            return index, str(err)
        return index, images


def _as_is(item: Any) -> Any:
    return item


# --------------------------------------------------------------------------- writing


def _writer_start() -> None:
    """Writer process set-up: one thread, and die with the batch process (Linux), so
    that nothing renames a folder into ``OUT/`` after the batch was stopped."""
    torch.set_num_threads(1)
    from . import overlay, result  # noqa: F401 - imported before the first pair arrives
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the batch process ended before prctl
        os._exit(1)


def _write_pair(result: RegistrationResult, out: str, name: str) -> dict[str, Any]:
    """Write ``result`` into ``OUT/.partial/…`` and rename it to ``OUT/name`` (replacing an
    older folder) → the written report."""
    stage = Path(out) / PARTIAL / f"{name}.{uuid.uuid4().hex}"
    final = Path(out) / name
    try:
        result.save(stage)
        if final.exists():
            old = stage.with_name(f"{stage.name}.old")
            os.rename(final, old)
            os.rename(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result.report


def _portable(result: RegistrationResult) -> RegistrationResult:
    """``result`` with its transform on the CPU, to send it to the writer process; the
    unregistered moving image (the overlay's) is left for the writer to resample."""
    transform = dataclasses.replace(result.transform, coords=result.transform.coords.cpu())
    before = result.moving_before
    if isinstance(before, AffineResampling):
        before = dataclasses.replace(before, device="cpu")
    elif callable(before):  # a function cannot be sent: resample here
        before = result.before()
    return dataclasses.replace(result, transform=transform, moving_before=before)


def _clear_partial(out: Path, pairs: Sequence[Pair]) -> None:
    """Remove what a stopped run left in ``OUT/.partial/`` for these pairs."""
    staging = out / PARTIAL
    if staging.is_dir():
        names = {pair.name for pair in pairs}
        for entry in staging.iterdir():
            if entry.name.rsplit(".", 2 if entry.name.endswith(".old") else 1)[0] in names:
                shutil.rmtree(entry, ignore_errors=True)


def is_complete(folder: Path, pair: Pair) -> bool:
    """Whether ``folder`` holds the complete outputs of registering ``pair``."""
    try:
        report = json.loads((folder / "report.json").read_text())
        inputs = report["inputs"]
        outputs = report["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (inputs.get("moving") == str(pair.moving) and inputs.get("fixed") == str(pair.fixed)
            and all((folder / name).is_file() for name in outputs))


# --------------------------------------------------------------------------- summary


def _row(pair: Pair, status: str, report: dict[str, Any] | None = None, error: str = "", rank: int = 0) -> dict:
    row: dict[str, Any] = {key: ("" if value is None else str(value)) for key, value in pair.inputs().items()}
    row.update(name=pair.name, status=status, error=error, rank=rank)
    if report is not None:
        row.update(dice_before=report.get("dice_before", ""), dice_affine=report.get("dice_affine", ""),
                   dice=(report.get("dice") or {}).get("mean", ""), folding_percent=report["folding_percent"],
                   seconds=round(sum(report["runtime_s"].values()), 3))
    return row


def _write_summary(out: Path, rows: Sequence[dict]) -> Path:
    path = out / SUMMARY_FILE
    tmp = out / f".{SUMMARY_FILE}.{uuid.uuid4().hex}"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def _reason(err: BaseException) -> str:
    text = str(err).replace("\n", " ")
    return text if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {text}"


# --------------------------------------------------------------------------- the run


def _distributed(device: str | None) -> tuple[int, int, bool, torch.device]:
    """Rank, world size, whether this call started the process group, and the device."""
    from ..training.distributed import init_distributed

    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but no CUDA GPU is available; use --device cpu")
    info, dev = init_distributed(device or "auto")
    if info.world == 1:  # as the single-pair command chooses it (reports name "cuda", not "cuda:0")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return info.rank, info.world, info.owns_group, dev


def run_batch(pairs: Sequence[Pair], out: str | os.PathLike[str], model: str | None = None, *, workers: int = 2,
              resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
              **options: Any) -> list[dict[str, Any]]:
    """Register ``pairs`` into ``OUT/<pair.name>/`` (module docstring) → summary rows
    (every rank's on rank 0, this rank's on the others; :data:`SUMMARY_FIELDS`; status
    ``ok``, ``skipped`` (complete, ``resume``) or ``failed`` with ``error``).

    ``model``: a name or source as for :func:`transreg.register` (``None``: the default),
    loaded once per rank. ``workers``: DataLoader processes reading NIfTI files (0: read
    in this process). ``options`` go to :func:`transreg.register` (``device`` included).
    Raises ``ValueError`` for an unusable ``OUT`` or model; pair problems never raise.
    """
    from ..zoo.factory import resolve_source
    from .defaults import default_model

    out = Path(out)
    check_output_dir(out)
    model_name = model or default_model()
    resolve_source(model_name)  # an unknown name stops here, before any pair
    rank, world, owns_group, device = _distributed(options.pop("device", None))
    order = {pair.name: i for i, pair in enumerate(pairs)}
    mine = list(pairs)[rank::world]
    out.mkdir(parents=True, exist_ok=True)
    _clear_partial(out, mine)
    rows: list[dict[str, Any]] = []
    todo = []
    for pair in mine:
        if resume and is_complete(out / pair.name, pair):
            rows.append(_row(pair, "skipped", json.loads((out / pair.name / "report.json").read_text()), rank=rank))
        else:
            todo.append(pair)
    where = f"rank {rank}/{world}: " if world > 1 else ""
    log(f"[batch] {where}{len(mine)} pairs, {len(rows)} complete (skipped), {len(todo)} to register with "
        f"{model_name} on {device} → {out}/")

    start = time.perf_counter()
    rows += _register_all(todo, out, model_name, device, workers, progress, where, rank, log, options)
    elapsed = time.perf_counter() - start
    if world > 1:
        gathered: list[list[dict]] | None = [[] for _ in range(world)] if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if owns_group:
            dist.destroy_process_group()
        if rank != 0:
            return rows
        rows = [row for part in gathered or [] for row in part]
    rows.sort(key=lambda row: order[row["name"]])
    try:
        (out / PARTIAL).rmdir()  # every rank is done: nothing is being written
    except OSError:
        pass
    summary = _write_summary(out, rows)
    counts = collections.Counter(row["status"] for row in rows)
    done = counts["ok"]
    log(f"[batch] registered {done}, skipped {counts['skipped']}, failed {counts['failed']} in {elapsed:.1f} s"
        f" ({done / elapsed if elapsed > 0 else 0:.3f} pairs/s{' on rank 0' if world > 1 else ''}); "
        f"summary: {summary}")
    return rows


def _register_all(todo: Sequence[Pair], out: Path, model_name: str, device: torch.device, workers: int,
                  progress: bool, where: str, rank: int, log: Callable[[str], None],
                  options: dict[str, Any]) -> list[dict[str, Any]]:
    """Read (DataLoader workers) → register (here) → write (writer process), one pair each."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    if not todo:
        return rows
    nets: dict[int, nn.Module] = {}
    pending: collections.deque[tuple[Pair, Future]] = collections.deque()
    loader = DataLoader(_Reader(todo), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)
    bar = tqdm(total=len(todo), unit="pair", desc=f"{where}register", disable=not progress, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining} ETA, {rate_noinv_fmt}]")

    def finish(pair: Pair, report: dict | None, error: str = "") -> None:
        rows.append(_row(pair, "failed" if error else "ok", report, error, rank))
        if error:
            bar.write(f"[failed] {pair.name}: {error}", file=sys.stderr)
        bar.update()

    def collect() -> None:
        pair, future = pending.popleft()
        try:
            finish(pair, future.result())
        except Exception as err:  # noqa: BLE001 - a failed write fails this pair only
            finish(pair, None, _reason(err))

    writer = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_writer_start)
    writer.submit(int)  # start the writer now, while the first pair is read and registered
    try:
        for index, item in loader:
            pair = todo[index]
            if isinstance(item, str):
                finish(pair, None, item)
                continue
            ndim = item["fixed"].ndim
            if ndim not in nets:
                try:
                    nets[ndim] = network_for(model_name, ndim).to(device)
                except ImageError as err:  # a model of the other dimension: this pair fails
                    finish(pair, None, str(err))
                    continue
            try:
                result = register(item["moving"], item["fixed"], model=nets[ndim], moving_labels=item["moving_labels"],
                                  fixed_labels=item["fixed_labels"], device=device, **options)
            except Exception as err:  # noqa: BLE001 - a failing pair is reported, the others go on
                finish(pair, None, _reason(err))
                continue
            pending.append((pair, writer.submit(_write_pair, _portable(result), str(out), pair.name)))
            while len(pending) > 1:  # one pair written while the next one is computed
                collect()
        while pending:
            collect()
    finally:
        writer.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return rows

