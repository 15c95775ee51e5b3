"""Learning curves: validation Dice against training step and against CPU hours, one plot.

Reads each run folder's ``validation.jsonl`` (``val_dice`` per validation step) and, for
the compute axis, the ``cpu_hours`` the trainer writes into every record (process CPU
time, all threads, continued across resumes). Runs logged before ``cpu_hours`` existed
get an estimate: the sum over steps of 1 / ``steps_per_s`` (metrics.jsonl) times the
run's ``run.threads`` (config.yaml), marked "≈" in the legend and the table.

    python evaluate/learning_curves.py --run cascade2=runs/zoo_v2/cascade2 --run plain=runs/zoo_v2/plain \\
        --out evaluate/results/zoo_v2/learning_curves.png

Writes the PNG and, beside it, a Markdown table of the points (``.md``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def curve(run: Path) -> tuple[list[int], list[float], list[float], bool]:
    """``(steps, val_dice, cpu_hours, estimated)`` of a run folder."""
    validation = [r for r in _jsonl(run / "validation.jsonl") if r.get("val_dice") is not None]
    if not validation:
        raise SystemExit(f"learning_curves: {run / 'validation.jsonl'} holds no val_dice")
    steps = [int(r["step"]) for r in validation]
    dice = [float(r["val_dice"]) for r in validation]
    if all("cpu_hours" in r for r in validation):
        return steps, dice, [float(r["cpu_hours"]) for r in validation], False
    threads = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("run", {}).get("threads") or 1
    seconds, elapsed = {0: 0.0}, 0.0
    for record in _jsonl(run / "metrics.jsonl"):
        if record.get("steps_per_s"):
            elapsed += 1.0 / float(record["steps_per_s"])
        seconds[int(record["step"])] = elapsed
    known = sorted(seconds)
    hours = [seconds[max(k for k in known if k <= s)] * threads / 3600.0 for s in steps]
    return steps, dice, hours, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                        help="a training run folder and its label in the legend (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (a .md table beside it)")
    parser.add_argument("--title", default="Validation Dice")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for item in args.run:
        label, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            print(f"learning_curves: --run {item!r}: expected LABEL=FOLDER with an existing folder", file=sys.stderr)
            return 2
        runs.append((label, *curve(Path(folder))))
    fig, (by_step, by_cpu) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    lines = [f"# {args.title}", "", f"`python evaluate/learning_curves.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
             "", "| run | step | CPU hours | validation Dice |", "|---|---:|---:|---:|"]
    for label, steps, dice, hours, estimated in runs:
        mark = "≈ " if estimated else ""
        by_step.plot(steps, dice, marker="o", label=label)
        by_cpu.plot(hours, dice, marker="o", label=f"{label} ({mark}CPU h)" if estimated else label)
        lines += [f"| {label} | {s} | {mark}{h:.2f} | {d:.4f} |" for s, d, h in zip(steps, dice, hours)]
    by_step.set_xlabel("training step")
    by_cpu.set_xlabel("CPU hours (process time, all threads)")
    by_step.set_ylabel("validation Dice")
    for axis in (by_step, by_cpu):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
