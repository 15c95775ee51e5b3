"""``transreg demo``: register the sample pair shipped with transreg using the default model.

No inputs and no network: the sample pair (``transreg/assets/sample``, two SynthSeg
subjects at 2 mm with synthetic T1-like intensities, see its NOTICE) and the default
checkpoint (:func:`transreg.registration.defaults.default_model`) ship inside the package. Writes what
``transreg register`` writes and prints a short summary.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..registration.defaults import DEFAULT_MODEL, SAMPLE_DIR, default_model, sample_pair
from .register import register_and_write

DEFAULT_OUT = Path("transreg-demo")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="register the shipped sample pair with the default model (no inputs, no network)",
        description="Register the sample pair shipped with transreg (two brains at 2 mm, synthetic T1-like "
                    "intensities on real anatomy, with label maps) using the default model, and write the "
                    "outputs of `transreg register`: warped image and labels, ITK displacement field, overlay "
                    "PNG and report.json with Dice.")
    p.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="model grid spacing in mm (default: the model's); coarser is faster")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = default_model()
    untrained = model == DEFAULT_MODEL
    print(f"transreg demo: registering the sample pair in {SAMPLE_DIR} with {model}")
    result, _ = register_and_write(sample_pair(), args.out, None, device=args.device, spacing=args.spacing)
    report = result.report
    dice = report["dice"]["mean"]
    info = report["model"]
    print("\nsummary")
    print(f"  model     {info['name']} ({info['parameters']:,} parameters, {info['version']})")
    print(f"  Dice      {report['dice_before']:.3f} unregistered → {report['dice_affine']:.3f} affine → "
          f"{dice:.3f} final (mean over the labels of both maps)")
    print(f"  folding   {report['folding_percent']:.3f} % of voxels with Jacobian determinant <= 0")
    stages = report["runtime_s"]
    print(f"  runtime   {sum(stages.values()):.1f} s in the stages on {report['device']} ("
          + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in stages.items()) + ")")
    print("            the whole command, start-up included: python evaluate/bench_register.py (README, 'Speed')")
    print(f"  outputs   {args.out.resolve()}/ (open overlay.png; report.json has every number)")
    if untrained:
        print(f"  NOTE: {model} is UNTRAINED (random initialisation): the deformable stage does almost nothing "
              "and the result is the affine alignment. Name a trained checkpoint with "
              "`transreg register --model ARCH.TAG` (`transreg list --pretrained`).")
    return 0
