"""Zoo v2 evaluation (issue 19): v1 vs v2 on test images of another synthesis.

Stages (each writes under ``evaluate/results/zoo_v2/``; every ``summary.md`` starts with
its exact ``transreg compare`` command):

    python evaluate/build_data.py && python evaluate/synth_test.py && python evaluate/synth_test.py --contrast t2like
    python evaluate/zoo_v2.py stage --run runs/zoo_v2/transmorph_micro        # its final/ → runs/zoo_v2/checkpoints/
    python evaluate/zoo_v2.py compare --models transmorph_micro.synth_brain CKPT ...  [--sets t1pv t2likepv]
    python evaluate/zoo_v2.py instance-opt --model CKPT --steps 0 25 50 100
    python evaluate/zoo_v2.py table                                          # README.md from the summaries

Releasing a run (the card's metrics come from these tables; zoo v1's test sets and t1pv):

    python evaluate/zoo_v2.py release-stage --run-final runs/zoo_v2/cascade2/final \
        --arch transmorph_micro_cascade --name transmorph_micro_cascade.synth_brain
    python evaluate/zoo_v2.py release-tests --name transmorph_micro_cascade.synth_brain
    python evaluate/zoo_v2.py compare --models transmorph_micro.synth_brain transmorph_micro_cascade-synth_brain \
        --sets t1pv --no-baselines
    python evaluate/zoo_v2.py release-package --name transmorph_micro_cascade.synth_brain \
        --t1pv-folder transmorph_micro.synth_brain_transmorph_micro_cascade-synth_brain

Test sets (``evaluate/synth_test.py``): ``t1pv`` — the test subjects' images re-made at
1 mm with T1 prior intensities, partial volume, Rician noise, polynomial bias (no training
draws from it); ``t2likepv`` — the same with the brain's T1 intensities mirrored (a
contrast no T1-only training has seen). Each set: SynthSeg 10-12 all ordered pairs (Dice
over the aseg labels), the 4 HCP test subjects' ordered pairs (their 5 labels). Full
pipeline from native position (affine stage, network, resampling), as zoo v1.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "data" / "bench_2mm"
RESULTS = REPO / "evaluate" / "results" / "zoo_v2"
SETS = {"t1pv": "1 mm T1 synthesis + partial volume", "t2likepv": "1 mm mirrored-T1 (T2-like) synthesis + partial volume"}
BENCHMARKS = (("synthseg", "test_pairs.csv", "aseg30", "SynthSeg 10-12 test pairs"),
              ("hcp", "test_pairs_hcp.csv", "all", "HCP test pairs"))
METHODS = {
    "transmorph_micro.synth_brain": "v1.0.0 as shipped (the default model); likewise `vitvnet_micro.synth_brain`, "
                                    "`voxelmorph2.synth_brain` (zoo v1: one recipe, `train/configs/zoo_v1.yaml`, 2000 steps "
                                    "each)",
    "v2_lr1e-4_step150": "step 150 of the zoo v2 stage-1 run (`train/configs/zoo_v2.yaml`: random contrasts, "
                         "lr 1e-4 → 1e-5), staged by `python evaluate/zoo_v2.py stage --run "
                         "runs/zoo_v2/transmorph_micro_lr1e-4 --step 150 --name v2_lr1e-4_step150` (its step-205 "
                         "state is in `train/releases/transmorph_micro.synth_brain/resume/`)",
    "v1_cascade2, v1_cascade3": "v1.0.0's weights as a recursive cascade of 2 / 3 passes, no training "
                                "(`transreg.models.cascade.RecursiveCascade.wrapping`)",
    "plain_step400": "v1.0.0 trained 400 more steps on zoo v1's data, lr 1e-4 → 1e-5 (`train/configs/"
                     "zoo_v2_cascade.yaml` with `model.cascade_passes=1`), staged from its final/",
    "cascade2_step400": "v1.0.0 as a 2-pass recursive cascade trained end to end for the same 400 steps on the same "
                        "data (`train/configs/zoo_v2_cascade.yaml`), staged from its final/",
    "transmorph_micro_cascade-synth_brain": "cascade2_step400 as released: `transmorph_micro_cascade.synth_brain` "
                                            "v1.0.0, float16 weights (`release-stage`; its zoo v1 test-set tables: "
                                            "`release_transmorph_micro_cascade.synth_brain/`)",
    "transmorph_diff_micro_step2000": "TransMorph-diff at the micro widths (velocity at half resolution, scaling and "
                                      "squaring) trained from scratch on zoo v1's recipe and budget (`python "
                                      "train/zoo_v1.py prepare train --archs transmorph_diff_micro`, 2000 steps, 2.0 h "
                                      "at 2 threads): the fourth family of the backbone table. Its final weights and "
                                      "logs are committed in `train/releases/transmorph_diff_micro.synth_brain/stage1/` "
                                      "(copy that folder to `runs/zoo_v2/checkpoints/transmorph_diff_micro_step2000/` "
                                      "to rerun the table; `stage --run RUN` does it from a run's final/)",
    "ants": "ANTs SyN after the affine stage (antspyx 0.6.3)",
}
INTENDED_USE = (
    "Deformable registration of two skull-stripped 3-D brain MR images (T1-like contrast) at 2 mm, after "
    "transreg's affine pre-alignment (`transreg register` does both). Research and teaching; runs on a CPU. "
    "Not a medical device."
)
LIMITATIONS = (
    "Synthetic intensities on real anatomy: trained and tested on T1-like images synthesised from label maps "
    "(SynthSeg and HCP subjects), not on scanner images. 2 mm isotropic voxels, skull-stripped brains after the "
    "affine stage; other anatomies, modalities or pathologies are untested. A reduced-width network sized for CPU "
    "training. Check the folding percentage and the overlay of every result. Research use; not a "
    "medical device."
)
MODALITY_V2 = "brain MR of any contrast, skull-stripped, 2 mm (trained on synthetic random-contrast and T1-like intensities)"


def log(message: str) -> None:
    print(f"[zoo_v2 {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stage(run: Path, name: str, out: Path, step: int | None = None) -> Path:
    """``out/name/`` = a run's ``final/`` (or ``checkpoints/step_N``) config + weights, the
    modality filled in (the folder name is the method's name in the tables)."""
    source = run / "final" if step is None else run / "checkpoints" / f"step_{step:08d}"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "model.safetensors", folder / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config["preprocessing"]["modality"] = MODALITY_V2
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if (source / "README.md").is_file():
        shutil.copyfile(source / "README.md", folder / "README.md")
    log(f"staged {source} → {folder}")
    return folder


#: the cards' datasets (name, id, split) per BENCHMARKS dataset: zoo v1's test sets (the 2 mm
#: images of evaluate/build_data.py, as in zoo v1's cards) and the t1pv sets of this page
V1_CARD_DATASETS = {
    "synthseg": ("SynthSeg 10-12 test pairs (2 mm, synthetic T1, aseg30 Dice)", "synthseg-2mm-synthetic-t1",
                 "test: all ordered pairs of 3 subjects"),
    "hcp": ("HCP test pairs (2 mm, synthetic T1, 5 labels)", "hcp-labels-2mm-synthetic-t1",
            "test: all ordered pairs of 4 subjects")}
T1PV_CARD_DATASETS = {
    "synthseg": ("SynthSeg 10-12 test pairs (1 mm T1 synthesis + partial volume to 2 mm, aseg30 Dice)",
                 "synthseg-t1pv", "test: all ordered pairs of 3 subjects"),
    "hcp": ("HCP test pairs (1 mm T1 synthesis + partial volume to 2 mm, 5 labels)", "hcp-labels-t1pv",
            "test: all ordered pairs of 4 subjects")}


def staged_name(name: str) -> str:
    """The staged folder of release ``name`` (``arch.tag`` would be read as a zoo name)."""
    return name.replace(".", "-")


def release_stage(run_final: Path, arch: str, name: str, out: Path) -> Path:
    """``out/<staged_name(name)>/``: a run's final weights as architecture ``arch`` with the default
    model's preprocessing record, stored in float16 (half the package space)."""
    import torch
    from safetensors.torch import load_file

    import transreg
    from transreg.zoo.checkpoint import read_config, save_pretrained
    from transreg.zoo.factory import checkpoint_folder

    model = transreg.create_model(arch)
    model.load_state_dict(load_file(str(run_final / "model.safetensors")), strict=True)
    preprocessing = read_config(checkpoint_folder("transmorph_micro.synth_brain"))["preprocessing"]
    folder = save_pretrained(model.eval(), out / staged_name(name), preprocessing=preprocessing,
                             weights_dtype=torch.float16)
    log(f"staged {run_final} as {arch} (float16 weights) → {folder}")
    return folder


def release_tests(name: str, cwd: Path) -> None:
    """The zoo v1 test sets (the cards' datasets) for the staged checkpoint of ``name`` →
    ``RESULTS/release_<name>/{synthseg,hcp}/``."""
    for dataset, csv_name, labels, _ in BENCHMARKS:
        title = V1_CARD_DATASETS[dataset][0]
        out = RESULTS / f"release_{name}" / dataset
        cmd = [sys.executable, "-m", "transreg", "compare", "--models", "transmorph_micro.synth_brain", staged_name(name),
               "--data", str(BENCH / csv_name), "-o", str(out), "--labels", labels, "--no-progress",
               "--no-baselines", "--no-ants", "--title", f"{name} — {title}"]
        log(" ".join(cmd))
        subprocess.run(cmd, cwd=cwd, check=True)


def release_package(name: str, version: str, staged: Path, recipe: str, summary: str, t1pv_folder: str,
                    training: str, shipped: bool = True) -> None:
    """The staged checkpoint with its card (metrics: the zoo v1 test sets of
    :func:`release_tests` and the t1pv sets of ``t1pv_folder``; ``training``: the card's
    Training section) → the package (``transreg/assets/zoo/name``), or with ``shipped=False``
    the release folder ``train/releases/name/version`` (loadable from the Hub once
    ``transreg release`` has pushed it), ``zoo_cards/name.md`` and an index entry."""
    from transreg.zoo import cards
    from transreg.zoo.checkpoint import count_parameters, read_config
    from transreg.zoo.index import load_index
    from transreg.zoo.release import ship_version

    rows = [(RESULTS / f"release_{name}" / dataset / "summary.csv", *card)
            for dataset, card in V1_CARD_DATASETS.items()]
    rows += [(RESULTS / f"t1pv_{dataset}" / t1pv_folder / "summary.csv", *card)
             for dataset, card in T1PV_CARD_DATASETS.items()]
    evaluations = []
    for path, label, slug, split in rows:
        with path.open(newline="") as f:
            row = next(r for r in csv.DictReader(f) if r["method"] == staged.name)
        metrics = {"dice": float(row["dice_mean"]), "hd95": float(row["hd95_mean"]),
                   "folding": float(row["folding_percent_mean"]), "sdlogj": float(row["sdlogj_mean"]),
                   "dsc30": float(row["dsc30"])}
        evaluations.append(cards.EvalResult(label, metrics, dataset_id=slug, split=split))
    hub_id = "transreg/" + name.replace("_", "-").replace(".", "-")
    config = read_config(staged)
    card = cards.card_from_config(
        config, evaluations, name=name, num_parameters=count_parameters(staged), version=version, hf_hub_id=hub_id,
        recipe=recipe, summary=summary, intended_use=INTENDED_USE, limitations=LIMITATIONS,
        extra_sections={"Training": training,
                        "Changelog": f"- {version} ({time.strftime('%Y-%m-%d')}): first release."})
    entry = ship_version(staged, name, version, hub_id, cards.render_card(card), recipe, load_index(), shipped=shipped)
    log(f"packaged {name} {version}: {entry.local_path or entry.extra['folder']}, zoo_cards/{name}.md, index entry "
        f"({entry.extra['size']} bytes of weights)")


def compare(models: list[str], sets: list[str], baselines: bool, extra: list[str], cwd: Path,
            datasets: list[str]) -> None:
    """One ``transreg compare`` per test set and dataset → ``RESULTS/<set>_<dataset>/<tag>/``
    (``all`` with the baselines, else the models' names)."""
    for test_set in sets:
        for dataset, csv_name, labels, title in BENCHMARKS:
            if dataset not in datasets:
                continue
            pairs = BENCH / f"test_{test_set}" / csv_name
            if not pairs.is_file():
                raise SystemExit(f"zoo_v2: {pairs} is missing: run python evaluate/synth_test.py first")
            out = RESULTS / f"{test_set}_{dataset}" / ("all" if baselines else "_".join(Path(m).name for m in models))
            cmd = [sys.executable, "-m", "transreg", "compare", "--models", *models, "--data", str(pairs), "-o", str(out),
                   "--labels", labels, "--no-progress", "--title", f"zoo v2 — {title}, {SETS[test_set]}"]
            cmd += [] if baselines else ["--no-baselines", "--no-ants"]
            cmd += extra
            log(" ".join(cmd))
            subprocess.run(cmd, cwd=cwd, check=True)


def instance_opt(model: str, steps: list[int], test_set: str, out: Path, weight: float = 1.0) -> None:
    """Dice (aseg labels) and seconds per pair of ``transreg.register(..., instance_opt=N)``
    on the SynthSeg test pairs of ``test_set`` → ``out/instance_opt.csv`` and ``.md``."""
    from transreg import register
    from transreg.evaluation.dataset import read_pairs, select_labels
    from transreg.registration.io import load_image
    from transreg.metrics import dice, structure_mean
    from transreg.registration.pipeline import network_for

    pairs = read_pairs(BENCH / f"test_{test_set}" / "test_pairs.csv")
    net = network_for(model, 3)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["steps", "pair", "dice", "folding_percent", "seconds"]
    with (out / "instance_opt.csv").open("w", newline="") as f:  # rows are appended as they come
        csv.DictWriter(f, fieldnames=fields, lineterminator="\n").writeheader()
    rows = []
    for pair in pairs:  # pairs outer: a stopped run still holds whole curves
        moving, fixed = load_image(pair.moving), load_image(pair.fixed)
        ml, fl = load_image(pair.moving_labels, labels=True), load_image(pair.fixed_labels, labels=True)
        labels = select_labels("aseg30", ml.data, fl.data)
        for n in steps:
            start = time.perf_counter()
            result = register(moving, fixed, model=net, moving_labels=ml, instance_opt=n, instance_opt_weight=weight)
            seconds = time.perf_counter() - start
            score = structure_mean(dice(result.warped_labels.data, fl.data, labels=labels))
            rows.append({"steps": n, "pair": f"{Path(pair.moving).parent.name}->{Path(pair.fixed).parent.name}",
                         "dice": score, "folding_percent": result.report.get("folding_percent"), "seconds": seconds})
            with (out / "instance_opt.csv").open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields, lineterminator="\n").writerow(rows[-1])
            log(f"instance-opt {n}: {rows[-1]['pair']} Dice {score:.4f} {seconds:.1f} s")
    write_instance_table(rows, model, steps, test_set, out, weight)


