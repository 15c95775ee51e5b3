"""Inference in slabs: build a large output one slab of rows at a time.

Without autograd a decoder's full-resolution maps need not exist whole: each slab of
output rows (along the first spatial axis) is computed from the input rows it depends
on (a halo) and written into the output, so only the output and one slab's
temporaries are alive at once.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .memory_format import channels_last_format, is_channels_last

__all__ = ["SLAB_BYTES", "slabs_for", "rows_in_slabs"]

SLAB_BYTES = 256 * 2**20
"""Inference computes maps larger than this (bytes) in slabs of about this size."""


def slabs_for(nbytes: int) -> int:
    """The number of slabs for a map of ``nbytes`` bytes: 1 while autograd is on (the
    graph would keep every slab's temporaries) or the map is within :data:`SLAB_BYTES`."""
    if torch.is_grad_enabled() or nbytes <= SLAB_BYTES:
        return 1
    return -(-nbytes // SLAB_BYTES)


def rows_in_slabs(rows: Callable[[int, int], Tensor], length: int, slabs: int, multiple: int = 1) -> Tensor:
    """``rows(a, b)`` for slabs ``[a, b)`` covering ``[0, length)``, joined along dim 2.

    ``rows(a, b)`` returns ``(B, C, b - a, ...)``, exactly the rows ``[a, b)`` of the
    whole result (its halo handling is the caller's). Slab starts are multiples of
    ``multiple`` (e.g. 2 after a ×2 upsampling). The output has the first slab's dtype,
    device and memory format.
    """
    if length <= 0:
        raise ValueError(f"rows_in_slabs needs a positive length, got {length}")
    step = multiple * -(-length // (slabs * multiple))
    out = None
    for a in range(0, length, step):
        b = min(a + step, length)
        slab = rows(a, b)
        if out is None:
            out = torch.empty(slab.shape[:2] + (length,) + slab.shape[3:], dtype=slab.dtype, device=slab.device,
                              memory_format=channels_last_format(slab) if is_channels_last(slab)
                              else torch.contiguous_format)
        out[:, :, a:b] = slab
        del slab  # before the next slab is made
    return out
