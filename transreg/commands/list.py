"""``transreg list``: architectures (or trained checkpoints) with parameter counts."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list architectures (or --pretrained checkpoints) with parameter counts")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'transmorph*'")
    p.add_argument("--pretrained", action="store_true", help="list trained checkpoints (arch.tag)")
    p.add_argument("--ndim", type=int, default=3, choices=(2, 3), help="count parameters of the N-D model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.pretrained:  # the zoo index alone: no torch
        from ..zoo import index  # noqa: F401  (registers the pretrained entries)
        from ..zoo.registry import list_pretrained, pretrained_versions

        names = list_pretrained(args.pattern)
    else:
        from ..zoo.factory import create_model, list_models

        names = list_models(args.pattern)
    if not names:
        print(f"no {'checkpoints' if args.pretrained else 'architectures'} match {args.pattern!r}")
        return 1
    width = max(len(n) for n in names)
    if args.pretrained:
        print(f"{'name':<{width}}  {'version':<8}  source")
        for name in names:
            for tag in pretrained_versions(name):
                where = "bundled, " if tag.local_path else ""
                hub = f"({tag.revision[:12]})" if tag.revision else "(not pushed to the Hub yet)"
                print(f"{name:<{width}}  {tag.version:<8}  {where}hf-hub:{tag.hf_hub_id}@{tag.version} {hub}")
        return 0
    print(f"{'name':<{width}}  {'params (' + str(args.ndim) + '-D)':>16}")
    for name in names:
        arch = name.split(".")[0]
        model = create_model(arch, ndim=args.ndim)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<{width}}  {params:>16,}")
    return 0
