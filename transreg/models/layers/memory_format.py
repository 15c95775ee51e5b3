"""The channels-last memory format of 2-D and 3-D maps."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_last", "channels_last_format", "is_channels_last"]


def channels_last_format(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D ``(B, C, H, W)`` ``x``, ``channels_last_3d`` for 5-D."""
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-D or 5-D ``x`` is stored channels-last (False for other ranks)."""
    return x.dim() in (4, 5) and x.is_contiguous(memory_format=channels_last_format(x))


def channels_last(x: Tensor) -> Tensor:
    """``x`` ``(B, C, *S)`` (2-D or 3-D) in the channels-last memory format (same values).

    oneDNN convolutions and (bi/tri)linear upsampling on CPU run ~1.5–3× faster in this
    layout; a tensor already in it is returned as is (no copy).
    """
    return x.contiguous(memory_format=channels_last_format(x))
