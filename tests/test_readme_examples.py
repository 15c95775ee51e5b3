"""The README's examples run as written.

Every fenced ``bash`` and ``python`` block of README.md runs (in a fresh folder, offline,
with an empty Hub cache) unless the line before it says why it cannot here:
``<!-- readme-test: skip (REASON: ...) -->`` with REASON ``network`` (PyPI or the Hub),
``data`` (the user's own files) or ``gpu``. New blocks therefore run unless marked.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((\w+): [^)]+\) -->")
REASONS = {"network", "data", "gpu"}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None  # the reason, when marked


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` (language from the info string)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*).*", lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[i - 1].strip() if i else ""
        marker = SKIP.fullmatch(before)
        if before.startswith("<!-- readme-test") and marker is None:
            raise AssertionError(f"README.md:{i}: malformed marker {before!r}")
        blocks.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]), marker and marker.group(1)))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.language in ("bash", "python") and b.skip is None]


def test_blocks_are_found_and_every_skip_names_an_allowed_reason():
    assert {b.skip for b in BLOCKS if b.skip} <= REASONS
    assert sum(b.language == "python" for b in RUNNABLE) >= 3 and any(b.language == "bash" for b in RUNNABLE)
    # a skip marker only in front of code: it would otherwise silence nothing
    assert all(b.language in ("bash", "python") for b in BLOCKS if b.skip)


def test_set_up_commands_work_in_a_fresh_shell():
    setup = BLOCKS[0]
    assert setup.language == "bash" and "venv" in setup.code
    for line in setup.code.splitlines():
        for command in re.split(r"&&|;|\|\|", line):
            program = command.split()[0]
            assert program == "python3" and "-m venv" in command or program.startswith(".venv/bin/"), (
                f"{command.strip()!r} needs an activated virtual environment")


@pytest.fixture
def fresh(tmp_path):
    """A fresh working folder with the repository's recipes, offline, with an empty Hub cache."""
    (tmp_path / "train").symlink_to(REPO / "train")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSREG_ZOO_INDEX", None)
    return tmp_path, env


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"{b.language}-line{b.line}" for b in RUNNABLE])
def test_readme_block_runs(block, fresh):
    folder, env = fresh
    command = [sys.executable, "-c", block.code] if block.language == "python" else \
        ["bash", "-euo", "pipefail", "-c", block.code]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README.md:{block.line}:\n{block.code}\n--- stderr:\n{done.stderr[-3000:]}"
