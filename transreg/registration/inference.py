"""Fast inference: ``predict(model, moving, fixed, precision="bf16")``.

The model runs under ``torch.inference_mode`` (no autograd bookkeeping, tensors freed
as soon as they are dead) and, with ``precision="bf16"``, under bfloat16 autocast:
convolutions and matrix products in bf16 (~1.5–2× faster on CPUs with AVX-512 BF16 /
AMX and on GPUs, half the activation memory), the flow head and the warp in float32.
Measurements: ``evaluate/results/performance_v0.1/``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor, nn

from ..models.base import RegistrationModel, RegistrationOutput
from .defaults import PRECISIONS, Precision

__all__ = ["PRECISIONS", "Precision", "autocast", "count_flops", "predict", "predict_flow"]


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
    out = _in_inference_mode(model, precision, moving.device, lambda: model(moving, fixed))
    return RegistrationOutput(
        flow=out.flow.float(),
        warped=out.warped.float() if out.warped.is_floating_point() else out.warped,
        velocity=None if out.velocity is None else out.velocity.float(),
    )


def predict_flow(model: nn.Module, moving: Tensor, fixed: Tensor, precision: Precision = "fp32") -> Tensor:
    """The float32 ``flow`` ``(B, ndim, *S)`` (voxels) of :func:`predict`, without warping
    the moving image (a :class:`RegistrationModel` skips that step)."""
    if isinstance(model, RegistrationModel):
        flow, _ = _in_inference_mode(model, precision, moving.device, lambda: model.displacement(moving, fixed))
    else:
        flow = _in_inference_mode(model, precision, moving.device, lambda: model(moving, fixed)).flow
    return flow.float()


def _in_inference_mode(model: nn.Module, precision: Precision, device: torch.device,
                       run: Callable[[], Any]) -> Any:
    context = autocast(device, precision)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), context:
            return run()
    finally:
        model.train(was_training)


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
