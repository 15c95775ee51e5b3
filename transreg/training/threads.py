"""How many CPU threads a training run uses (``run.threads``, ``--threads``).

PyTorch's default (one OpenMP thread per core) collapses when the cores are already
busy: OpenMP threads wait for each other at every parallel region, so one slow thread
stalls all of them. On the 2-core development machine with two other trainings running,
the 2-D recipe ran at 0.3-0.9 steps/s with the default and 32.8 steps/s with one thread.
``run.threads: 0`` (the default, "auto") therefore takes the cores that are not already
busy when the run starts (the 1-minute load average), at least one and at most
PyTorch's default; a positive number is used as given. GPU runs are not affected beyond
their CPU-side work.
"""
from __future__ import annotations

import os

import torch

__all__ = ["AUTO", "choose_threads", "apply_threads"]

AUTO = 0


def choose_threads(requested: int = AUTO) -> int:
    """The thread count for ``requested`` (``0``: the idle cores at start, see the module docstring)."""
    if requested < 0:
        raise ValueError(f"run.threads must be >= 0 (0: automatic), got {requested}")
    if requested:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this system
        busy = 0
    return max(1, min(torch.get_num_threads(), cores - busy))


def apply_threads(requested: int = AUTO) -> int:
    """Set PyTorch's intra-op thread count for this process → the count set."""
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
