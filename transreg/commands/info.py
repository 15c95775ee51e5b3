"""``transreg info NAME``: the summary of a checkpoint's zoo card (downloads it if needed)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..zoo.cards import ModelCard
    from ..zoo.hub import ResolvedCheckpoint

_SOURCES = "a pretrained tag (arch.tag), hf-hub:ORG/NAME[@REVISION] or local-dir:/path"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a checkpoint's card: architecture, params, inputs, metrics, version",
                       description=f"Summarise a checkpoint. NAME is {_SOURCES}.")
    p.add_argument("name", metavar="NAME", help=_SOURCES)
    p.set_defaults(func=run)


def _version(resolved: "ResolvedCheckpoint", card: "ModelCard | None") -> str:
    source = resolved.source
    if source.tag is not None:
        version = source.tag.version
    elif source.kind == "hf-hub":
        version = source.revision or "main"
    else:
        version = (card.version if card else None) or "unversioned"
    return version + (f" (commit {resolved.commit})" if resolved.commit else "")


def summary(resolved: "ResolvedCheckpoint") -> list[str]:
    """The lines ``transreg info`` prints."""
    from ..zoo.cards import METRICS, format_axes, intensity_text, read_card
    from ..zoo.checkpoint import CARD_NAME, count_parameters, read_config

    config = read_config(resolved.folder)
    card_path = resolved.folder / CARD_NAME
    card = read_card(card_path) if card_path.is_file() else None
    prep = config["preprocessing"]
    weights = "model.safetensors"
    if resolved.sha256:
        weights += f" sha256 {resolved.sha256} (verified: {resolved.verified_by})"
    lines = [
        f"name:          {card.name if card else resolved.source.name}",
        f"source:        {resolved.source.name}",
        f"architecture:  {config['architecture']}",
        f"version:       {_version(resolved, card)}",
        f"parameters:    {count_parameters(resolved.folder):,}",
        f"weights:       {weights}",
        "input:",
        f"  modality:    {format_axes(prep.get('modality'))}",
        f"  spacing:     {format_axes(prep.get('spacing'), 'mm')}",
        f"  orientation: {format_axes(prep.get('orientation'))}",
        f"  size:        {format_axes(prep.get('size'), 'voxels')}",
        f"  intensity:   {intensity_text(prep.get('intensity'))}",
    ]
    if card is None:
        return lines + [f"card:          none ({CARD_NAME} missing)"]
    lines.append("metrics:" if card.evaluations else "metrics:       none recorded")
    for ev in card.evaluations:
        values = ", ".join(f"{METRICS.get(k, (k,))[0]} {v:.4g}" for k, v in ev.metrics.items())
        lines.append(f"  {ev.dataset}{f' ({ev.split})' if ev.split else ''}: {values}")
    lines += [
        f"license:       {card.license}",
        f"recipe:        {card.recipe or 'not recorded'}",
        f"card:          {card_path}",
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    from ..zoo.factory import resolve_source
    from ..zoo.hub import resolve

    print("\n".join(summary(resolve(resolve_source(args.name)))))
    return 0
