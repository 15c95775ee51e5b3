"""End-to-end speed of ``transreg register``, stage by stage, as a user runs it.

Each run is the whole command in a fresh subprocess (interpreter start and imports
included), median over ``--runs`` runs (default 5) after one untimed warm-up run, with
``--threads`` CPU threads (default 2), fp32 and the default outputs. Stage times come
from each run's ``report.json`` (``runtime_s``); ``start-up`` is the wall-clock time
minus the sum of the stages (interpreter start, imports, argument parsing, exit).

Pairs: ``sample`` (the pair shipped in ``transreg/assets/sample``, 2 mm) and ``1mm``
(the same two subjects resampled onto 160×192×224 grids at 1 mm around each image's
centre, linear for images, nearest for labels; made in a temporary folder). Affine
modes: the choices of ``transreg register --affine`` when the command has that option,
else ``classic`` (the default) and ``none`` (``--no-affine``). Devices: ``cpu`` and
``cuda`` when a GPU is present. Also times ``transreg --help``.

    python evaluate/bench_register.py                         # everything, table on stdout
    python evaluate/bench_register.py --pairs sample --affine none --runs 5 --out results.json

Run it on an idle machine: timings of a busy machine are meaningless (say so when
quoting them).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZE_1MM = (160, 192, 224)
PAIRS = ("sample", "1mm")


def affine_modes() -> dict[str, list[str]]:
    """Affine mode → the ``transreg register`` arguments selecting it, read from the
    command's parser (``--affine`` choices if the command has them)."""
    from transreg.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    register = commands.choices["register"]
    by_flag = {flag: action for action in register._actions for flag in action.option_strings}
    if "--affine" in by_flag:
        return {mode: ["--affine", mode] for mode in by_flag["--affine"].choices}
    return {"classic": [], "none": ["--no-affine"]}


def make_1mm_pair(folder: Path) -> dict[str, Path]:
    """The sample pair resampled onto 160×192×224 RAS grids at 1 mm (each around its own
    image's centre, so the pair keeps its misalignment) → paths of the four files."""
    import numpy as np
    import torch

    from transreg.registration.defaults import sample_pair
    from transreg.registration.io import load_image, save_image
    from transreg.registration.preprocess import Grid, coordinates, resample_image, sample, voxel_map

    paths = {}
    for role in ("moving", "fixed"):
        source = sample_pair()
        image, labels = load_image(source[role]), load_image(source[f"{role}_labels"], labels=True)
        grid = Grid.of(image)
        centre = grid.affine[:3, :3] @ ((np.asarray(image.shape) - 1) / 2) + grid.affine[:3, 3]
        target = np.eye(4)
        target[:3, 3] = centre - (np.asarray(SIZE_1MM) - 1) / 2
        target_grid = Grid(SIZE_1MM, target)
        data = resample_image(image.data, grid, target_grid)[0, 0].numpy()
        coords = coordinates(voxel_map(target_grid, grid), SIZE_1MM)
        label_data = sample(torch.as_tensor(labels.data.astype(np.int64))[None, None], coords, mode="nearest")
        paths[role] = folder / f"{role}.nii.gz"
        paths[f"{role}_labels"] = folder / f"{role}_labels.nii.gz"
        save_image(paths[role], data, target)
        save_image(paths[f"{role}_labels"], label_data[0, 0].numpy().astype(labels.data.dtype), target)
    return paths


def transreg_command() -> list[str]:
    """The ``transreg`` executable next to this interpreter (else ``python -m transreg``)."""
    script = Path(sys.executable).with_name("transreg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "transreg"]


def environment(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_register(args: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    """One ``transreg register`` run → ``{"wall": s, "start-up": s, stage: s, ...}``."""
    start = time.perf_counter()
    done = subprocess.run([*transreg_command(), "register", *args, "-o", str(out)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"transreg register {' '.join(args)} failed:\n{done.stderr.strip()}")
    stages = json.loads((out / "report.json").read_text())["runtime_s"]
    return {"wall": wall, "start-up": wall - sum(stages.values()), **stages}


def time_help(runs: int, env: dict[str, str]) -> float:
    """Median wall-clock seconds of ``transreg --help``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*transreg_command(), "--help"], env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(pair: str, folder: Path) -> list[str]:
    if pair == "sample":
        return ["--sample"]
    paths = make_1mm_pair(folder)
    return [str(paths["moving"]), str(paths["fixed"]), "--moving-labels", str(paths["moving_labels"]),
            "--fixed-labels", str(paths["fixed_labels"])]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the medians, one column per stage seen."""
    stages: list[str] = []
    for row in rows:
        stages += [s for s in row["median_s"] if s not in stages and s != "wall"]
    head = ["pair", "device", "affine", "wall s", *stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for row in rows:
        cells = [row["pair"], row["device"], row["affine"], f"{row['median_s']['wall']:.2f}"]
        cells += [f"{row['median_s'][s]:.2f}" if s in row["median_s"] else "–" for s in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    modes = affine_modes()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    parser.add_argument("--affine", nargs="+", choices=list(modes), default=list(modes), metavar="MODE",
                        help=f"affine modes ({', '.join(modes)}; default all)")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per configuration (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--out", type=Path, help="also write every run and the medians to this JSON file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.devices is None:
        import torch

        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    env = environment(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_register_") as tmp:
        work = Path(tmp)
        help_s = time_help(args.runs, env)
        print(f"transreg --help: {help_s:.2f} s (median of {args.runs})", flush=True)
        for pair in args.pairs:
            pair_args = inputs(pair, work)
            for device in args.devices:
                for mode in args.affine:
                    command = [*pair_args, *modes[mode], "--device", device, "--precision", "fp32"]
                    run_register(command, work / "warmup", env)  # untimed: caches, lazy initialisation
                    runs = [run_register(command, work / f"run{i}", env) for i in range(args.runs)]
                    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    rows.append({"pair": pair, "device": device, "affine": mode, "command": command,
                                 "median_s": median, "runs": runs})
                    print(f"{pair} {device} affine={mode}: {median['wall']:.2f} s wall "
                          f"({median['start-up']:.2f} s start-up)", flush=True)
    print()
    print(table(rows))
    if args.out:
        record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                  "load_average": os.getloadavg(), "threads": args.threads, "runs": args.runs,
                  "help_median_s": help_s, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
