"""The ``transreg`` command line (also ``python -m transreg``).

Each subcommand lives in ``transreg/commands/<name>.py`` and exposes
``add_parser(subparsers)``, which registers the subcommand with ``func=run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS = ("list", "register", "demo", "convert", "info", "pull", "push", "train", "finetune", "evaluate", "compare", "apply")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transreg", description="Deep-learning deformable image registration model zoo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"transreg.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, FileNotFoundError, PermissionError, KeyError) as err:
        print(f"transreg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
