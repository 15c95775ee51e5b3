"""``transreg apply``: carry an image or label map through a saved displacement field."""
from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

from ..cli import CommandError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply",
        help="resample an image or label map through a saved displacement field (displacement_itk.nii.gz, ANTs Warp)",
        description="Apply an ITK displacement field (transreg register's displacement_itk.nii.gz or its output "
                    "folder, or a *Warp.nii.gz written by ANTs / ITK) to IMAGE, as SimpleITK's Resample does.",
    )
    p.add_argument("transform", type=Path, help="displacement field: 5-D NIfTI (X, Y, Z, 1, 3), LPS mm, or a "
                                                "transreg register output folder")
    p.add_argument("image", type=Path, help="image or label map (.nii / .nii.gz) on the moving image's grid")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file (.nii or .nii.gz)")
    p.add_argument("--reference", type=Path, help="image whose grid the output takes (default: the field's grid, "
                                                  "i.e. the fixed image's)")
    p.add_argument("--interp", choices=("linear", "nearest"), default="linear",
                   help="linear (float32 output, default) or nearest (keeps the dtype: use it for label maps)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..registration.apply import apply_transform
    from ..registration.io import save_image

    out: Path = args.out
    if not out.name.endswith((".nii", ".nii.gz")):
        raise CommandError(f"output {out} must end with .nii or .nii.gz")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise CommandError(f"cannot write {out}: {out.parent} is not a writable folder")
    result = apply_transform(args.transform, args.image, args.reference, args.interp, args.device)
    tmp = out.with_name(f".{uuid.uuid4().hex}.{out.name}")  # same suffix: same compression
    try:
        save_image(tmp, result.data, result.affine)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"[apply] {args.image} → {out} ({args.interp}, {result.data.dtype}, shape {result.data.shape})")
    return 0
