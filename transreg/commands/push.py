"""``transreg push DIR --repo-id ORG/NAME --version vX.Y.Z``: publish a checkpoint version on the Hub."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="publish a checkpoint folder as a version on the Hugging Face Hub",
                       description="Upload config.json, model.safetensors and README.md of DIR in one commit and tag "
                       "it with the version; an existing version is never moved.")
    p.add_argument("folder", metavar="DIR", help="checkpoint folder written by transreg.save_pretrained")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub (created if missing)")
    p.add_argument("--version", required=True, help="vMAJOR.MINOR.PATCH, e.g. v1.1.0")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", help="commit message")
    p.add_argument("--tag", help="also print the zoo index entry (transreg/zoo/index.json) pinning this version "
                                 "as pretrained tag ARCH.TAG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..zoo.publish import push_to_hub

    result = push_to_hub(args.folder, args.repo_id, args.version, private=args.private, commit_message=args.message)
    print(f"pushed {args.folder} to {result.repo_id} as {result.version} (commit {result.commit})")
    print(f"model.safetensors sha256 {result.sha256}")
    print(f"load it with transreg.create_model('hf-hub:{result.repo_id}@{result.version}', pretrained=True)")
    if args.tag:
        print(f"zoo index entry (transreg/zoo/index.json): {result.index_entry(args.tag)}")
    return 0
