"""Large outputs built one slab of rows at a time, in inference and in training.

Without autograd a decoder's full-resolution maps need not exist whole: each slab of
output rows (along the first spatial axis) is computed from the input rows it depends
on (a halo) and written into the output, so only the output and one slab's
temporaries are alive at once (:func:`rows_in_slabs`). In training,
:func:`checkpoint_in_slabs` does the same in the forward pass, keeps only the inputs,
and recomputes each slab in the backward pass (gradient checkpointing, slab by slab).
Both need a computation whose output rows depend on a bounded halo of input rows
(convolutions and pointwise layers; no normalisation over the whole map).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .memory_format import channels_last_format, is_channels_last

__all__ = ["SLAB_BYTES", "slab_count", "slabs_for", "rows_in_slabs", "checkpoint_in_slabs"]

SLAB_BYTES = 256 * 2**20
"""Maps larger than this (bytes) are computed in slabs of about this size."""


def slab_count(nbytes: int) -> int:
    """The number of slabs of about :data:`SLAB_BYTES` for a map of ``nbytes`` bytes (≥ 1)."""
    return max(1, -(-nbytes // SLAB_BYTES))


def slabs_for(nbytes: int) -> int:
    """The number of inference slabs for a map of ``nbytes`` bytes: 1 while autograd is on
    (the graph would keep every slab's temporaries), else :func:`slab_count`."""
    return 1 if torch.is_grad_enabled() else slab_count(nbytes)


def _slab_bounds(length: int, slabs: int, multiple: int) -> list[tuple[int, int]]:
    """``[a, b)`` covering ``[0, length)`` in ``slabs`` slabs whose starts are multiples of ``multiple``."""
    if length <= 0:
        raise ValueError(f"slabs need a positive length, got {length}")
    step = multiple * -(-length // (slabs * multiple))
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def rows_in_slabs(rows: Callable[[int, int], Tensor], length: int, slabs: int, multiple: int = 1) -> Tensor:
    """``rows(a, b)`` for slabs ``[a, b)`` covering ``[0, length)``, joined along dim 2.

    ``rows(a, b)`` returns ``(B, C, b - a, ...)``, exactly the rows ``[a, b)`` of the
    whole result (its halo handling is the caller's). Slab starts are multiples of
    ``multiple`` (e.g. 2 after a ×2 upsampling). The output has the first slab's dtype,
    device and memory format.
    """
    out = None
    for a, b in _slab_bounds(length, slabs, multiple):
        slab = rows(a, b)
        if out is None:
            out = torch.empty(slab.shape[:2] + (length,) + slab.shape[3:], dtype=slab.dtype, device=slab.device,
                              memory_format=channels_last_format(slab) if is_channels_last(slab)
                              else torch.contiguous_format)
        out[:, :, a:b] = slab
        del slab  # before the next slab is made
    return out


class _SlabCheckpoint(torch.autograd.Function):
    """Forward: ``rows_in_slabs`` without a graph. Backward: per slab, recompute its rows
    from the saved inputs (under the forward's autocast state) and pull the slab's output
    gradient back to the inputs and parameters."""

    @staticmethod
    def forward(ctx, rows, length: int, slabs: int, n_inputs: int, *tensors: Tensor) -> Tensor:
        device = tensors[0].device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.rows, ctx.bounds, ctx.n_inputs = rows, _slab_bounds(length, slabs, 1), n_inputs
        ctx.save_for_backward(*tensors)
        inputs = tensors[:n_inputs]
        return rows_in_slabs(lambda a, b: rows(a, b, *inputs), length, slabs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved[: ctx.n_inputs]]
        leaves = [*inputs, *saved[ctx.n_inputs :]]
        wanted = [i for i, t in enumerate(leaves) if t.requires_grad]
        totals: list[Tensor | None] = [None] * len(leaves)
        device, enabled, dtype = ctx.autocast
        for a, b in ctx.bounds:
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                out = ctx.rows(a, b, *inputs)
            grads = torch.autograd.grad(out, [leaves[i] for i in wanted], grad[:, :, a:b], allow_unused=True)
            del out  # this slab's recomputed maps, before the next slab
            for i, g in zip(wanted, grads):
                if g is not None:
                    totals[i] = g if totals[i] is None else totals[i].add_(g)
        return (None, None, None, None, *totals)


def checkpoint_in_slabs(rows: Callable[..., Tensor], inputs: Sequence[Tensor], parameters: Sequence[Tensor],
                        length: int, slabs: int) -> Tensor:
    """:func:`rows_in_slabs` for training: the output of ``rows(a, b, *inputs)`` over
    ``[0, length)`` with gradients for ``inputs`` and ``parameters``, storing only the inputs.

    ``rows(a, b, *inputs)`` returns ``(B, C, b - a, ...)``, exactly rows ``[a, b)`` of the
    whole result, computed from ``inputs`` and ``parameters`` (the weights it uses: their
    gradients are returned through this function, so list every one). The forward pass
    keeps no activation; the backward pass recomputes one slab at a time, so the memory of
    the computation's internals is one slab's (with ``slabs=1``: plain checkpointing).
    Deterministic computations only (no dropout).
    """
    return _SlabCheckpoint.apply(rows, length, slabs, len(inputs), *inputs, *parameters)
