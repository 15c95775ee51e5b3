"""Zoo v1 driver: train every architecture on train/configs/zoo_v1.yaml, evaluate, write
the zoo cards, package the weights. Resumable: run it again (in a later session) and it
continues each unfinished training from its latest checkpoint and skips finished stages.

    python evaluate/build_data.py          # once: data/bench_2mm (native, aligned, pairs CSVs)
    python train/zoo_v1.py                 # prepare → train → evaluate → package, every architecture
    python train/zoo_v1.py train --archs voxelmorph2      # one stage, some architectures
    nohup python train/zoo_v1.py > runs/zoo_v1/driver.log 2>&1 &   # unattended

Stages:
  prepare   check data/bench_2mm; write val_pairs_aligned.csv (same-dataset ordered pairs
            of the aligned validation subjects) if build_data.py did not
  train     `transreg train train/configs/zoo_v1.yaml --model ARCH --out RUNS/ARCH`, or
            `--resume` when the run exists; each session's wall time → RUNS/ARCH/sessions.jsonl
  evaluate  one `transreg compare` of every trained ARCH.synth_brain (+ identity, affine)
            on the SynthSeg test pairs (aseg30 Dice) and one on the HCP test pairs → RESULTS/
  package   per architecture: the gate (Dice ≥ affine + 0.08 and folding < 1 % on the
            SynthSeg test pairs), then `transreg.zoo.release.ship_version`: the checkpoint
            (config.json, model.safetensors in float32, README.md = the card) in
            TREE/transreg/assets/zoo/ARCH.synth_brain/, the card in TREE/zoo_cards/ and the
            index entry in TREE/transreg/zoo/index.json (an older shipped version moves to
            TREE/train/releases/); `transreg release` then pushes it to the Hub

A smoke run of the plumbing (never register its weights):
    python train/zoo_v1.py --data /tmp/d --runs /tmp/r --results /tmp/res --tree /tmp/t \\
        --steps 5 --set data.size=[48,56,48] --no-gate
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "train" / "configs" / "zoo_v1.yaml"
ARCHS = ("voxelmorph2", "transmorph_micro", "vitvnet_micro")  # transmorph_diff_micro: add with --archs
TAG = "synth_brain"
STAGES = ("prepare", "train", "evaluate", "package")
GATE_DICE, GATE_FOLDING = 0.08, 1.0  # issue 9: Dice ≥ affine + 0.08, folding < 1 %
MAX_PACKAGE_MB = 30.0
LIMITATIONS = (
    "Synthetic intensities on real anatomy: trained and tested on T1-like images synthesised from label maps "
    "(SynthSeg and HCP subjects), not on scanner images; real T1 scans differ in contrast, noise and artefacts. "
    "2 mm isotropic voxels. Affinely pre-aligned, skull-stripped brain: `transreg register` runs the affine stage "
    "first; heads with skull, other anatomies, modalities or pathologies are untested. Trained on 21 subjects "
    "with a reduced-width network sized for CPU training: a first, small model, not a state-of-the-art one. "
    "Check the folding percentage and the overlay of every result. Research use; not a medical device."
)
INTENDED_USE = (
    "Deformable registration of two skull-stripped 3-D brain MR images (T1-like contrast) at 2 mm, after "
    "transreg's affine pre-alignment (`transreg register` does both). Research and teaching; a quick default "
    "that runs on a CPU. Not a medical device."
)


def log(message: str) -> None:
    print(f"[zoo_v1 {dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def checkpoint_name(arch: str) -> str:
    return f"{arch}.{TAG}"


def hub_id(org: str, arch: str) -> str:
    return f"{org}/{arch.replace('_', '-')}-{TAG.replace('_', '-')}"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- prepare


def prepare(data: Path) -> Path:
    """Check the benchmark data; write ``val_pairs_aligned.csv`` if missing → its path."""
    needed = ["subjects.csv", "train_aligned.csv", "test_pairs.csv"]
    missing = [n for n in needed if not (data / n).is_file()]
    if missing:
        sys.exit(f"zoo_v1: {data} lacks {', '.join(missing)}: run `python evaluate/build_data.py --out {data}` first")
    val = data / "val_pairs_aligned.csv"
    if not val.is_file():
        with (data / "subjects.csv").open(newline="") as f:
            subjects = [r for r in csv.DictReader(f) if r["split"] == "val"]
        rows = []
        for dataset in sorted({s["dataset"] for s in subjects}):
            names = [s["subject"] for s in subjects if s["dataset"] == dataset]
            for m, fx in itertools.permutations(names, 2):  # same-dataset pairs: one label numbering per pair
                rows.append([f"aligned/{m}/image.nii.gz", f"aligned/{fx}/image.nii.gz",
                             f"aligned/{m}/labels.nii.gz", f"aligned/{fx}/labels.nii.gz"])
        if not rows:
            sys.exit(f"zoo_v1: {data}/subjects.csv has no validation pairs")
        missing_files = [r[0] for r in rows if not (data / r[0]).is_file()]
        if missing_files:
            sys.exit(f"zoo_v1: aligned validation images missing ({missing_files[0]}): rebuild {data} with aligned copies")
        with val.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["moving", "fixed", "moving_labels", "fixed_labels"])
            writer.writerows(rows)
        log(f"wrote {val} ({len(rows)} pairs)")
    return val


# --------------------------------------------------------------------------- train


def _step_of(run: Path) -> int:
    """The step the run has reached (final: run.steps; else its latest checkpoint; else 0)."""
    from transreg.training.state import latest_checkpoint

    ckpt = latest_checkpoint(run)
    return int(ckpt.name[5:]) if ckpt is not None else 0


def train(arch: str, args: argparse.Namespace) -> int:
    """Train (or resume) one architecture → the exit status of ``transreg train`` (0: done)."""
    run = args.runs / arch
    if (run / "final" / "model.safetensors").is_file():
        log(f"{arch}: trained already ({run}/final)")
        return 0
    cmd = [sys.executable, "-m", "transreg", "train"]
    if (run / "config.yaml").is_file():
        cmd += ["--out", str(run), "--resume"]  # the run's own resolved config, not today's recipe
    else:
        sets = [f"data.train={args.data / 'train_aligned.csv'}", f"data.val={args.data / 'val_pairs_aligned.csv'}",
                *args.set]
        cmd += [str(RECIPE), "--model", arch, "--out", str(run), *itertools.chain(*(["--set", s] for s in sets))]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
    start_step, start = _step_of(run), time.time()
    log(f"{arch}: {' '.join(cmd)}")
    child = subprocess.Popen(cmd, cwd=REPO)
    previous = {sig: signal.signal(sig, lambda s, f: child.send_signal(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        done = (run / "final" / "model.safetensors").is_file()
        session = {"start": dt.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
                   "seconds": round(time.time() - start, 1), "from_step": start_step,
                   "to_step": "final" if done else _step_of(run), "exit_code": child.returncode,
                   "machine": machine()}
        run.mkdir(parents=True, exist_ok=True)
        with (run / "sessions.jsonl").open("a") as f:
            f.write(json.dumps(session) + "\n")
    if code != 0:
        log(f"{arch}: training stopped (exit {code}); run this script again to resume")
    return code


def _running_seconds(session: dict) -> float:
    """A session's wall time less ``paused_seconds``: time the run was stopped (SIGSTOP)
    for benchmarks, added to its sessions.jsonl entry by hand when that happened."""
    return session["seconds"] - session.get("paused_seconds", 0.0)


def _hardware(sessions: list[dict], steps: int) -> str:
    """Each machine / thread setting the run trained on, with its steps and seconds per step."""
    groups: dict[str, list[float]] = {}
    for s in sessions:
        to_step = steps if s["to_step"] == "final" else s["to_step"]
        group = groups.setdefault(s["machine"], [0, 0.0])
        group[0] += to_step - s["from_step"]
        group[1] += _running_seconds(s)
    return "; ".join(f"{m}: {n} steps, {sec / n:.1f} s per step" if n else f"{m}: no steps"
                     for m, (n, sec) in groups.items())


def training_summary(run: Path) -> dict:
    """Steps, running time over all sessions, seconds per step, validation Dice, machine."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    log_file = run / "sessions.jsonl"  # absent when the run was trained without this driver
    sessions = [json.loads(l) for l in log_file.read_text().splitlines() if l.strip()] if log_file.is_file() else []
    seconds = sum(_running_seconds(s) for s in sessions)
    paused = sum(s.get("paused_seconds", 0.0) for s in sessions)
    steps = int(config["run"]["steps"])
    val = [json.loads(l) for l in (run / "validation.jsonl").read_text().splitlines() if l.strip()] \
        if (run / "validation.jsonl").is_file() else []
    dice = [v for v in val if "val_dice" in v]
    return {"steps": steps, "hours": seconds / 3600, "paused_hours": paused / 3600, "seconds_per_step": seconds / steps,
            "sessions": len(sessions), "machine": _hardware(sessions, steps) if sessions else machine(),
            "val_dice_start": dice[0]["val_dice"] if dice else None, "val_dice_final": dice[-1]["val_dice"] if dice else None,
            "val_folding_final": val[-1].get("val_folding") if val else None, "config": config}


