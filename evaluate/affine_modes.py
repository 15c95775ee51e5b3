"""Dice after the affine stage and seconds per pair for each affine mode of `transreg register`.

Pairs: every ordered pair of the SynthSeg test subjects 10-12 (6 pairs), in native head
position at 2 mm with T1-like synthetic intensities (as ``evaluate/build_data.py`` makes
them, fixed seed per subject), in two variants: whole heads (every label, extra-cerebral
tissue included) and skull-stripped brains (aseg labels < 100). Each pair is run as given
("native") and with the moving image rotated by 30° (``--rotations``: any angles) about a
random axis through its centre (its header moved: the voxels are untouched; one seeded
axis per pair).
``--pairs-csv`` adds the pairs of a pairs CSV as a third variant, ``csv`` (for example
``data/bench_2mm/test_pairs.csv``: zoo v1's SynthSeg test pairs as ``evaluate/build_data.py``
makes them, where the learned stage alone fails on SynthSeg 11).

For each mode (none, classic, learned, learned+classic) `transreg.register(...,
affine=MODE, affine_only=True)` runs on the pair; Dice is the mean over the 30 aseg
evaluation structures of the moving labels warped (nearest) by the affine stage against
the fixed labels; "seconds" is the report's affine-stage time (model loading included).
A pair *fails* when its Dice after the affine stage is below the unregistered Dice of the
native pair (moving labels resampled onto the fixed grid by the identity world map).

    OMP_NUM_THREADS=2 python evaluate/affine_modes.py [--affine-model runs/affine_micro/staged]
    OMP_NUM_THREADS=1 python evaluate/affine_modes.py --rotations 0 30 60 --pairs-csv data/bench_2mm/test_pairs.csv \
        --out evaluate/results/affine_v2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "evaluate"))

from build_data import T1Priors, _load_int, _subject_seed, _subsample_and_crop, synthesise  # noqa: E402

import transreg  # noqa: E402
from transreg.data.affine_pairs import BRAIN_LABEL_LIMIT  # noqa: E402
from transreg.metrics import aseg_eval_labels, dice, structure_mean  # noqa: E402
from transreg.registration.io import Image  # noqa: E402
from transreg.registration.preprocess import Grid, coordinates, sample, voxel_map  # noqa: E402

MODES = ("none", "classic", "learned", "learned+classic")
SUBJECTS = ("10", "11", "12")
ROTATION_DEG = 30.0
TIE_DICE = 0.005  # the default mode: the fastest of those within this of the best mean Dice at every rotation
COMMAND = "OMP_NUM_THREADS=2 python evaluate/affine_modes.py"


def subject(labels_dir: Path, priors: T1Priors, name: str, variant: str) -> tuple[Image, Image]:
    """``(image, labels)`` of SynthSeg subject ``name`` at 2 mm, native position."""
    labels, affine = _load_int(labels_dir / f"training_seg_{name}.nii.gz")
    if variant == "brain":
        labels[labels >= BRAIN_LABEL_LIMIT] = 0
    (labels, classes), affine = _subsample_and_crop([labels, priors.class_map(labels)], affine, labels > 0, 2)
    image = synthesise(classes, priors, _subject_seed(f"synthseg_{name}_{variant}"))
    return (Image(image.astype(np.float32), affine, f"{name}_{variant}"),
            Image(labels.astype(np.int16), affine, f"{name}_{variant}_labels"))


def rotated(image: Image, axis: np.ndarray, degrees: float) -> Image:
    """``image`` with its header rotated by ``degrees`` about ``axis`` through its centre."""
    from scipy.spatial.transform import Rotation

    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()
    centre = image.affine[:3, :3] @ ((np.asarray(image.shape) - 1) / 2) + image.affine[:3, 3]
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    return Image(image.data, turn @ image.affine, image.name)


def aseg_dice(moving_labels: np.ndarray, fixed_labels: np.ndarray) -> float:
    return structure_mean(dice(moving_labels, fixed_labels, labels=aseg_eval_labels()))


def unregistered(moving: Image, fixed: Image) -> np.ndarray:
    """Moving labels on the fixed grid through the identity world map (nearest)."""
    coords = coordinates(voxel_map(Grid.of(fixed), Grid.of(moving)), fixed.shape)
    data = torch.as_tensor(moving.data.astype(np.int64))[None, None].float()
    return sample(data, coords, mode="nearest")[0, 0].numpy().astype(np.int64)


def csv_pairs(path: Path) -> list[tuple[str, str, tuple[Image, Image], tuple[Image, Image]]]:
    """``(moving name, fixed name, (image, labels), (image, labels))`` of a pairs CSV
    (``moving,fixed,moving_labels,fixed_labels``, paths relative to the CSV's folder)."""
    import csv

    from transreg.registration.io import load_image

    def loaded(row: dict, role: str) -> tuple[Image, Image]:
        return (load_image(path.parent / row[role]), load_image(path.parent / row[f"{role}_labels"], labels=True))

    with path.open() as f:
        return [(Path(r["moving"]).parent.name, Path(r["fixed"]).parent.name, loaded(r, "moving"), loaded(r, "fixed"))
                for r in csv.DictReader(f)]


def synthseg_pairs(labels_dir: Path, variant: str) -> list[tuple[str, str, tuple[Image, Image], tuple[Image, Image]]]:
    """Every ordered pair of the SynthSeg test subjects in ``variant`` (head or brain)."""
    priors = T1Priors(labels_dir)
    data = {s: subject(labels_dir, priors, s, variant) for s in SUBJECTS}
    return [(m, f, data[m], data[f]) for m in SUBJECTS for f in SUBJECTS if m != f]


def run(labels_dir: Path, modes: tuple[str, ...], affine_model: str | None, rotations: tuple[float, ...],
        rotated_modes: tuple[str, ...], pairs_csv: Path | None = None) -> dict:
    rng = np.random.default_rng(20)
    rows = []
    variants = {"head": lambda: synthseg_pairs(labels_dir, "head"), "brain": lambda: synthseg_pairs(labels_dir, "brain")}
    if pairs_csv is not None:
        variants["csv"] = lambda: csv_pairs(pairs_csv)
    for variant, pairs in variants.items():
        for m, f, (moving, moving_labels), (fixed, fixed_labels) in pairs():
            base = aseg_dice(unregistered(moving_labels, fixed_labels), fixed_labels.data)
            axis = rng.normal(size=3)
            for rotation in rotations:
                mov, mov_labels = (rotated(moving, axis, rotation), rotated(moving_labels, axis, rotation)) \
                    if rotation else (moving, moving_labels)
                row = {"variant": variant, "moving": m, "fixed": f, "rotation_deg": rotation,
                       "dice_unregistered_native": round(base, 4)}
                for mode in (rotated_modes if rotation else modes):
                    if mode == "none":
                        row["dice_none"] = round(aseg_dice(unregistered(mov_labels, fixed_labels), fixed_labels.data), 4)
                        continue
                    start = time.perf_counter()
                    result = transreg.register(mov, fixed, affine=mode, affine_only=True, affine_model=affine_model,
                                               moving_labels=mov_labels, fixed_labels=fixed_labels, device="cpu")
                    row[f"wall_{mode}"] = round(time.perf_counter() - start, 3)
                    row[f"dice_{mode}"] = round(aseg_dice(result.warped_labels.data, fixed_labels.data), 4)
                    row[f"seconds_{mode}"] = result.report["runtime_s"]["affine"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "summary": summarise(rows, modes)}


def merge(rows: list[dict], earlier: list[dict], modes: tuple[str, ...]) -> tuple[str, ...]:
    """Add to ``rows`` the other modes' numbers of the same pairs from ``earlier`` rows; → all modes."""
    key = ("variant", "moving", "fixed", "rotation_deg")
    by_pair = {tuple(r[k] for k in key): r for r in earlier}
    extra = [m for m in MODES if m not in modes and any(f"dice_{m}" in r for r in earlier)]
    for row in rows:
        old = by_pair.get(tuple(row[k] for k in key), {})
        row.update({k: v for k, v in old.items() if any(k.endswith(f"_{m}") for m in extra)})
    return tuple(m for m in MODES if m in modes or m in extra)


def summarise(rows: list[dict], modes: tuple[str, ...]) -> dict:
    summary = {}
    for variant in [*dict.fromkeys(r["variant"] for r in rows), "all"]:
        for rotation in sorted({r["rotation_deg"] for r in rows}):
            pairs = [r for r in rows if (variant == "all" or r["variant"] == variant) and r["rotation_deg"] == rotation]
            entry = {}
            for mode in modes:
                chosen = [r for r in pairs if f"dice_{mode}" in r]
                if not chosen:
                    continue
                values = np.array([r[f"dice_{mode}"] for r in chosen])
                entry[mode] = {"pairs": len(chosen),
                               "dice_mean": round(float(values.mean()), 4), "dice_std": round(float(values.std()), 4),
                               "failures": int(sum(r[f"dice_{mode}"] < r["dice_unregistered_native"] for r in chosen))}
                if mode != "none":
                    seconds = np.array([r[f"seconds_{mode}"] for r in chosen])
                    entry[mode]["seconds_median"] = round(float(np.median(seconds)), 3)
            summary[f"{variant}/rot{int(rotation)}"] = entry
    return summary


def default_mode(summary: dict) -> tuple[str, str]:
    """The fastest mode whose mean Dice is within :data:`TIE_DICE` of the best on the native
    pairs and on every rotation up to :data:`ROTATION_DEG` (the range the default must
    handle; a mode that fails on such turned scans is not a default), and the sentence
    that says why."""
    turned = [key for key in summary if key.startswith("all/rot")]
    rotations = [key for key in turned if int(key[7:]) <= ROTATION_DEG] or turned
    timed = [m for m in summary[rotations[0]] if m != "none" and all(m in summary[key] for key in rotations)]
    best = {key: max(summary[key][m]["dice_mean"] for m in timed) for key in rotations}
    close = [m for m in timed if all(summary[key][m]["dice_mean"] >= best[key] - TIE_DICE for key in rotations)]
    chosen = min(close, key=lambda m: summary[rotations[0]][m]["seconds_median"])
    bests = ", ".join(f"{best[key]:.3f} ({key[4:].replace('rot', '')}°)" for key in rotations)
    return chosen, (f"best mean Dice over all pairs {bests}; modes within {TIE_DICE} of it at each of "
                    f"these rotations: "
                    f"{', '.join(close)}; the fastest of them: {chosen}")


def results_command(path: Path) -> str:
    """The command that made an earlier results file (recorded in it)."""
    return json.loads(path.read_text()).get("command", f"# (the run that wrote {path})")


def write_page(results: dict, out: Path, command: str) -> None:
    """``out/README.md``: the command, the table per variant and rotation, the default mode."""
    lines = ["# Affine modes of `transreg register`\n", f"```bash\n{command}\n```\n",
             __doc__.split("\n\n", 1)[1].split("\n    OMP")[0].strip() + "\n",
             f"Affine model: `{results['affine_model'] or 'the zoo default'}`; {results['threads']} threads; "
             f"measured under load (load average {results['load_average'][0]:.1f} on 2 cores shared with "
             "training runs): seconds are upper bounds.\n",
             "| pairs | moving rotated | mode | Dice mean ± std | failures | median s |",
             "|---|---:|---|---:|---:|---:|"]
    for key, entry in results["summary"].items():
        variant, rotation = key.split("/")
        for mode, row in entry.items():
            seconds = f"{row['seconds_median']:.2f}" if "seconds_median" in row else "–"
            failures = f"{row['failures']} of {row['pairs']}"
            lines.append(f"| {variant} | {rotation[3:]}° | {mode} | {row['dice_mean']:.3f} ± {row['dice_std']:.3f} | "
                         f"{failures} | {seconds} |")
    chosen, why = default_mode(results["summary"])
    lines += ["", f"Default mode (`DEFAULT_AFFINE_MODE`): **{chosen}** ({why}).", "",
              "Per-pair numbers: `affine_modes.json`."]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=REPO.parent / "shared" / "data" / "synthseg_labelmaps")
    parser.add_argument("--out", type=Path, default=REPO / "evaluate" / "results" / "affine_v1")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rotations", nargs="+", type=float, default=[0.0, ROTATION_DEG],
                        help="degrees of rotation applied to the moving image (0: the native pair)")
    parser.add_argument("--rotated-modes", nargs="+", choices=MODES, default=None,
                        help="the modes run on the rotated pairs (default: --modes)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier affine_modes.json (same pairs) whose modes are kept, e.g. classic")
    parser.add_argument("--pairs-csv", type=Path, default=None,
                        help="more pairs (variant 'csv'): a CSV moving,fixed,moving_labels,fixed_labels with paths "
                             "relative to it, e.g. data/bench_2mm/test_pairs.csv (zoo v1's SynthSeg test pairs)")
    parser.add_argument("--affine-model", default=None,
                        help="affine network of the learned modes (default: the zoo's affine checkpoint)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    modes = tuple(args.modes)
    results = run(args.labels, modes, args.affine_model, tuple(args.rotations), tuple(args.rotated_modes or modes),
                  args.pairs_csv)
    if args.reuse is not None:
        modes = merge(results["rows"], json.loads(args.reuse.read_text())["rows"], modes)
        results["summary"] = summarise(results["rows"], modes)
    results["affine_model"] = args.affine_model
    results["command"] = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    results["threads"] = torch.get_num_threads()
    results["load_average"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "affine_modes.json").write_text(json.dumps(results, indent=1) + "\n")
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    if args.reuse is not None:
        command = f"{results_command(args.reuse)}\n{command}"
    write_page(results, args.out, command)
    for key, entry in results["summary"].items():
        print(key, json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
