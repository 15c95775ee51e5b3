"""``transreg pull NAME``: download a checkpoint into the Hub cache and verify its weights."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="download and verify a checkpoint (for offline use later)",
                       description="Download a checkpoint (a pretrained tag arch.tag or hf-hub:ORG/NAME[@REVISION]) "
                       "into the Hugging Face cache and verify the sha256 of its weights.")
    p.add_argument("name", metavar="NAME", help="arch.tag or hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("-o", "--out", help="also copy config.json, model.safetensors and README.md into this folder")
    p.add_argument("--force", action="store_true", help="download again even if cached (repairs a corrupted cache)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..zoo.factory import resolve_source
    from ..zoo.hub import pull

    resolved = pull(resolve_source(args.name), out_dir=args.out, force_download=args.force)
    print(f"{args.name}: {resolved.folder}")
    if resolved.commit:
        print(f"commit {resolved.commit}")
    if resolved.sha256:
        print(f"model.safetensors sha256 {resolved.sha256} (verified: {resolved.verified_by})")
    return 0
