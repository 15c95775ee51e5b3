"""``transreg convert``: an original TransMorph / ViT-V-Net / VoxelMorph checkpoint → a transreg checkpoint folder."""
from __future__ import annotations

import argparse

#: the original networks ``--from`` accepts (``transreg.zoo.convert.KINDS``, which imports
#: torch; a test keeps the two equal)
ORIGINALS = ("transmorph", "transmorph_diff", "vitvnet", "voxelmorph1", "voxelmorph2")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint of the original TransMorph/ViT-V-Net/VoxelMorph code",
        description="Convert a .pth.tar of the original TransMorph repository (TransMorph, TransMorph-diff, "
        "ViT-V-Net, VoxelMorph-1/-2) into a transreg checkpoint folder that reproduces its outputs.",
    )
    p.add_argument("--from", dest="kind", required=True, choices=ORIGINALS, help="the original network")
    p.add_argument("checkpoint", help="the original checkpoint (state dict or {'state_dict': ...}), read safely")
    p.add_argument("--config", required=True,
                   help="JSON of the original config values (embed_dim, depths, ...; a fixture's official.json works)")
    p.add_argument("-o", "--out", required=True, help="output folder (config.json, model.safetensors, README.md)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..zoo.convert import convert

    out = convert(args.kind, args.checkpoint, args.config, args.out, overwrite=args.overwrite)
    print(f"wrote {out} — load it with transreg.create_model('local-dir:{out}', pretrained=True)")
    return 0