# --------------------------------------------------------------------------- evaluate


MODALITY = "T1-weighted-like brain MR, skull-stripped (trained on synthetic intensities)"


def stage_checkpoints(archs: list[str], args: argparse.Namespace) -> Path:
    """``RUNS/checkpoints/ARCH.synth_brain/`` = the final model.safetensors and config.json,
    with the modality the trainer cannot know filled in (the folder name is the method's
    name in the comparison table)."""
    root = args.runs / "checkpoints"
    for arch in archs:
        folder = root / checkpoint_name(arch)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.runs / arch / "final" / "model.safetensors", folder / "model.safetensors")
        config = json.loads((args.runs / arch / "final" / "config.json").read_text())
        config["preprocessing"]["modality"] = config["preprocessing"].get("modality") or MODALITY
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root


def _shown(path: str) -> str:
    """A path as the card shows it: relative to the repository when inside it."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path


def evaluate(archs: list[str], args: argparse.Namespace) -> None:
    root = stage_checkpoints(archs, args)
    names = [checkpoint_name(a) for a in archs]
    args.results.mkdir(parents=True, exist_ok=True)
    benchmarks = [("synthseg_test", "test_pairs.csv", "aseg30", "SynthSeg 10-12 test pairs, 2 mm, synthetic T1 on real anatomy"),
                  ("hcp_test", "test_pairs_hcp.csv", "all", "HCP test pairs, 2 mm, synthetic T1 on real anatomy")]
    for folder, csv_name, labels, title in benchmarks:
        pairs = args.data / csv_name
        if not pairs.is_file():
            log(f"evaluate: {pairs} missing, skipped")
            continue
        cmd = [sys.executable, "-m", "transreg", "compare", "--models", *names, "--data", str(pairs.resolve()),
               "-o", str((args.results / folder).resolve()), "--labels", labels, "--no-progress",
               "--title", f"zoo v1 — {title}"]
        if args.device:
            cmd += ["--device", args.device]
        cmd += args.eval_args
        log(f"evaluate: {' '.join(cmd)} (in {root})")
        subprocess.run(cmd, cwd=root, check=True)
    (args.results / "README.md").write_text(
        "# Zoo v1 evaluation\n\n"
        "Made by `python train/zoo_v1.py evaluate` (each `summary.md` starts with its exact `transreg compare` "
        "command; the methods are the checkpoint folders `runs/zoo_v1/checkpoints/ARCH.synth_brain`, i.e. the "
        "weights that ship).\n\n"
        "- `synthseg_test/`: all ordered pairs of SynthSeg subjects 10-12 (native position), Dice over the 30 aseg "
        "structures present in both maps.\n"
        "- `hcp_test/`: all ordered pairs of the 4 HCP test subjects, Dice over their 5 labels.\n\n"
        f"Training and evaluation machine: {machine()}.\n")


# --------------------------------------------------------------------------- package


def read_summary(path: Path) -> dict[str, dict]:
    with path.open(newline="") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


def _metrics(row: dict) -> dict[str, float]:
    keys = {"dice": "dice_mean", "hd95": "hd95_mean", "folding": "folding_percent_mean", "sdlogj": "sdlogj_mean",
            "dsc30": "dsc30"}
    out = {}
    for key, column in keys.items():
        try:
            value = float(row[column])
        except (KeyError, TypeError, ValueError):
            continue
        if value == value:  # not NaN
            out[key] = value
    return out


def make_card(arch: str, args: argparse.Namespace, results: dict[str, dict[str, dict]], training: dict):
    from transreg.zoo.cards import EvalResult, card_from_config
    from transreg.zoo.checkpoint import count_parameters, read_config

    name = checkpoint_name(arch)
    folder = args.runs / "checkpoints" / name
    config = read_config(folder)
    datasets = {"synthseg_test": ("SynthSeg 10-12 test pairs (2 mm, synthetic T1, aseg30 Dice)", "synthseg-2mm-synthetic-t1",
                                  "test: all ordered pairs of 3 subjects"),
                "hcp_test": ("HCP test pairs (2 mm, synthetic T1, 5 labels)", "hcp-labels-2mm-synthetic-t1",
                             "test: all ordered pairs of 4 subjects")}
    evaluations = [EvalResult(label, _metrics(summary[name]), dataset_id=slug, split=split)
                   for key, (label, slug, split) in datasets.items()
                   if (summary := results.get(key)) and name in summary]
    lines = ["| method | " + " | ".join(["Dice", "DSC30", "HD95 (mm)", "folding (%)", "SDlogJ"]) + " |", "|---" * 6 + "|"]
    for method in ("identity", "affine", name):
        row = results["synthseg_test"].get(method)
        if row:
            m = _metrics(row)
            lines.append(f"| {method} | " + " | ".join(f"{m[k]:.3f}" if k in m else "n/a"
                                                      for k in ("dice", "dsc30", "hd95", "folding", "sdlogj")) + " |")
    t = training
    val_dice = (f"{t['val_dice_start']:.3f} at step 0 → {t['val_dice_final']:.3f} at step {t['steps']}"
                if t["val_dice_final"] is not None else "not recorded")
    c = t["config"]
    d = c["data"]
    augmentation = (f"random affine augmentation of the moving image ({d['affine_degrees']}°, {d['affine_scale']} scale, "
                    f"{d['affine_shift']} voxels)" if d["affine_degrees"] or d["affine_scale"] or d["affine_shift"]
                    else "no augmentation")
    training_text = "\n".join([
        f"- recipe: `train/configs/zoo_v1.yaml` (one recipe for every zoo v1 architecture; only `--model` changes), "
        f"reproduce with `python train/zoo_v1.py --archs {arch}`",
        f"- data: `{_shown(c['data']['train'])}` (SynthSeg 01-07 + 14 HCP training subjects, affinely pre-aligned, 2 mm, "
        f"synthetic T1-like intensities), random pairs within a dataset (the CSV's group column), size {d['size']}, "
        f"{augmentation}",
        f"- loss: {c['loss']['sim_weight']} × NCC({c['loss']['similarity_args'].get('window', 9)}) + "
        f"{c['loss']['reg_weight']} × diffusion"
        + (f" + {c['loss']['dice_weight']} × Dice on the label maps" if c['loss'].get('dice_weight') else "")
        + f"; Adam, lr {c['optim']['lr']} ({c['optim']['schedule']}), "
        f"batch {c['data']['batch_size']}, {t['steps']} steps, seed {c['run']['seed']}, precision {c['run']['precision']}",
        (f"- training time: {t['hours']:.1f} h wall clock over {t['sessions']} session(s)"
         + (f" (not counted: {t['paused_hours']:.1f} h stopped for benchmarks)" if t["paused_hours"] else "")
         + f", {t['seconds_per_step']:.1f} s per step on average" if t["sessions"] else
         "- training time: not recorded (trained without train/zoo_v1.py)"),
        f"- hardware: {t['machine']}",
        f"- validation Dice (aligned validation pairs, all labels, during training): {val_dice}",
    ])
    comparison = ("Test pairs in native position, full `transreg register` pipeline (affine stage, then this network); "
                  "same table for every zoo v1 model in `evaluate/results/zoo_v1/`.\n\n" + "\n".join(lines))
    return card_from_config(
        config, evaluations, name=name, num_parameters=count_parameters(folder), version=args.version,
        hf_hub_id=hub_id(args.hub_org, arch), recipe="train/configs/zoo_v1.yaml",
        summary=f"{arch} trained by transreg's zoo v1 recipe on 2 mm brains with synthetic T1-like intensities "
                f"on real anatomy (SynthSeg and HCP label maps).",
        intended_use=INTENDED_USE, limitations=LIMITATIONS,
        extra_sections={"Training": training_text, "Comparison with the baselines": comparison})


def _tree_index(tree: Path):
    """The zoo index of the source tree ``tree`` (a new, empty one for a smoke run's tree)."""
    from transreg.zoo.index import ZooIndex, load_index

    path = tree / "transreg" / "zoo" / "index.json"
    if path.is_file():
        return load_index(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (tree / "zoo_cards").mkdir(parents=True, exist_ok=True)
    return ZooIndex(entries=[], path=path)


def package(archs: list[str], args: argparse.Namespace) -> None:
    from transreg.zoo.cards import render_card
    from transreg.zoo.release import ship_version

    results = {key: read_summary(args.results / key / "summary.csv")
               for key in ("synthseg_test", "hcp_test") if (args.results / key / "summary.csv").is_file()}
    if "synthseg_test" not in results:
        sys.exit(f"zoo_v1: no {args.results}/synthseg_test/summary.csv: run the evaluate stage first")
    affine = float(results["synthseg_test"]["affine"]["dice_mean"])
    index = _tree_index(args.tree)
    for arch in archs:
        name = checkpoint_name(arch)
        row = results["synthseg_test"].get(name)
        if row is None:
            log(f"{name}: not in the comparison; run the evaluate stage")
            continue
        dice, folding = float(row["dice_mean"]), float(row["folding_percent_mean"])
        ok = dice >= affine + GATE_DICE and folding < GATE_FOLDING
        log(f"{name}: Dice {dice:.3f} (affine {affine:.3f}, gain {dice - affine:+.3f}), folding {folding:.3f} % → "
            f"{'PASS' if ok else 'FAIL'} (gate: gain ≥ {GATE_DICE}, folding < {GATE_FOLDING} %)")
        if not ok and not args.no_gate:
            continue
        card_text = render_card(make_card(arch, args, results, training_summary(args.runs / arch)))
        entry = ship_version(args.runs / "checkpoints" / name, name, args.version, hub_id(args.hub_org, arch), card_text,
                             "train/configs/zoo_v1.yaml", index, package_dir=args.tree / "transreg",
                             source_root=args.tree)
        log(f"{entry.versioned_name}: shipped in {entry.local_path}, index {index.path}")
    shipped = args.tree / "transreg" / "assets" / "zoo"
    size_mb = sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file()) / 2**20 if shipped.is_dir() else 0
    log(f"package: {shipped} holds {size_mb:.1f} MB (limit {MAX_PACKAGE_MB} MB)")
    if size_mb > MAX_PACKAGE_MB:
        sys.exit(f"zoo_v1: the packaged weights ({size_mb:.1f} MB) exceed {MAX_PACKAGE_MB} MB: store them in float16")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", metavar="STAGE",
                        help=f"stages to run, in order (default all: {' '.join(STAGES)})")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), help=f"architectures (default {' '.join(ARCHS)})")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench_2mm", help="evaluate/build_data.py output")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "zoo_v1", help="training runs")
    parser.add_argument("--results", type=Path, default=REPO / "evaluate" / "results" / "zoo_v1")
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="package: the source tree receiving the checkpoints (transreg/assets/zoo/), their "
                             "index entries (transreg/zoo/index.json) and cards (zoo_cards/); a new one for smoke runs")
    parser.add_argument("--steps", type=int, default=None, help="override run.steps of a new run (smoke tests)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for new runs, e.g. data.size=[48,56,48] (smoke tests)")
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")
    parser.add_argument("--hub-org", default="transreg", help="Hub organisation of the checkpoints")
    parser.add_argument("--version", default="v1.0.0", help="version of the checkpoints")
    parser.add_argument("--no-gate", action="store_true", help="package even checkpoints that fail the gate (smoke tests)")
    parser.add_argument("--eval-args", nargs=argparse.REMAINDER, default=[],
                        help="last option: the rest goes to `transreg compare` (e.g. --eval-args --no-warmup)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    for key in ("data", "runs", "results", "tree"):
        setattr(args, key, getattr(args, key).resolve())
    stages = args.stages or list(STAGES)
    if "prepare" in stages or "train" in stages:
        prepare(args.data)
    failed = []
    if "train" in stages:
        for arch in args.archs:
            code = train(arch, args)
            if code in (130, -signal.SIGINT, -signal.SIGTERM, 143):  # stopped by a signal: stop everything
                return code
            if code != 0:  # diverged or broken: the next architecture still trains
                failed.append(arch)
    trained = [a for a in args.archs if (args.runs / a / "final" / "model.safetensors").is_file()]
    if "evaluate" in stages:
        if not trained:
            sys.exit("zoo_v1: no trained architecture to evaluate")
        evaluate(trained, args)
    if "package" in stages:
        package(trained, args)
    if failed:
        log(f"training failed for {', '.join(failed)} (see their logs above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
