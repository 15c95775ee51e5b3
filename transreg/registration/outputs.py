"""Output folders that never hold half-written results.

Files are written into a temporary folder inside the output folder and moved into place
only when every one of them succeeded; on failure nothing is left behind (and a folder
that did not exist before is removed again).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["OutputError", "check_output_dir", "write_atomically"]


class OutputError(ValueError):
    """The output folder cannot be written."""


def check_output_dir(out: Path) -> bool:
    """Raise :class:`OutputError` unless ``out`` is (or can be created as) a writable
    folder; returns whether it does not exist yet. Creates nothing."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"output folder {out} exists and is not a folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"output folder {out} is not writable")
        return False
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output folder {out}: {parent} is not writable")
    return True


def write_atomically(out: str | os.PathLike[str], write: Callable[[Path], list[str]]) -> dict[str, Path]:
    """Call ``write(tmp)`` (which writes files into ``tmp`` and returns their names), then
    move those files into ``out`` → ``{name: path}``. ``OSError`` s become
    :class:`OutputError`; any failure leaves ``out`` as it was."""
    out = Path(out)
    created = check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".transreg-", dir=out))
    except OSError as err:
        raise OutputError(f"cannot write to output folder {out}: {err.strerror or err}") from None
    try:
        names = write(tmp)
        for name in names:
            os.replace(tmp / name, out / name)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write to output folder {out}: {err.strerror or err}") from None
        raise
    tmp.rmdir()
    return {name: out / name for name in names}