def write_instance_table(rows: list[dict], model: str, steps: list[int], test_set: str, out: Path,
                         weight: float = 1.0) -> None:
    """``out/instance_opt.md`` from the rows (also from a partial ``instance_opt.csv``)."""
    import numpy as np

    done = sorted({r["pair"] for r in rows if all(any(q["pair"] == r["pair"] and int(q["steps"]) == n for q in rows)
                                                  for n in steps)})
    rows = [r for r in rows if r["pair"] in done]
    lines = [f"# Instance optimisation curve — {model}, SynthSeg test pairs ({test_set})", "",
             f"- pairs: {len(done)} ({', '.join(done)})",
             f"- command: `python evaluate/zoo_v2.py instance-opt --model {model} --steps {' '.join(map(str, steps))} "
             f"--set {test_set} --weight {weight:g}` (regulariser weight of the instance optimisation)",
             f"- date: {time.strftime('%Y-%m-%d %H:%M')}; seconds = the whole `transreg.register` of one pair "
             "(affine stage included; no warm-up run: the median absorbs the first call), measured on the shared 2-core CPU",
             "",
             "| --instance-opt N | Dice (mean ± std over pairs) | % folding | s / pair (median) |", "|---:|---|---:|---:|"]
    for n in steps:
        sel = [r for r in rows if int(r["steps"]) == n]
        d = np.array([float(r["dice"]) for r in sel])
        fold = np.mean([float(r["folding_percent"] or 0.0) for r in sel])
        seconds = np.median([float(r["seconds"]) for r in sel])
        lines.append(f"| {n} | {d.mean():.3f} ± {d.std():.3f} | {fold:.2f} | {seconds:.1f} |")
    (out / "instance_opt.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out / 'instance_opt.md'}")


