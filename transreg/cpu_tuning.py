"""CPU-specific speed and memory tuning, in one place behind one switch.

Two kinds of tuning that matter on CPUs only and change no result:

- :func:`convolve`: float32 CPU inference calls oneDNN directly (PyTorch's dispatch
  heuristic sends inputs with batch · channels · the first two spatial sizes ≤ 20480 —
  a 2-channel input, or a slab of a few rows — to its native kernel, 3.4× slower here:
  VoxelMorph's 2-channel input skip on a 31-row slab of 160×192×224, 191 → 56 ms);
- :func:`retain_freed_memory` / :func:`return_freed_memory`: glibc allocator settings
  (``mallopt``) trading page faults against resident memory.

The switch: :func:`set_enabled` (or the environment variable ``TRANSREG_CPU_TUNING=0``
at start-up) turns all of them off; :func:`disabled` is a context manager for it. With
the switch off every call takes PyTorch's and glibc's default path. GPU runs never
take these paths. Measurements: ``evaluate/results/performance_v0.1/``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = ["enabled", "set_enabled", "disabled", "convolve", "retain_freed_memory", "return_freed_memory"]

_ENABLED = os.environ.get("TRANSREG_CPU_TUNING", "1").strip().lower() not in {"0", "off", "false", "no"}


def enabled() -> bool:
    """Whether the CPU tuning is on (default; ``TRANSREG_CPU_TUNING=0`` turns it off)."""
    return _ENABLED


def set_enabled(flag: bool) -> None:
    """Turn the CPU tuning on or off for this process (allocator settings already applied stay)."""
    global _ENABLED
    _ENABLED = bool(flag)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run a block with the CPU tuning off (restored afterwards)."""
    before = _ENABLED
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


def convolve(conv: nn.Conv2d | nn.Conv3d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv``'s convolution of ``x`` ``(B, C_in, *S)`` with ``weight`` and ``bias``
    (oneDNN directly for float32 CPU inference when the tuning is on)."""
    if (_ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
        return torch.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return conv._conv_forward(x, weight, bias)


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt(option, value)`` settings; False where the tuning is off,
    glibc is absent or one setting fails."""
    if not _ENABLED:
        return False
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return all(bool(mallopt(option, value)) for option, value in settings)


# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def retain_freed_memory() -> bool:
    """Keep freed memory in this process instead of returning it to the kernel (glibc).

    glibc gives every freed block larger than its mmap threshold back to the kernel, so
    each large activation of a full-resolution forward pass is page-faulted in again;
    this setting (no mmap for large blocks, no trimming) removes those faults:
    ``transmorph`` at 160×192×224 on 2 CPU cores, fp32: 9.5 s → 5.6 s, at the price of a
    higher resident peak (3.5 → 5.4 GiB; the heap keeps its high-water mark).
    Process-wide and irreversible; ``False`` (nothing done) where the tuning is off or
    glibc is absent.
    """
    return _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def return_freed_memory(threshold: int = 2**20) -> bool:
    """Give every freed block of ``threshold`` bytes or more back to the kernel (glibc).

    The opposite trade to :func:`retain_freed_memory`, for memory-lean training on CPU:
    after freeing a large block glibc raises its mmap threshold (up to 32 MiB), so later
    blocks below it come from the heap, where freed space stays resident and fragments.
    A fixed threshold keeps them mmapped, so the resident peak follows the live tensors:
    ``vitvnet`` bf16 + checkpointing training step at 160×192×224 on 2 cores: peak
    3.93 → 3.25 GiB, 11.5 → 12.8 s (page faults). The trainer calls it on CPU when
    ``model.grad_checkpointing`` is on. Process-wide; ``False`` where the tuning is off
    or glibc is absent.
    """
    return _mallopt((_M_MMAP_THRESHOLD, threshold))
