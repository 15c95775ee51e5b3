"""CNN decoder with skip connections (TransMorph style), 2-D and 3-D."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvNormAct, avg_pool_nd, channels_last, conv_concat, linear_mode
from ..layers.checkpointing import checkpointing_now, recompute_in_backward
from ..layers.slabs import rows_in_slabs, slabs_for

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
        """:meth:`merge` then :meth:`refine`."""
        return self.refine(self.merge(x, skip))

    def merge(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Upsampling, skip and ``conv1``: the part that needs the skip.

        Runs in the channels-last layout (faster convolutions and upsampling on CPU); the
        skip is not concatenated but convolved with its part of ``conv1``'s weight.
        Without autograd, large maps are only built one slab at a time."""
        x, skip = channels_last(x), None if skip is None else channels_last(skip)
        conv, *rest = self.conv1
        # the largest temporaries of a whole-map pass: the upsampled map, or conv_concat's two partial outputs
        upsampled = x.numel() * x.element_size() * 2 ** (x.dim() - 2)
        partial_outputs = (1 + (skip is not None)) * upsampled // x.shape[1] * conv.out_channels
        slabs = slabs_for(max(upsampled, partial_outputs))
        x = self._up_conv(conv, x, skip) if slabs == 1 else self._up_conv_in_slabs(conv, x, skip, slabs)
        for layer in rest:
            x = layer(x)
        return x

    def refine(self, x: Tensor) -> Tensor:
        """``conv2``."""
        return self.conv2(x)

    def _up_conv(self, conv: nn.Module, x: Tensor, skip: Tensor | None) -> Tensor:
        """``conv(cat([upsample(x), skip], 1))``."""
        parts = [F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False)]
        if skip is not None:
            parts.append(skip)
        return conv_concat(conv, parts)

    def _up_conv_in_slabs(self, conv: nn.Module, x: Tensor, skip: Tensor | None, slabs: int) -> Tensor:
        """:meth:`_up_conv` computed in ``slabs`` slabs along the first spatial axis.

        Output rows ``[a, b)`` need upsampled rows ``[a - 1, b + 1)`` (the 3×3 halo); with
        ``align_corners=False`` and even ``a`` those are exact when upsampled from coarse
        rows ``[a/2 - 1, b/2 + 1)`` (clipped to the map: there the clamping is the map's
        own). The convolution's zero padding is right only at the map's ends, so the halo
        rows of the output are cropped.
        """
        coarse = x.shape[2]
        fine = 2 * coarse

        def rows(a: int, b: int) -> Tensor:
            c0, c1 = max(a // 2 - 1, 0), min(b // 2 + 1, coarse)
            lo, hi = max(a - 1, 0), min(b + 1, fine)
            up = F.interpolate(x[:, :, c0:c1], scale_factor=2.0, mode=self.mode, align_corners=False)
            parts = [up[:, :, lo - 2 * c0 : hi - 2 * c0]]
            if skip is not None:
                parts.append(skip[:, :, lo:hi])
            return conv_concat(conv, parts)[:, :, a - lo : b - lo]

        return rows_in_slabs(rows, fine, slabs, multiple=2)


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

    def forward(self, x: Tensor, skips: list[Tensor | None]) -> Tensor:
        """``skips[i]`` for block ``i``; each entry is set to None once its block has
        merged it, so a skip the caller holds only through this list is freed before the
        block's second convolution (TransMorph's full-resolution skip: 16 channel-volumes,
        0.4 GiB at 160×192×224)."""
        for i, block in enumerate(self.blocks):
            if checkpointing_now(self):
                x = recompute_in_backward(block, x, skips[i])
                skips[i] = None
            else:
                x = block.merge(x, skips[i])
                skips[i] = None  # before conv2: a skip held only by this list is freed here
                x = block.refine(x)
        return x


class InputConvSkips(nn.Module):
    """TransMorph's convolutional skips from the input pair.

    ``half_res``: :class:`ConvNormAct` on the 3/2/1 average-pooled input (stride 2);
    ``full_res`` (optional): on the input itself (stride 1). Returns ``[half, full]``
    (channels-last).
    """

    def __init__(self, ndim: int, in_ch: int, half_ch: int, full_ch: int | None):
        super().__init__()
        self.pool = avg_pool_nd(ndim)(3, stride=2, padding=1)
        self.half_res = ConvNormAct(ndim, in_ch, half_ch)
        self.full_res = ConvNormAct(ndim, in_ch, full_ch) if full_ch else None

    def forward(self, x: Tensor) -> list[Tensor]:
        """The skips in the channels-last layout the up-blocks use: the input is converted
        (a few channels), so the convolutions and norms write that layout directly."""
        x = channels_last(x)
        skips = [channels_last(self.half_res(self.pool(x)))]
        if self.full_res is not None:
            skips.append(channels_last(self.full_res(x)))
        return skips
