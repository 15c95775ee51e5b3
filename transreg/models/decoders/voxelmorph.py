"""The VoxelMorph U-Net decoder, 2-D and 3-D."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvAct, channels_last, conv_concat
from ..layers.checkpointing import checkpointing_now
from ..layers.slabs import checkpoint_in_slabs, rows_in_slabs, slab_count, slabs_for

__all__ = ["VxmDecoder"]


def _unit_on_parts(unit: nn.Sequential, parts: Sequence[Tensor]) -> Tensor:
    """``unit(cat(parts, 1))`` for a conv-first unit, without building the concatenation."""
    conv, *rest = unit
    x = conv_concat(conv, parts)
    for layer in rest:
        x = layer(x)
    return x


class VxmDecoder(nn.Module):
    """VoxelMorph decoder: per level conv → ×2 nearest upsampling → concat skip, then
    extra convolutions at full resolution (3×3 conv + LeakyReLU(0.2) each).

    ``in_ch``: width of the coarsest encoder map; ``skip_channels``: widths of the skips,
    fine to coarse, starting with the network input itself (stride 1), one per level;
    ``channels``: the output widths, the first ``len(skip_channels)`` for the levels and
    the rest for the extra convolutions (at least one). Output ``(B, channels[-1], *S)``
    in the channels-last memory format; with ``head`` (a 3×3 convolution, e.g. the flow
    head) ``head`` of it.

    The concatenations are never built (each part is convolved with its slice of the
    weight, :func:`~transreg.models.layers.conv_concat`); without autograd, the full-resolution
    part (upsampling, skip, extra convolutions, the head) runs in slabs when its upsampled
    map is large (:mod:`transreg.models.layers.slabs`): no full-resolution feature map exists
    whole, only the output. With ``grad_checkpointing`` (training) that part stores
    only its inputs and is recomputed slab by slab in the backward pass
    (:func:`~transreg.models.layers.slabs.checkpoint_in_slabs`): its full-resolution maps,
    most of VoxelMorph's training memory, exist one slab at a time.
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
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: Tensor, skips: Sequence[Tensor], head: nn.Module | None = None) -> Tensor:
        """``x`` ``(B, in_ch, *S / 2^L)``; ``skips`` fine to coarse (``skips[0]`` at ``S``)."""
        parts = [channels_last(x)]
        *coarse_levels, last = zip(self.up, reversed(skips))
        for unit, skip in coarse_levels:
            parts = [self._upsample(_unit_on_parts(unit, parts)), channels_last(skip)]
        unit, skip = last
        x = _unit_on_parts(unit, parts)
        skip = channels_last(skip)
        # a slab's temporaries: about twice its upsampled map (measured: the peak grows ~5× the slab bytes)
        nbytes = 2 * x.numel() * x.element_size() * 2 ** (x.dim() - 2)
        fine = skip.shape[2]
        if checkpointing_now(self):
            parameters = [*self.extras.parameters(), *([] if head is None else head.parameters())]
            # a slab's backward holds its recomputed maps and their gradients: twice the forward's temporaries
            return checkpoint_in_slabs(lambda a, b, x, skip: self._rows(a, b, x, skip, head),
                                       (x, skip), parameters, fine, slab_count(2 * nbytes))
        slabs = slabs_for(nbytes)
        if slabs == 1:
            return self._full_resolution([self._upsample(x), skip], head)
        return rows_in_slabs(lambda a, b: self._rows(a, b, x, skip, head), fine, slabs)

    @staticmethod
    def _upsample(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def _full_resolution(self, parts: Sequence[Tensor], head: nn.Module | None,
                         trim: Callable[[Tensor], Tensor] = lambda x: x) -> Tensor:
        """The extra convolutions (then ``head``) on ``cat(parts, 1)`` (upsampled last
        level, input skip); ``trim`` is applied to each convolution's output."""
        x = trim(_unit_on_parts(self.extras[0], parts))
        for unit in self.extras[1:]:
            x = trim(unit(x))
        return x if head is None else trim(head(x))

    def _rows(self, a: int, b: int, x: Tensor, skip: Tensor, head: nn.Module | None) -> Tensor:
        """Rows ``[a, b)`` (first spatial axis) of ``_full_resolution([upsample(x), skip], head)``.

        Output rows ``[a, b)`` depend on rows ``[a - h, b + h)`` of the upsampled map and
        the skip (``h`` = one row per 3×3 convolution, the head's included); nearest
        upsampling takes fine row ``r`` from coarse row ``r // 2``. The zero padding is
        right only at the map's ends, so after the ``k``-th convolution only rows
        ``[a - (h - k), b + (h - k))`` are kept: each convolution computes just the rows
        the next ones need, and the last leaves exactly ``[a, b)``.
        """
        halo, fine = len(self.extras) + (head is not None), skip.shape[2]
        # the rows alive before the first convolution and after each one: [a - m, b + m) for m = h … 0
        alive = [(max(a - m, 0), min(b + m, fine)) for m in range(halo, -1, -1)]
        crops = iter(zip(alive, alive[1:]))

        def trim(y: Tensor) -> Tensor:
            (start, _), (keep_start, keep_stop) = next(crops)
            return y[:, :, keep_start - start : keep_stop - start]

        lo, hi = alive[0]
        c0 = lo // 2
        up = self._upsample(x[:, :, c0 : (hi + 1) // 2])
        return self._full_resolution([up[:, :, lo - 2 * c0 : hi - 2 * c0], skip[:, :, lo:hi]], head, trim)
