"""CNN decoder with skip connections (TransMorph style), 2-D and 3-D."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import ConvNormAct, avg_pool_nd, channels_last, conv_concat, linear_mode

__all__ = ["UpBlock", "SkipDecoder", "InputConvSkips"]


ConvUnit = Callable[[int, int, int], nn.Sequential]
"""``unit(ndim, in_ch, out_ch)``: a 3×3 convolution block that keeps the spatial size,
a ``Sequential`` whose first layer is the convolution."""


class UpBlock(nn.Module):
    """×2 (bi/tri)linear upsampling → concat skip → two conv units.

    ``(B, in_ch, *S)`` (+ skip ``(B, skip_ch, *2S)``) → ``(B, out_ch, *2S)``. The unit is
    :class:`ConvNormAct` (TransMorph) unless another one is given (ViT-V-Net: conv →
    BatchNorm → ReLU).
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, skip_ch: int = 0, unit: ConvUnit = ConvNormAct):
        super().__init__()
        self.mode = linear_mode(ndim)
        self.conv1 = unit(ndim, in_ch + skip_ch, out_ch)
        self.conv2 = unit(ndim, out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Runs in the channels-last layout (faster convolutions and upsampling on CPU);
        the skip is not concatenated but convolved with its part of ``conv1``'s weight."""
        parts = [F.interpolate(channels_last(x), scale_factor=2.0, mode=self.mode, align_corners=False)]
        if skip is not None:
            parts.append(channels_last(skip))
        conv, *rest = self.conv1
        x = conv_concat(conv, parts)
        del parts  # free the upsampled map before the norm and the second convolution
        for layer in rest:
            x = layer(x)
        return self.conv2(x)


class SkipDecoder(nn.Module):
    """A chain of :class:`UpBlock`; block ``i`` takes skip ``i`` (``None`` = no skip).

    ``channels[i]`` is block ``i``'s output width, ``skip_channels[i]`` its skip's width
    (0: no skip), ``unit`` the conv block of every :class:`UpBlock`. The output has
    ``channels[-1]`` channels at ``2^len(channels)`` × the input resolution (in the
    channels-last memory format). With ``grad_checkpointing`` each block's activations
    are recomputed in the backward pass instead of stored (training memory).
    """

    def __init__(self, ndim: int, in_ch: int, channels: Sequence[int], skip_channels: Sequence[int],
                 unit: ConvUnit = ConvNormAct):
        super().__init__()
        if len(channels) != len(skip_channels):
            raise ValueError("channels and skip_channels need the same length")
        widths = [in_ch, *channels]
        self.blocks = nn.ModuleList(
            UpBlock(ndim, widths[i], widths[i + 1], skip_channels[i], unit) for i in range(len(channels))
        )
        self.feature_info = [{"num_chs": c, "module": f"blocks.{i}"} for i, c in enumerate(channels)]
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: Tensor, skips: Sequence[Tensor | None]) -> Tensor:
        for block, skip in zip(self.blocks, skips):
            if self.grad_checkpointing and self.training and x.requires_grad:
                x = checkpoint(block, x, skip, use_reentrant=False)
            else:
                x = block(x, skip)
        return x


class InputConvSkips(nn.Module):
    """TransMorph's convolutional skips from the input pair.

    ``half_res``: :class:`ConvNormAct` on the 3/2/1 average-pooled input (stride 2);
    ``full_res`` (optional): on the input itself (stride 1). Returns ``[half, full]``.
    """

    def __init__(self, ndim: int, in_ch: int, half_ch: int, full_ch: int | None):
        super().__init__()
        self.pool = avg_pool_nd(ndim)(3, stride=2, padding=1)
        self.half_res = ConvNormAct(ndim, in_ch, half_ch)
        self.full_res = ConvNormAct(ndim, in_ch, full_ch) if full_ch else None

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = [self.half_res(self.pool(x))]
        if self.full_res is not None:
            skips.append(self.full_res(x))
        return skips
