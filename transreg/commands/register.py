"""``transreg register``: register a moving scan onto a fixed scan and write the results."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping

from ..cli import CommandError
from . import register_batch
from ..registration.defaults import (ACCURATE_STEPS, AFFINE_MODES, DEFAULT_AFFINE_MODE, DEFAULT_MODEL, INSTANCE_OPT_WEIGHT,
                                     PRECISIONS, default_model, sample_pair)
from ..registration.outputs import check_output_dir, parse_outputs

if TYPE_CHECKING:  # the pipeline imports torch: only when a registration runs
    from ..registration.result import RegistrationResult


def default_model_note() -> str:
    """One sentence on the model used without ``--model`` (trained or not)."""
    name = default_model()
    if name == DEFAULT_MODEL:
        return (f"The default model ({DEFAULT_MODEL}) is an UNTRAINED architecture (random initialisation, "
                "near-identity deformation) until the model zoo ships a trained default checkpoint: name a "
                "trained checkpoint with --model for real deformable registration.")
    return f"The default model is the trained checkpoint {name}, shipped with transreg (no download)."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="register MOVING onto FIXED (NIfTI): warped image/labels, ITK displacement, overlay, QC report",
        description="Affine pre-alignment, then a deformable network, optionally refined on this pair. "
                    + default_model_note(),
    )
    p.add_argument("moving", nargs="?", type=Path, help="moving image (.nii / .nii.gz, 2-D or 3-D)")
    p.add_argument("fixed", nargs="?", type=Path, help="fixed image (.nii / .nii.gz); outputs live on its grid")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--sample", action="store_true",
                   help="register the sample pair shipped with transreg (with its label maps)")
    p.add_argument("--model", default=None,
                   help=f"architecture name (random init), checkpoint name, hf-hub:/local-dir: source or "
                        f"checkpoint folder (default: {default_model()})")
    p.add_argument("--moving-labels", type=Path, help="moving label map: warped to warped_labels.nii.gz")
    p.add_argument("--fixed-labels", type=Path, help="fixed label map: Dice per label in report.json")
    p.add_argument("--affine", choices=AFFINE_MODES, default=None,
                   help=f"affine pre-alignment: a trained affine network (learned), the intensity-based "
                        f"optimiser (classic), the optimiser started from both the network's estimate and the "
                        f"centres of mass (learned+classic: slower, robust to scans turned far from the "
                        f"standard position) or none (default: {DEFAULT_AFFINE_MODE})")
    p.add_argument("--affine-model", default=None, metavar="NAME",
                   help="affine network of the learned modes (default: the one the deformable checkpoint "
                        "names, else the zoo's affine checkpoint)")
    stage = p.add_mutually_exclusive_group()
    stage.add_argument("--no-affine", action="store_true", help="skip the affine pre-alignment (= --affine none)")
    stage.add_argument("--affine-only", action="store_true", help="stop after the affine stage (no network)")
    p.add_argument("--instance-opt", type=int, nargs="?", const=ACCURATE_STEPS, default=0, metavar="STEPS",
                   help=f"accurate mode: refine the network's displacement on this pair for STEPS Adam steps "
                        f"(no value: {ACCURATE_STEPS}; measured on the SynthSeg test pairs: mean Dice 0.694 -> 0.752, "
                        f"folding 0.03 %%)")
    p.add_argument("--instance-opt-weight", type=float, default=INSTANCE_OPT_WEIGHT, metavar="W",
                   help=f"weight of the diffusion regulariser in the accurate mode (default {INSTANCE_OPT_WEIGHT:g}; "
                        f"1 gives +0.01 Dice more but 1.2 %% folding at 50 steps)")
    p.add_argument("--similarity", choices=("mi", "ncc"), default="mi",
                   help="similarity of the affine stage: mutual information (default; robust to contrast "
                        "differences) or local NCC (same contrast)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="model grid spacing in mm (default: the model's, else 2 mm)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="network inference precision (bf16: faster, half the memory)")
    p.add_argument("--outputs", default=None, metavar="NAMES",
                   help="comma list of the outputs to write (default: all): warped, labels (warped labels), itk "
                        "(ITK displacement), voxel (Learn2Reg displacement), overlay (PNG), report (report.json "
                        "with folding and Dice; the QC step runs only for it)")
    p.add_argument("--uncompressed", action="store_true",
                   help="write .nii instead of .nii.gz (faster to write, larger files)")
    register_batch.add_arguments(p)
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> dict[str, Path | None]:
    if args.sample:
        if args.moving or args.fixed or args.moving_labels or args.fixed_labels:
            raise CommandError("--sample brings its own images and label maps; give no other inputs")
        return dict(sample_pair())
    if args.more_moving:
        raise CommandError("give one MOVING and one FIXED image (more moving images need --atlas)")
    if args.moving is None or args.fixed is None:
        raise CommandError("give MOVING and FIXED images (or --sample for the shipped sample pair)")
    return {"moving": args.moving, "fixed": args.fixed, "moving_labels": args.moving_labels,
            "fixed_labels": args.fixed_labels}


def register_and_write(inputs: Mapping[str, Any], out: Path, model: str | None = None,
                       outputs: Collection[str] | None = None, compressed: bool = True,
                       **options: Any) -> tuple["RegistrationResult", dict[str, Path]]:
    """Register ``inputs`` (``moving``, ``fixed``, ``moving_labels``, ``fixed_labels``) with
    ``model`` (``None``: the default), write ``outputs`` (names of
    :data:`~transreg.registration.outputs.OUTPUTS`, ``None``: all; the QC step runs only
    for ``report``) into ``out`` and print one line per stage and the written files.
    ``options`` go to :func:`transreg.register`."""
    from ..registration.pipeline import register

    check_output_dir(out)
    result = register(inputs["moving"], inputs["fixed"], model=model, moving_labels=inputs.get("moving_labels"),
                      fixed_labels=inputs.get("fixed_labels"), progress=print,
                      qc=outputs is None or "report" in outputs, **options)
    written = result.save(out, outputs, compressed)
    report = result.report
    print(f"[write] {len(written)} files ({report['runtime_s']['write']:.1f} s)")
    summary = f"folding {report['folding_percent']:.3f} %; " if "folding_percent" in report else ""
    if "dice" in report:
        summary += f"mean Dice {report['dice_before']:.3f} before → {report['dice_affine']:.3f} affine → " \
                   f"{report['dice']['mean']:.3f} final; "
    print(f"[done] {summary}outputs in {out.resolve()}/:")
    for path in written.values():
        print(f"  {path}")
    return result, written


def run(args: argparse.Namespace) -> int:
    if args.instance_opt < 0:
        raise CommandError(f"--instance-opt must be >= 0, got {args.instance_opt}")
    if args.no_affine and args.affine not in (None, "none"):
        raise CommandError(f"--no-affine and --affine {args.affine} contradict each other; give one")
    if args.affine_only and args.affine == "none":
        raise CommandError("--affine-only with --affine none leaves nothing to do")
    options = dict(affine="none" if args.no_affine else (args.affine or True), affine_only=args.affine_only,
                   affine_model=args.affine_model, instance_opt=args.instance_opt,
                   instance_opt_weight=args.instance_opt_weight, device=args.device,
                   spacing=args.spacing, similarity=args.similarity, precision=args.precision)
    if register_batch.requested(args):
        if args.outputs is not None or args.uncompressed:
            raise CommandError("--outputs and --uncompressed apply to one pair: batch mode writes every output "
                               "(--resume reads each pair's report.json)")
        return register_batch.run(args, options)
    outputs = None if args.outputs is None else parse_outputs(args.outputs)
    register_and_write(_inputs(args), args.out, args.model, outputs, not args.uncompressed, **options)
    return 0