def table() -> None:
    """``RESULTS/README.md``: every summary.csv's rows, one table per test set and dataset."""
    lines = ["# Zoo v2 evaluation", "", "Made by `python evaluate/zoo_v2.py` (module docstring); each folder's "
             "`summary.md` starts with its exact `transreg compare` command.", "",
             "Test images (`python evaluate/synth_test.py [--contrast t2like]`): the benchmark's test subjects "
             "(SynthSeg 10-12, 4 HCP) on the benchmark's grids and label maps, images re-made at 1 mm (T1 prior "
             "intensities drawn per subject, or mirrored for t2likepv), polynomial bias, Rician noise, then partial "
             "volume to 2 mm: a synthesis neither zoo v1 (T1 priors on the 2 mm grid) nor v2's training (random or "
             "T1-prior class intensities on the 2 mm grid) draws from. Full pipeline from native position. Seconds per "
             "pair were measured on the shared 2-core CPU while training runs used it (load average 3-16): compare "
             "them only roughly, and not with zoo v1's.", "",
             "Methods:", "",
             *(f"- `{name}`: {text}" for name, text in METHODS.items()), "",
             "Tables with more than one network add their paired differences against the first network "
             "(`paired_differences.csv` and `summary.md` in that folder: mean over pairs with a 95 % bootstrap "
             "interval); learning curves of the cascade stage: `learning_curves.png` / `.md`.", ""]
    for test_set in SETS:
        for dataset, _, _, title in BENCHMARKS:
            folder = RESULTS / f"{test_set}_{dataset}"
            rows = []
            for summary in sorted(folder.glob("*/summary.csv")):
                with summary.open(newline="") as f:
                    rows += [(summary.parent.name, r) for r in csv.DictReader(f)]
            if not rows:
                continue
            lines += [f"## {title}, {SETS[test_set]}", "", "| method | pairs | Dice | DSC30 | HD95 (mm) | % folding | "
                      "SDlogJ | s / pair | from |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
            for source, r in rows:
                lines.append(f"| {r['method']} | {r.get('pairs', '')} | {float(r['dice_mean']):.3f} ± {float(r['dice_std']):.3f} | "
                             f"{float(r['dsc30']):.3f} | {float(r['hd95_mean']):.2f} | {float(r['folding_percent_mean']):.3f} | "
                             f"{float(r['sdlogj_mean']):.3f} | {float(r['runtime_median_s']):.2f} | {source}/ |")
            lines.append("")
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {RESULTS / 'README.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--name", default="transmorph_micro.synth_brain_v1.1")
    p.add_argument("--step", type=int, default=None, help="a checkpoint step instead of final/")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "zoo_v2" / "checkpoints")
    p = sub.add_parser("compare")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--datasets", nargs="+", default=[b[0] for b in BENCHMARKS], choices=[b[0] for b in BENCHMARKS])
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--cwd", type=Path, default=REPO / "runs" / "zoo_v2" / "checkpoints",
                   help="folder the model names are resolved in (staged checkpoints)")
    p.add_argument("extra", nargs="*", help="after --: options for transreg compare")
    p = sub.add_parser("instance-opt")
    p.add_argument("--model", required=True)
    p.add_argument("--steps", nargs="+", type=int, default=[0, 25, 50, 100])
    p.add_argument("--set", default="t1pv", choices=list(SETS))
    p.add_argument("--weight", type=float, default=1.0, help="instance_opt_weight (diffusion regulariser)")
    p.add_argument("--table-only", action="store_true", help="the table from an existing (partial) instance_opt.csv")
    sub.add_parser("table")
    p = sub.add_parser("release-stage", help="a run's final weights as a zoo architecture, float16")
    p.add_argument("--run-final", type=Path, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--name", required=True, help="ARCH.TAG of the release")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "zoo_v2" / "checkpoints")
    p = sub.add_parser("release-tests", help="the zoo v1 test sets for a staged release")
    p.add_argument("--name", required=True)
    p.add_argument("--cwd", type=Path, default=REPO / "runs" / "zoo_v2" / "checkpoints")
    p = sub.add_parser("release-package", help="card, package folder, zoo card and index entry")
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="v1.0.0")
    p.add_argument("--staged", type=Path, default=None, help="default: runs/zoo_v2/checkpoints/<NAME with - for .>")
    p.add_argument("--recipe", default="train/configs/zoo_v2_cascade.yaml")
    p.add_argument("--summary", default="transmorph_micro applied twice (a recursive cascade with shared weights), "
                                        "trained end to end on 2 mm brains with synthetic T1-like intensities.")
    p.add_argument("--t1pv-folder", required=True, help="the t1pv compare folder holding the staged name's rows")
    p.add_argument("--training", default="Recipe `train/configs/zoo_v2_cascade.yaml` (train/README.md, \"Zoo v2, "
                                         "cascade stage\"): transmorph_micro.synth_brain v1.0.0 as a 2-pass recursive "
                                         "cascade, trained end to end for 400 steps on zoo v1's data. Weights stored "
                                         "in float16.", help="the card's Training section")
    p.add_argument("--folder", action="store_true",
                   help="store in train/releases/NAME/VERSION (an index \"folder\", pushed by transreg release) "
                        "instead of the package")
    args = parser.parse_args(argv)
    if args.command == "stage":
        stage(args.run, args.name, args.out, args.step)
    elif args.command == "release-stage":
        release_stage(args.run_final, args.arch, args.name, args.out)
    elif args.command == "release-tests":
        release_tests(args.name, args.cwd)
    elif args.command == "release-package":
        staged = args.staged or REPO / "runs" / "zoo_v2" / "checkpoints" / staged_name(args.name)
        release_package(args.name, args.version, staged, args.recipe, args.summary, args.t1pv_folder, args.training,
                        shipped=not args.folder)
    elif args.command == "compare":
        args.cwd.mkdir(parents=True, exist_ok=True)
        compare(args.models, args.sets, not args.no_baselines, args.extra, args.cwd, args.datasets)
    elif args.command == "instance-opt":
        out = RESULTS / "instance_opt" / (Path(args.model).name + ("" if args.weight == 1.0 else f"_weight{args.weight:g}"))
        if args.table_only:
            with (out / "instance_opt.csv").open(newline="") as f:
                write_instance_table(list(csv.DictReader(f)), args.model, args.steps, args.set, out, args.weight)
        else:
            instance_opt(args.model, args.steps, args.set, out, args.weight)
    else:
        table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
