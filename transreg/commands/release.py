"""``transreg release``: publish every unpublished zoo index entry on the Hub and record the commits."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..zoo.index import SOURCE_ROOT, index_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "release", help="push every unpublished zoo entry (config, weights, card, recipe) with its version tag",
        description="For each entry of the zoo index without a commit: push config.json, model.safetensors, "
                    "the card (README.md, validated Hub metadata with model-index metrics) and the training recipe "
                    "(recipe.yaml) to its Hub repo in one commit, tag it with the entry's version, and write the "
                    "commit, sha256, size, parameters and card metrics into the index. Published versions are "
                    "never changed or overwritten.")
    p.add_argument("--dry-run", action="store_true", help="check every entry and list what would be pushed")
    p.add_argument("--index", type=Path, default=None,
                   help=f"the zoo index file (default: $TRANSREG_ZOO_INDEX or {index_path()})")
    p.add_argument("--root", type=Path, default=SOURCE_ROOT,
                   help="source tree that recipes and unshipped release folders are relative to "
                        f"(default {SOURCE_ROOT})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..zoo.index import load_index
    from ..zoo.release import release  # imports torch (checkpoint files)

    index = load_index(args.index)
    steps = release(index, args.root, dry_run=args.dry_run)
    pushed = sum(step.action == "push" for step in steps)
    if args.dry_run:
        print(f"dry run: {pushed} of {len(steps)} entries would be pushed; nothing was changed")
    else:
        print(f"released {pushed} of {len(steps)} entries" + (f"; index {index.path}" if pushed else ""))
    return 0
