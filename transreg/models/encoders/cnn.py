"""CNN U-Net encoder (VoxelMorph), 2-D and 3-D."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..layers import ConvAct, channels_last

__all__ = ["UNetEncoder"]


class UNetEncoder(nn.Module):
    """The VoxelMorph encoder: one stride-2 3×3 convolution + LeakyReLU(0.2) per level.

    ``(B, in_ch, *S)`` with ``S`` divisible by ``2^len(channels)`` → a list, fine to
    coarse, of ``(B, channels[i], *S / 2^(i + 1))``.
    """

    def __init__(self, ndim: int = 3, in_ch: int = 2, channels: Sequence[int] = (16, 32, 32, 32)):
        super().__init__()
        widths = [in_ch, *channels]
        self.blocks = nn.ModuleList(
            ConvAct(ndim, widths[i], widths[i + 1], stride=2, slope=0.2) for i in range(len(channels))
        )
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"blocks.{i}"} for i, c in enumerate(channels)
        ]
        self.size_divisor = 2 ** len(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        x = channels_last(x)  # faster oneDNN convolutions on CPU; the features keep the layout
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features
