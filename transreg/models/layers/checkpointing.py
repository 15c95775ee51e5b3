"""When and how a block recomputes its activations in the backward pass.

A module opts in with a ``grad_checkpointing`` attribute (set by its
``set_grad_checkpointing``). It recomputes only while it trains and autograd records:
not in evaluation, not under ``torch.no_grad()``. Whether the block's *input* needs a
gradient does not matter: behind a frozen encoder (fine-tuning) the decoder's input
does not, yet the decoder's own weights do.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointing_now", "maybe_checkpoint", "recompute_in_backward"]


def checkpointing_now(module: nn.Module) -> bool:
    """``module.grad_checkpointing`` is on, the module trains and autograd records."""
    return bool(getattr(module, "grad_checkpointing", False)) and module.training and torch.is_grad_enabled()


def recompute_in_backward(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` keeping only ``args`` for the backward pass, which runs ``fn`` again
    (non-reentrant checkpoint: RNG state and autocast replayed)."""
    return checkpoint(fn, *args, use_reentrant=False)


def maybe_checkpoint(module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, through :func:`recompute_in_backward` when :func:`checkpointing_now`
    says so for ``module`` (the owner of the flag; ``fn`` is one of its blocks or methods)."""
    return recompute_in_backward(fn, *args) if checkpointing_now(module) else fn(*args)
