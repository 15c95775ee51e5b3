"""The VoxelMorph U-Net decoder, 2-D and 3-D."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvAct

__all__ = ["VxmDecoder"]


class VxmDecoder(nn.Module):
    """VoxelMorph decoder: per level conv → ×2 nearest upsampling → concat skip, then
    extra convolutions at full resolution (3×3 conv + LeakyReLU(0.2) each).

    ``in_ch``: width of the coarsest encoder map; ``skip_channels``: widths of the skips,
    fine to coarse, starting with the network input itself (stride 1), one per level;
    ``channels``: the output widths, the first ``len(skip_channels)`` for the levels and
    the rest for the extra convolutions (at least one). Output ``(B, channels[-1], *S)``.
    """

    def __init__(self, ndim: int, in_ch: int, skip_channels: Sequence[int], channels: Sequence[int]):
        super().__init__()
        levels = len(skip_channels)
        if len(channels) <= levels:
            raise ValueError(
                f"VoxelMorph decoder needs more widths ({len(channels)}) than levels ({levels}): "
                "the ones after the levels are the full-resolution convolutions"
            )
        self.up = nn.ModuleList()
        prev = in_ch
        for width, skip in zip(channels[:levels], reversed(skip_channels)):
            self.up.append(ConvAct(ndim, prev, width, slope=0.2))
            prev = width + skip
        self.extras = nn.ModuleList()
        for width in channels[levels:]:
            self.extras.append(ConvAct(ndim, prev, width, slope=0.2))
            prev = width
        self.out_channels = prev

    def forward(self, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        """``x`` ``(B, in_ch, *S / 2^L)``; ``skips`` fine to coarse (``skips[0]`` at ``S``)."""
        for conv, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(conv(x), scale_factor=2.0, mode="nearest")
            x = torch.cat([x, skip], dim=1)
        for conv in self.extras:
            x = conv(x)
        return x
