"""Patch embedding and patch merging for 2-D / 3-D token maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import conv_nd

__all__ = ["PatchEmbed", "PatchMerging"]

# Order in which the 2^ndim sub-grids are concatenated (Swin 2-D; TransMorph 3-D).
_MERGE_OFFSETS = {
    2: [(0, 0), (1, 0), (0, 1), (1, 1)],
    3: [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)],
}


class PatchEmbed(nn.Module):
    """Strided convolution ``patch × patch`` → LayerNorm.

    ``(B, in_ch, *S)`` (``S`` divisible by ``patch``) → ``(B, embed_dim, *S / patch)``.
    """

    def __init__(self, ndim: int, patch_size: int, in_ch: int, embed_dim: int, norm: bool = True):
        super().__init__()
        self.proj = conv_nd(ndim)(in_ch, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.movedim(1, -1)).movedim(-1, 1)
        return x


class PatchMerging(nn.Module):
    """Concatenate each 2^ndim neighbourhood, LayerNorm, project ``2^ndim·C → 2·C``.

    Channels-last ``(B, *S, C)`` → ``(B, *ceil(S / 2), 2C)``; odd sizes are zero-padded.
    """

    def __init__(self, ndim: int, dim: int):
        super().__init__()
        self.offsets = _MERGE_OFFSETS[ndim]
        self.norm = nn.LayerNorm(2**ndim * dim)
        self.reduction = nn.Linear(2**ndim * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        spatial = x.shape[1:-1]
        pad = []
        for s in reversed(spatial):
            pad += [0, s % 2]
        if any(pad):
            x = F.pad(x, [0, 0] + pad)
        parts = [x[(slice(None), *(slice(o, None, 2) for o in off))] for off in self.offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))
