"""``transreg list``: architectures (or trained checkpoints) with parameter counts.

``--pretrained`` lists every version of every zoo entry from the zoo index: name,
version, parameters, headline Dice (the first evaluation of its card), weights size and
where loading it takes the weights from (package, cache or Hub), then the aliases of
renamed or retired tags.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..zoo.registry import PretrainedTag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list architectures (or --pretrained checkpoints) with parameter counts")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'transmorph*'")
    p.add_argument("--pretrained", action="store_true", help="list trained checkpoints (arch.tag)")
    p.add_argument("--ndim", type=int, default=3, choices=(2, 3), help="count parameters of the N-D model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.pretrained:  # the zoo index alone: no torch
        from ..zoo import index  # noqa: F401  (registers the pretrained entries)
        from ..zoo.registry import list_pretrained

        names = list_pretrained(args.pattern)
    else:
        from ..zoo.factory import create_model, list_models

        names = list_models(args.pattern)
    if not names:
        print(f"no {'checkpoints' if args.pretrained else 'architectures'} match {args.pattern!r}")
        return 1
    width = max(len(n) for n in names)
    if args.pretrained:
        print_pretrained(names, width)
        return 0
    print(f"{'name':<{width}}  {'params (' + str(args.ndim) + '-D)':>16}")
    for name in names:
        arch = name.split(".")[0]
        model = create_model(arch, ndim=args.ndim)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<{width}}  {params:>16,}")
    return 0


def _headline(tag: PretrainedTag) -> tuple[str, str]:
    """(Dice, dataset) of the first evaluation the index records for ``tag``."""
    for ev in tag.extra.get("evaluations", []):
        if "dice" in ev.get("metrics", {}):
            return f"{ev['metrics']['dice']:.3f}", ev["dataset"]
    return "n/a", ""


def print_pretrained(names: list[str], width: int) -> None:
    """The table of ``transreg list --pretrained``."""
    from ..zoo import index
    from ..zoo.hub import location
    from ..zoo.registry import list_aliases, pretrained_versions

    print(f"{'name':<{width}}  {'version':<8}  {'parameters':>10}  {'Dice':>5}  {'size':>8}  from")
    datasets: list[str] = []
    for name in names:
        for tag in pretrained_versions(name):
            dice, dataset = _headline(tag)
            if dataset and dataset not in datasets:
                datasets.append(dataset)
            params = f"{tag.extra['parameters']:,}" if "parameters" in tag.extra else "?"
            size = f"{tag.extra['size'] / 1e6:.1f} MB" if "size" in tag.extra else "?"
            where = location(tag)
            hub = f" (hf-hub:{tag.hf_hub_id}, commit {tag.revision[:12]})" if tag.revision else " (not on the Hub yet)"
            default = ", default" if name == index.DEFAULT_CHECKPOINT and tag == pretrained_versions(name)[-1] else ""
            print(f"{name:<{width}}  {tag.version:<8}  {params:>10}  {dice:>5}  {size:>8}  {where}{hub}{default}")
    for old, (target, reason) in list_aliases().items():
        print(f"{old} → {target} (deprecated alias: {reason})")
    if datasets:
        print("Dice: " + "; ".join(datasets))
