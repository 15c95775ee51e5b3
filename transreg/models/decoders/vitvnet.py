"""The ViT-V-Net decoder, 2-D and 3-D: conv → BatchNorm → ReLU units in a skip decoder."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..layers import BatchNormAct, conv_nd
from .unet import SkipDecoder

__all__ = ["ConvBNReLU", "ViTVNetDecoder"]


class ConvBNReLU(nn.Sequential):
    """3×3 convolution (no bias) → BatchNorm → ReLU: ``(B, in_ch, *S)`` → ``(B, out_ch, *S)``."""

    def __init__(self, ndim: int, in_ch: int, out_ch: int):
        super().__init__(
            conv_nd(ndim)(in_ch, out_ch, 3, padding=1, bias=False),
            BatchNormAct(out_ch, inplace=True),
        )


class ViTVNetDecoder(SkipDecoder):
    """``conv_more`` (:class:`ConvBNReLU` ``in_ch → head_ch`` on the token map), then a
    :class:`SkipDecoder` of ×2 up-blocks built from :class:`ConvBNReLU` units.

    ``(B, in_ch, *S)`` (+ skips, coarse to fine) → ``(B, channels[-1], *S · 2^len(channels))``.
    """

    def __init__(self, ndim: int, in_ch: int, head_ch: int, channels: Sequence[int], skip_channels: Sequence[int]):
        super().__init__(ndim, head_ch, channels, skip_channels, unit=ConvBNReLU)
        self.conv_more = ConvBNReLU(ndim, in_ch, head_ch)

    def forward(self, x: Tensor, skips: Sequence[Tensor | None]) -> Tensor:
        return super().forward(self.conv_more(x), skips)
