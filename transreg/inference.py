"""Fast inference: ``predict(model, moving, fixed, precision="bf16")``.

The model runs under ``torch.inference_mode`` (no autograd bookkeeping, tensors freed
as soon as they are dead) and, with ``precision="bf16"``, under bfloat16 autocast:
convolutions and matrix products in bf16 (~1.5–2× faster on CPUs with AVX-512 BF16 /
AMX and on GPUs, half the activation memory), the flow head and the warp in float32.
See ``evaluate/perf_notes.md`` for the measurements.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Literal

import torch
from torch import Tensor, nn

from .models.base import RegistrationOutput

__all__ = ["PRECISIONS", "Precision", "autocast", "count_flops", "predict", "retain_freed_memory",
           "return_freed_memory"]

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: Precision = "fp32") -> ContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op context for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def predict(model: nn.Module, moving: Tensor, fixed: Tensor, precision: Precision = "fp32") -> RegistrationOutput:
    """``model(moving, fixed)`` for inference, in eval mode, without autograd.

    ``moving``, ``fixed`` ``(B, C, *S)`` on the model's device. ``precision``: ``"fp32"``
    or ``"bf16"`` (autocast). The outputs are float32 inference tensors (they cannot
    enter autograd later); ``flow`` ``(B, ndim, *S)`` in voxels as for ``model(...)``.
    The model's train/eval mode is restored afterwards.
    """
    context = autocast(moving.device, precision)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), context:
            out = model(moving, fixed)
    finally:
        model.train(was_training)
    return RegistrationOutput(
        flow=out.flow.float(),
        warped=out.warped.float() if out.warped.is_floating_point() else out.warped,
        velocity=None if out.velocity is None else out.velocity.float(),
    )


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt(option, value)`` settings; False where glibc is absent or one fails."""
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
    this setting (``mallopt``: no mmap for large blocks, no trimming) removes those
    faults: ``transmorph`` at 160×192×224 on 2 CPU cores, fp32: 9.5 s → 5.6 s, at the
    price of a higher resident peak (3.5 → 5.4 GiB; the heap keeps its high-water mark).
    Process-wide and irreversible; a no-op (returns ``False``) where glibc is absent.
    """
    return _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def return_freed_memory(threshold: int = 2**20) -> bool:
    """Give every freed block of ``threshold`` bytes or more back to the kernel (glibc).

    The opposite trade to :func:`retain_freed_memory`, for memory-lean training on CPU:
    after freeing a large block glibc raises its mmap threshold (up to 32 MiB), so later
    blocks below it come from the heap, where freed space stays resident and fragments
    (a training step's loss and its backward pass allocate many such blocks). A fixed
    threshold keeps them mmapped, so the resident peak follows the live tensors:
    ``vitvnet`` bf16 + checkpointing training step at 160×192×224 on 2 cores: peak
    3.93 → 3.25 GiB, 11.5 → 12.8 s (page faults). The trainer calls it on CPU when
    ``model.grad_checkpointing`` is on. Process-wide; ``False`` where glibc is absent.
    """
    return _mallopt((_M_MMAP_THRESHOLD, threshold))


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of ``fn()`` counted by ``torch.utils.flop_counter``,
    including the oneDNN convolutions that transreg's float32 CPU inference calls
    directly (``aten.mkldnn_convolution``, which the counter does not know)."""
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

    def mkldnn_convolution(x_shape: list[int], w_shape: list[int], *args: Any, out_shape: list[int], **kwargs: Any) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape)

    mapping = {torch.ops.aten.mkldnn_convolution: mkldnn_convolution}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()
