"""Dimension-generic convolution blocks and layer factories (2-D and 3-D)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ...cpu_tuning import convolve
from .norm import InstanceNormAct

__all__ = [
    "conv_concat",
    "conv_nd",
    "avg_pool_nd",
    "max_pool_nd",
    "linear_mode",
    "ConvNormAct",
    "ConvAct",
]


def _pick(ndim: int, two: type, three: type) -> type:
    if ndim == 2:
        return two
    if ndim == 3:
        return three
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def conv_nd(ndim: int) -> type[nn.Module]:
    return _pick(ndim, nn.Conv2d, nn.Conv3d)


def avg_pool_nd(ndim: int) -> type[nn.Module]:
    return _pick(ndim, nn.AvgPool2d, nn.AvgPool3d)


def max_pool_nd(ndim: int) -> type[nn.Module]:
    return _pick(ndim, nn.MaxPool2d, nn.MaxPool3d)


def linear_mode(ndim: int) -> str:
    """The ``interpolate`` mode for (bi/tri)linear interpolation in ``ndim`` dims."""
    return _pick(ndim, "bilinear", "trilinear")  # type: ignore[arg-type]


def conv_concat(conv: nn.Conv2d | nn.Conv3d, parts: Sequence[Tensor]) -> Tensor:
    """``conv(torch.cat(parts, dim=1))`` without building the concatenation.

    Each part is convolved with its slice of the weight (input channels in ``parts``
    order) and the results are summed, the bias added once. Saves the copy and the
    memory of the concatenated map (the same values up to float rounding).
    """
    out = None
    start = 0
    for part in parts:
        stop = start + part.shape[1]
        y = convolve(conv, part, conv.weight[:, start:stop], conv.bias if out is None else None)
        out = y if out is None else out.add_(y)
        start = stop
    if out is None or start != conv.in_channels:
        raise ValueError(f"parts have {start} channels in all, the convolution takes {conv.in_channels}")
    return out


class ConvNormAct(nn.Sequential):
    """3×3 convolution (no bias) → InstanceNorm (no affine) → LeakyReLU(0.01).

    The TransMorph decoder unit. ``(B, in_ch, *S)`` → ``(B, out_ch, *S / stride)``.
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            conv_nd(ndim)(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            InstanceNormAct(out_ch, slope=0.01, inplace=True),
        )


class ConvAct(nn.Sequential):
    """Convolution (with bias) → LeakyReLU(slope): the VoxelMorph unit.

    He-initialised for its activation (weights N(0, 2 / ((1 + slope²) · fan_in)), bias 0),
    as VoxelMorph's reference implementation (``he_normal``): with no normalisation in
    between, PyTorch's default initialisation shrinks the activations ~2× per unit, so a
    deep stack of these units feeds its flow head ~30× smaller features than a normalised
    decoder and learns correspondingly slowly (measured in ``train/README.md``).
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, stride: int = 1, slope: float = 0.2):
        conv = conv_nd(ndim)(in_ch, out_ch, 3, stride=stride, padding=1)
        nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity="leaky_relu")
        nn.init.zeros_(conv.bias)
        super().__init__(conv, nn.LeakyReLU(slope, inplace=True))
