"""Benchmark: pairs per second of batch registration vs calling the single-pair command.

Makes ``--pairs`` copies of the shipped sample pair (sample-sized, intensities scaled a
little per pair), then times, wall clock, start-up included:

- ``--single`` calls of ``transreg register MOVING FIXED --moving-labels … -o …`` (one
  process each, as a shell loop would);
- one ``transreg register --pairs pairs.csv -o …`` over all pairs;

and prints a Markdown table (pairs/s, speed-up), the machine and its load, and whether
the pairs registered both ways have identical outputs::

    python evaluate/bench_batch.py                                   # full pipeline, CPU or CUDA
    python evaluate/bench_batch.py --register-args=--no-affine --single 5
    python evaluate/bench_batch.py --device cuda

Outputs go to a temporary folder (removed at the end; ``--keep DIR`` keeps them there).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from transreg.registration.defaults import sample_pair
from transreg.registration.io import load_image, save_image
from transreg.registration.result import OUTPUT_FILES


def make_pairs(root: Path, n: int) -> Path:
    """``n`` sample-sized pairs (moving intensities × (1 + 0.01 i)) and their CSV."""
    sample = sample_pair()
    moving = load_image(sample["moving"])
    rows = []
    for i in range(n):
        save_image(root / f"moving{i:02d}.nii.gz", moving.data * (1 + 0.01 * i), moving.affine)
        rows.append({"moving": f"moving{i:02d}.nii.gz", "fixed": str(sample["fixed"]),
                     "moving_labels": str(sample["moving_labels"]), "fixed_labels": str(sample["fixed_labels"]),
                     "name": f"pair{i:02d}"})
    with (root / "pairs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "pairs.csv"


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_batch: {shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def identical(a: Path, b: Path) -> bool:
    """Same NIfTI headers and voxels, same overlay bytes (report.json holds run times)."""
    for name in OUTPUT_FILES:
        if not (a / name).exists() or not (b / name).exists():
            return False
        if name.endswith(".nii.gz"):
            x, y = nib.load(str(a / name)), nib.load(str(b / name))
            if x.header.binaryblock != y.header.binaryblock or not np.array_equal(np.asarray(x.dataobj),
                                                                                   np.asarray(y.dataobj)):
                return False
        elif name == "overlay.png" and (a / name).read_bytes() != (b / name).read_bytes():
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="pairs in the batch (default 20)")
    parser.add_argument("--single", type=int, default=None, help="single-pair calls timed (default: --pairs)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--register-args", default="", help="more `transreg register` flags, e.g. --no-affine")
    parser.add_argument("--workers", type=int, default=2, help="batch mode's reading processes")
    parser.add_argument("--keep", type=Path, default=None, help="keep the pairs and outputs in this folder")
    parser.add_argument("--note", default="", help="a note for the table, e.g. the machine's load")
    args = parser.parse_args()
    single = args.pairs if args.single is None else min(args.single, args.pairs)

    root = Path(tempfile.mkdtemp(prefix="bench_batch_")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    csv_path = make_pairs(root, args.pairs)
    cli = [sys.executable, "-m", "transreg", "register"]
    extra = shlex.split(args.register_args) + (["--device", args.device] if args.device else [])
    load_before = os.getloadavg()

    single_s = 0.0
    for i in range(single):
        sample = sample_pair()
        single_s += timed(cli + [str(root / f"moving{i:02d}.nii.gz"), str(sample["fixed"]), "--moving-labels",
                                 str(sample["moving_labels"]), "--fixed-labels", str(sample["fixed_labels"]),
                                 "-o", str(root / "single" / f"pair{i:02d}"), *extra])
        print(f"single-pair call {i + 1}/{single}: {single_s / (i + 1):.1f} s per pair so far", file=sys.stderr)
    batch_s = timed(cli + ["--pairs", str(csv_path), "-o", str(root / "batch"), "--workers", str(args.workers),
                           "--no-progress", *extra])
    load_after = os.getloadavg()
    same = all(identical(root / "single" / f"pair{i:02d}", root / "batch" / f"pair{i:02d}") for i in range(single))

    single_rate, batch_rate = single / single_s, args.pairs / batch_s
    print(f"\n## Batch registration throughput ({dt.date.today()})\n")
    print(f"`{shlex.join(['python', 'evaluate/bench_batch.py', *sys.argv[1:]])}`; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after"
          f"{'; ' + args.note if args.note else ''}\n")
    print("| mode | pairs | wall s | pairs/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| single-pair command, one process per pair | {single} | {single_s:.1f} | {single_rate:.4f} | 1.00× |")
    print(f"| `--pairs` batch, {args.workers} reading workers | {args.pairs} | {batch_s:.1f} | {batch_rate:.4f} | "
          f"{batch_rate / single_rate:.2f}× |")
    print(f"\nidentical outputs for the {single} pairs registered both ways: {'yes' if same else 'NO'}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
