"""The learned affine stage's checkpoint: stage it from a training run, then package it
with its zoo card once ``evaluate/affine_modes.py`` has measured it.

    transreg train train/configs/affine_micro_synth_brain.yaml --out runs/affine_micro
    python train/affine_v1.py stage                       # runs/affine_micro/final → runs/affine_micro/staged
    OMP_NUM_THREADS=2 python evaluate/affine_modes.py --affine-model runs/affine_micro/staged
    python train/affine_v1.py package                     # card, transreg/assets/zoo/, zoo_cards/, index entry

``stage`` writes the trained weights with the input space the learned stage needs
(RAS, the recipe's spacing and size, percentile intensities as ``transreg register``
normalises them). ``package`` refuses to ship a run whose learned stage makes any test
pair worse than unregistered, or whose ``learned+classic`` loses more than 0.01 Dice to
``classic`` (``evaluate/results/affine_v1/affine_modes.json``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "affine_micro.synth_brain"
VERSION = "v1.0.0"
HUB_ID = "transreg/affine-micro-synth-brain"
RECIPE = "train/configs/affine_micro_synth_brain.yaml"
MODALITY = "brain MR, whole head or skull-stripped, any contrast (trained on synthetic contrasts)"
INTENDED_USE = (
    "Affine pre-alignment of two 3-D brain MR images (whole heads or skull-stripped brains) in any head "
    "position, before deformable registration: `transreg register --affine learned` (or `learned+classic`, "
    "the network refined by a few steps of the classical optimiser). Research and teaching. Not a medical device."
)
LIMITATIONS = (
    "Trained on 7 subjects' label maps (SynthSeg 01-07) with synthetic random contrasts, not on scanner images. "
    "Rotations beyond the training range (moving ±30° about each axis, fixed ±10°) and flipped or mislabelled "
    "headers are out of scope. A small network sized for CPU training on a 6 mm grid: refine with "
    "`learned+classic` where the last millimetre matters. Check the overlay of every result."
)


def stage(run: Path, checkpoint: Path, out: Path) -> None:
    import yaml

    from transreg.zoo.checkpoint import save_pretrained
    from transreg.zoo.factory import load_checkpoint

    config = yaml.safe_load((run / "config.yaml").read_text())
    model = load_checkpoint(checkpoint)
    preprocessing = {"modality": MODALITY, "spacing": config["data"]["spacing"], "size": config["data"]["size"],
                     "orientation": "RAS", "intensity": {"method": "percentile", "lower": 0.5, "upper": 99.5}}
    if out.exists():
        shutil.rmtree(out)
    save_pretrained(model, out, preprocessing=preprocessing)
    print(f"staged {checkpoint} → {out}")


def _evaluations(results: dict) -> list:
    from transreg.zoo.cards import EvalResult

    out = []
    for variant, label in (("head", "whole heads"), ("brain", "skull-stripped brains")):
        for rotation, where in ((0, "native head position"), (30, "moving rotated by 30°")):
            entry = results["summary"][f"{variant}/rot{rotation}"]
            metrics = {"dice": entry["learned"]["dice_mean"], "dice_unregistered": entry["none"]["dice_mean"],
                       "failures": entry["learned"]["failures"], "seconds": entry["learned"]["seconds_median"]}
            for mode, key in (("classic", "classic"), ("learned+classic", "learned_classic")):
                if mode in entry:
                    metrics.update({f"dice_{key}": entry[mode]["dice_mean"], f"seconds_{key}": entry[mode]["seconds_median"]})
            out.append(EvalResult(f"SynthSeg 10-12 test pairs, {label}, {where} (2 mm, synthetic T1, aseg30 Dice "
                                  f"after the affine stage)", metrics, dataset_id="synthseg-2mm-synthetic-t1",
                                  split="test: all 6 ordered pairs of 3 subjects"))
    return out


def _training_text(run: Path) -> str:
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    val = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines() if line.strip()]
    curve = ", ".join(f"{v['step']}: {v['val_dice']:.3f}" for v in val)
    d, o = config["data"], config["optim"]
    return "\n".join([
        f"- recipe: `{RECIPE}`; `transreg train {RECIPE}` then `python train/affine_v1.py stage`",
        f"- data: `{d['train']}` (validation `{d['val']}`), pairs of two subjects on {d['size']} RAS grids of "
        f"{d['spacing'][0]} mm, moving ±{d['affine_degrees']}° / ±{100 * d['affine_scale']:.0f} % / "
        f"±{d['affine_shift'] * d['spacing'][0]:.0f} mm, fixed a third of that, whole heads or skull-stripped, "
        "random contrasts (`transreg/data/affine_pairs.py`)",
        f"- loss: Dice on 12 coarse label groups; Adam lr {o['lr']} ({o['schedule']}), batch {d['batch_size']}, "
        f"{config['run']['steps']} steps, seed {config['run']['seed']}",
        f"- validation Dice (12 groups, 16 synthetic validation pairs, step: Dice): {curve}",
    ])


def package(run: Path, staged: Path, results_path: Path) -> None:
    from transreg.zoo.cards import card_from_config, render_card
    from transreg.zoo.checkpoint import count_parameters, read_config, sha256_file
    from transreg.zoo.release import package_checkpoint

    results = json.loads(results_path.read_text())
    for key, entry in results["summary"].items():
        if entry["learned"]["failures"]:
            sys.exit(f"affine_v1: the learned stage fails on {entry['learned']['failures']} {key} pairs: not shipped")
        if "classic" in entry and entry["learned+classic"]["dice_mean"] < entry["classic"]["dice_mean"] - 0.01:
            sys.exit(f"affine_v1: learned+classic Dice {entry['learned+classic']['dice_mean']} < classic "
                     f"{entry['classic']['dice_mean']} - 0.01 on {key}: not shipped")
    config = read_config(staged)
    modes = ("none", "classic", "learned", "learned+classic")
    table = ["| pairs | moving rotated | " + " | ".join(f"Dice {m}" for m in modes) + " | failures learned | " +
             " | ".join(f"s {m}" for m in modes[1:]) + " |", "|---|---:" + "|---:" * 8 + "|"]
    for key, entry in results["summary"].items():
        variant, rot = key.split("/")
        dice = [f"{entry[m]['dice_mean']:.3f}" if m in entry else "–" for m in modes]
        seconds = [f"{entry[m]['seconds_median']:.2f}" if m in entry else "–" for m in modes[1:]]
        table.append(f"| {variant} | {rot[3:]}° | " + " | ".join(dice) + f" | {entry['learned']['failures']} | "
                     + " | ".join(seconds) + " |")
    card = card_from_config(
        config, _evaluations(results), name=NAME, num_parameters=count_parameters(staged), version=VERSION,
        hf_hub_id=HUB_ID, recipe=RECIPE,
        summary="The learned affine stage of `transreg register`: a keypoint detector applied to each image and the "
                "least-squares affine between the two keypoint sets, trained on real anatomy under large random "
                "affines with random contrasts.",
        intended_use=INTENDED_USE, limitations=LIMITATIONS,
        extra_sections={"Training": _training_text(run),
                        "Affine modes compared": "Mean aseg30 Dice after the affine stage and median seconds per pair "
                        f"(`evaluate/affine_modes.py`, {results['threads']} threads, measured under load "
                        f"{results['load_average'][0]:.1f}):\n\n" + "\n".join(table)})
    target = package_checkpoint(staged, NAME, render_card(card))
    print(f"    PretrainedTag(\n        arch=\"affine_micro\", tag=\"synth_brain\", hf_hub_id={HUB_ID!r},\n"
          f"        version={VERSION!r}, revision=None,\n        sha256={sha256_file(target / 'model.safetensors')!r},\n"
          f"        local_path=\"assets/zoo/{NAME}\",\n    ),")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("stage", "package"))
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "affine_micro")
    parser.add_argument("--checkpoint", type=Path, default=None, help="stage: the run's checkpoint (default: RUN/final)")
    parser.add_argument("--out", type=Path, default=None, help="stage: the staged folder (default: RUN/staged)")
    parser.add_argument("--results", type=Path, default=REPO / "evaluate" / "results" / "affine_v1" / "affine_modes.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.stage == "stage":
        stage(args.run, args.checkpoint or args.run / "final", args.out or args.run / "staged")
    else:
        package(args.run, args.run / "staged", args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
