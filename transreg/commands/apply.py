"""``transreg apply``: carry an image or label map through saved transforms (displacement
fields, ANTs / ITK affine files), in antsApplyTransforms' order."""
from __future__ import annotations

import argparse
import os
import re
import uuid
from pathlib import Path

from ..cli import CommandError

USAGE = ("transreg apply [-h] (TRANSFORM | -t TRANSFORM [-t TRANSFORM ...]) IMAGE -o OUT [--reference REFERENCE] "
         "[--interp {linear,nearest}] [--device DEVICE]")
_INVERSE = re.compile(r"^\[(.+),\s*([01])\s*\]$")  # antsApplyTransforms' [file,useInverse]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply",
        usage=USAGE,
        help="resample an image or label map through saved transforms (displacement_itk.nii.gz, ANTs Warp and "
             "GenericAffine.mat)",
        description="Apply ITK transforms to IMAGE, as antsApplyTransforms and SimpleITK's Resample do: a "
                    "displacement field (transreg register's displacement_itk.nii.gz or its output folder, or a "
                    "*Warp.nii.gz written by ANTs / ITK) or an ITK linear transform file (ANTs' 0GenericAffine.mat, "
                    ".txt, .tfm), or a chain of them with -t in antsApplyTransforms' order: "
                    "`-t 1Warp.nii.gz -t 0GenericAffine.mat` takes each output point through the warp, then the "
                    "affine, into the image.",
    )
    p.add_argument("first", metavar="TRANSFORM", help="one transform file (displacement field: 5-D NIfTI, LPS mm, "
                                                      "or a transreg register output folder; or .mat/.txt/.tfm); "
                                                      "leave it out when -t is given")
    p.add_argument("image", metavar="IMAGE", nargs="?",
                   help="image or label map (.nii / .nii.gz) on the moving image's grid")
    p.add_argument("-t", "--transform", dest="transforms", action="append", metavar="TRANSFORM",
                   help="a transform of the chain, repeatable, in antsApplyTransforms' order (the output point goes "
                        "through the first listed first); [FILE,1] inverts a linear transform file")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file (.nii or .nii.gz)")
    p.add_argument("--reference", type=Path, help="image whose grid the output takes (default: the grid of the "
                                                  "first displacement field, i.e. the fixed image's; required when "
                                                  "no transform is a displacement field)")
    p.add_argument("--interp", choices=("linear", "nearest"), default="linear",
                   help="linear (float32 output, default) or nearest (keeps the dtype: use it for label maps)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def _transform_spec(text: str) -> str | tuple[str, bool]:
    match = _INVERSE.match(text.strip())
    return (match.group(1).strip(), match.group(2) == "1") if match else text


def run(args: argparse.Namespace) -> int:
    from ..registration.apply import apply_transform
    from ..registration.io import save_image

    if args.transforms:
        if args.image is not None:
            raise CommandError("give the transforms either as TRANSFORM or with -t, not both "
                               f"(got {args.first!r} and {args.image!r} besides -t)")
        transforms, image = [_transform_spec(t) for t in args.transforms], Path(args.first)
    else:
        if args.image is None:
            raise CommandError("IMAGE is missing: transreg apply TRANSFORM IMAGE -o OUT, or "
                               "transreg apply -t TRANSFORM [-t TRANSFORM ...] IMAGE -o OUT")
        transforms, image = [_transform_spec(args.first)], Path(args.image)
    out: Path = args.out
    if not out.name.endswith((".nii", ".nii.gz")):
        raise CommandError(f"output {out} must end with .nii or .nii.gz")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise CommandError(f"cannot write {out}: {out.parent} is not a writable folder")
    result = apply_transform(transforms, image, args.reference, args.interp, args.device)
    tmp = out.with_name(f".{uuid.uuid4().hex}.{out.name}")  # same suffix: same compression
    try:
        save_image(tmp, result.data, result.affine)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"[apply] {image} → {out} ({args.interp}, {result.data.dtype}, shape {result.data.shape})")
    return 0
