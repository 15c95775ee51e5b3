"""The command line answers help, pretrained listings and argument errors without importing
torch (each run in a fresh interpreter, as a user's ``transreg ...`` would)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from transreg.cli import COMMANDS

_PROBE = """
import contextlib, io, json, sys
from transreg.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        status = main(sys.argv[1:])
    except SystemExit as stop:
        status = stop.code
print(json.dumps({"status": status, "torch": "torch" in sys.modules, "out": out.getvalue(), "err": err.getvalue()}))
"""


def _run(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMANDS)], ids=" ".join)
def test_help_imports_no_torch(argv):
    result = _run(*argv)
    assert result["status"] == 0 and "usage: transreg" in result["out"]
    assert not result["torch"]


@pytest.mark.parametrize("argv, message", [
    (["register", "a.nii.gz", "b.nii.gz"], "the following arguments are required: -o/--out"),
    (["register", "a.nii.gz", "b.nii.gz", "-o", "out", "--precision", "fp64"], "invalid choice: 'fp64'"),
    (["register", "-o", "out"], "give MOVING and FIXED images"),
    (["convert", "--from", "unet", "x.pth", "--config", "c.json", "-o", "o"], "invalid choice: 'unet'"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
])
def test_argument_errors_import_no_torch(argv, message):
    result = _run(*argv)
    assert result["status"] == 2 and message in result["err"]
    assert not result["torch"]


def test_list_pretrained_imports_no_torch_and_lists_the_zoo():
    from transreg.zoo.factory import list_models

    result = _run("list", "--pretrained")
    assert result["status"] == 0 and not result["torch"]
    rows = [line for line in result["out"].splitlines()[1:] if not line.startswith("Dice:") and "→" not in line]
    listed = sorted({row.split()[0] for row in rows})  # one row per version
    assert listed == list_models(pretrained=True) and listed


def test_convert_choices_are_the_converters_kinds():
    from transreg.commands.convert import ORIGINALS
    from transreg.zoo.convert import KINDS

    assert ORIGINALS == KINDS


def test_the_probe_sees_torch_when_a_command_needs_it():
    result = _run("list", "transmorph_tiny")  # parameter counts build the model
    assert result["status"] == 0 and "transmorph_tiny" in result["out"]
    assert result["torch"]
