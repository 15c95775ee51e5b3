"""``transreg train``: train any registry model from a recipe and/or flags (see :data:`DESCRIPTION`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..training.config import PRECISIONS, TrainConfig, load_config, parse_set  # recipes only: no torch

#: the help text (plain text: argparse prints it as written)
DESCRIPTION = """Train any registry model from a recipe and/or flags.

  transreg train [RECIPE.yaml] [--set key=value ...] [--model ...] [--data ...] [--size ...]
                 [--steps ...] [--batch-size ...] [--lr ...] [--precision ...] [--seed ...]
                 [--threads N] [--out ...] [--resume]

Flags override the recipe, --set overrides both. Under
torchrun --nproc_per_node N -m transreg train ... it trains with DDP."""

#: flag → config key (flags left unset do not override the recipe)
FLAG_KEYS = {
    "model": "model.name",
    "data": "data.train",
    "val_data": "data.val",
    "size": "data.size",
    "steps": "run.steps",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "precision": "run.precision",
    "seed": "run.seed",
    "out": "run.out",
    "device": "run.device",
    "threads": "run.threads",
}


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``finetune``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set optim.schedule=cosine (repeatable)")
    p.add_argument("--data", help="a folder or CSV of NIfTI images, synthetic:shapes, or synthetic:labels:DIR")
    p.add_argument("--val-data", help="validation data (same forms as --data)")
    p.add_argument("--size", type=int, nargs="+", metavar="N", help="spatial size fed to the model (2 or 3 numbers)")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="pairs per step and process")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--precision", choices=PRECISIONS, help="32, bf16-mixed or 16-mixed")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (default 0: the cores not busy when the run starts; 1 on a busy machine)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (any registry architecture) from a recipe and/or flags",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="a YAML recipe, e.g. train/configs/transmorph_tiny_shapes2d.yaml")
    p.add_argument("--model", help="architecture name, e.g. transmorph_tiny")
    p.add_argument("--out", "-o", help="run folder (checkpoints, metrics, final checkpoint)")
    add_common_arguments(p)
    p.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config overrides given by flags and ``--set``."""
    out = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag, None) is not None}
    out.update(parse_set(args.overrides))
    return out


def resolve_config(recipe: str | None, overrides: dict[str, Any], resume: bool) -> TrainConfig:
    """The recipe (or, for ``--resume`` without one, the run folder's saved config.yaml)
    with the overrides applied."""
    if recipe is None and resume and "run.out" in overrides:
        saved = Path(overrides["run.out"]) / "config.yaml"
        if saved.is_file():
            recipe = str(saved)
    return load_config(recipe, overrides)


def fit(config: TrainConfig, resume: bool, **trainer_args: Any) -> int:
    """Run a :class:`~transreg.training.Trainer`; failures become one-line errors, a
    SIGTERM/Ctrl-C stop (checkpoint written) exit status 130."""
    from ..cli import CommandError
    from ..training.trainer import Trainer, TrainingError

    try:
        Trainer(config, resume=resume, **trainer_args).fit()
    except TrainingError as err:
        raise CommandError(str(err)) from None
    except KeyboardInterrupt as err:
        print(f"transreg: {err}" if str(err) else "transreg: interrupted", file=sys.stderr)
        return 130
    return 0


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args.recipe, flag_overrides(args), args.resume)
    return fit(config, args.resume, recipe=args.recipe)
