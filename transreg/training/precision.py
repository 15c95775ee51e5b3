"""Mixed precision: which autocast dtype and whether a GradScaler, per ``run.precision`` and device."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ConfigError

__all__ = ["AmpSettings", "amp_settings"]


@dataclass(frozen=True)
class AmpSettings:
    """How one ``precision`` runs on one device type: autocast dtype (None: off) and
    whether a ``GradScaler`` is needed (float16 only: its range underflows gradients)."""

    dtype: torch.dtype | None
    use_scaler: bool


def amp_settings(precision: str, device_type: str) -> AmpSettings:
    """``"32"`` → no autocast; ``"bf16-mixed"`` → bfloat16 autocast (CPU and CUDA);
    ``"16-mixed"`` → float16 autocast with a GradScaler."""
    if precision == "32":
        return AmpSettings(None, False)
    if precision == "bf16-mixed":
        if device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("run.precision bf16-mixed: this GPU has no bfloat16 support; use 16-mixed")
        return AmpSettings(torch.bfloat16, False)
    if precision == "16-mixed":
        return AmpSettings(torch.float16, True)
    raise ConfigError(f"unknown precision {precision!r}")
