"""A run's resumable state on disk: periodic checkpoint folders and random-number-generator states."""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STATE_FILE", "checkpoint_dirs", "latest_checkpoint", "remove_stale_temporaries", "rng_state",
           "set_rng_state", "seed_everything"]

STATE_FILE = "training_state.pt"
#: a checkpoint being written: ``checkpoints/.step_N.tmpPID`` or ``.final.tmpPID`` (renamed into place when done)
_TEMPORARY = re.compile(r"\.(step_\d+|final)\.tmp(\d+)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the half-written checkpoint folders a killed run left behind (those whose
    writing process no longer runs) → the removed folders."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in sorted(folder.glob(".*.tmp*")) if folder.is_dir() else []:
            match = _TEMPORARY.fullmatch(path.name)
            if match and path.is_dir() and not _alive(int(match.group(2))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete periodic checkpoint of a run folder (None if there is none)."""
    dirs = checkpoint_dirs(Path(run_dir))
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
