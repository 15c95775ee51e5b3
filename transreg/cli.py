"""The ``transreg`` command line (also ``python -m transreg``).

Each subcommand lives in ``transreg/commands/<name>.py`` and exposes
``add_parser(subparsers)``, which registers the subcommand with ``func=run``.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings
from typing import Any, Sequence

COMMANDS = ("list", "register", "demo", "convert", "info", "pull", "push", "release", "train", "finetune", "evaluate",
            "compare", "apply")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transreg", description="Deep-learning deformable image registration model zoo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"transreg.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: stop like Ctrl-C (temporary outputs are cleaned up on the way out)."""
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _show_warning(message: Any, category: type, *_: Any, **__: Any) -> None:
    """Warnings (e.g. a deprecated model name) as one line on stderr."""
    print(f"transreg: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Errors print one line (exit 2); Ctrl-C or SIGTERM prints one line
    and exits 130 (a command's temporary outputs are removed on the way out)."""
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        print(f"transreg {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, PermissionError, KeyError) as err:
        print(f"transreg {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
