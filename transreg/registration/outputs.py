"""The outputs of a registration by name, and output folders that never hold
half-written results.

Files are written into a temporary folder inside the output folder and moved into place
only when every one of them succeeded; on failure or interruption (Ctrl-C, SIGTERM)
nothing is left behind (and a folder that did not exist before is removed again). A
rerun into the same folder replaces the whole set of outputs: files of the set that the
new run does not write are removed. Imports no torch (the command line checks
``--outputs`` with it).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Collection, Iterable

__all__ = ["OUTPUTS", "OUTPUT_FILES", "ANY_OUTPUT_FILE", "OutputError", "check_output_dir", "output_names", "parse_outputs",
           "write_atomically"]

#: output name (``transreg register --outputs``) → file; NIfTI files end in ``.nii`` when uncompressed
OUTPUTS = {
    "warped": "warped.nii.gz",
    "labels": "warped_labels.nii.gz",
    "itk": "displacement_itk.nii.gz",
    "voxel": "displacement_voxel.nii.gz",
    "overlay": "overlay.png",
    "report": "report.json",
}
OUTPUT_FILES = tuple(OUTPUTS.values())
#: every file name a registration may write (compressed or not): a rerun removes those it does not write
ANY_OUTPUT_FILE = OUTPUT_FILES + tuple(f.replace(".nii.gz", ".nii") for f in OUTPUT_FILES if f.endswith(".nii.gz"))


def parse_outputs(text: str) -> tuple[str, ...]:
    """``"warped,itk"`` → ``("warped", "itk")``; ``ValueError`` naming an unknown or missing name."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise ValueError(f"--outputs: unknown output {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(OUTPUTS)}")
    return names


def output_names(outputs: Collection[str] | None, compressed: bool = True) -> dict[str, str]:
    """Output name → file name for ``outputs`` (``None``: all), ``.nii`` instead of
    ``.nii.gz`` unless ``compressed``."""
    chosen = OUTPUTS if outputs is None else {n: OUTPUTS[n] for n in OUTPUTS if n in outputs}
    return {n: f if compressed else f.replace(".nii.gz", ".nii") for n, f in chosen.items()}


class OutputError(ValueError):
    """The output folder cannot be written."""


def _can_create_in(folder: Path) -> bool:
    """Whether a folder can really be created in ``folder`` (permission bits are not enough:
    root, read-only mounts, ACLs); the probe is removed again."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".transreg-probe-", dir=folder))
    except OSError:
        return False
    return True


def check_output_dir(out: Path) -> bool:
    """Raise :class:`OutputError` unless ``out`` is (or can be created as) a writable
    folder; returns whether it does not exist yet. Leaves nothing behind."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"output folder {out} exists and is not a folder")
        if not _can_create_in(out):
            raise OutputError(f"output folder {out} is not writable")
        return False
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create output folder {out}: {parent} is not a folder")
    if not _can_create_in(parent):
        raise OutputError(f"cannot create output folder {out}: {parent} is not writable")
    return True


def write_atomically(out: str | os.PathLike[str], write: Callable[[Path], list[str]],
                     output_set: Iterable[str] = ()) -> dict[str, Path]:
    """Call ``write(tmp)`` (which writes files into ``tmp`` and returns their names), then
    move those files into ``out`` → ``{name: path}`` and remove the files of ``output_set``
    (every name such a write may produce) that this one did not write. ``OSError`` s become
    :class:`OutputError`; any failure or interruption leaves ``out`` as it was."""
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
        for stale in set(output_set) - set(names):
            (out / stale).unlink(missing_ok=True)
    except BaseException as err:  # KeyboardInterrupt (Ctrl-C, SIGTERM) too
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write to output folder {out}: {err.strerror or err}") from None
        raise
    tmp.rmdir()
    return {name: out / name for name in names}
