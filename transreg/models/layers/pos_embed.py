"""Position embeddings: resizing learned ones, dimension-generic sinusoidal ones."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import linear_mode

__all__ = ["resize_pos_embed", "sinusoidal_pos_embed"]


def resize_pos_embed(pos_embed: Tensor, size: Sequence[int]) -> Tensor:
    """``(1, C, *grid)`` → ``(1, C, *size)`` by (bi/tri)linear interpolation."""
    size = tuple(int(s) for s in size)
    if tuple(pos_embed.shape[2:]) == size:
        return pos_embed
    return F.interpolate(pos_embed, size=size, mode=linear_mode(len(size)), align_corners=False)


def sinusoidal_pos_embed(channels: int, size: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
    """Fixed sine/cosine embedding ``(1, channels, *size)``.

    Each axis gets ``k = 2·ceil(channels / (2·ndim))`` channels: ``sin(p·f), cos(p·f)`` for
    frequencies ``f_j = 10000^(−2j/k)``; the axes are concatenated and cut to
    ``channels`` (the TransMorph-Sin embedding in 3-D).
    """
    ndim = len(size)
    k = 2 * math.ceil(channels / (2 * ndim))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, k, 2, device=device, dtype=torch.float32) / k))
    parts = []
    for axis, n in enumerate(size):
        angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (n, k)
        view = [1] * ndim + [k]
        view[axis] = n
        parts.append(emb.view(view).expand(*size, k))
    out = torch.cat(parts, dim=-1)[..., :channels]
    return out.movedim(-1, 0).unsqueeze(0).to(dtype)
