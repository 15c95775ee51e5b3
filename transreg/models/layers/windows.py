"""Window partitioning, relative position index and shifted-window masks (2-D / 3-D).

Feature maps are channels-last here: ``(B, *S, C)``; a window holds ``N = prod(w)``
tokens.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["window_partition", "window_reverse", "relative_position_index", "shifted_window_mask"]


def window_partition(x: Tensor, window: Sequence[int]) -> Tensor:
    """``(B, *S, C)`` with ``S`` divisible by ``window`` → ``(B * nW, N, C)``."""
    b, *spatial, c = x.shape
    ndim = len(spatial)
    shape = [b]
    for s, w in zip(spatial, window):
        shape += [s // w, w]
    x = x.view(*shape, c)
    perm = [0] + [1 + 2 * i for i in range(ndim)] + [2 + 2 * i for i in range(ndim)] + [2 * ndim + 1]
    return x.permute(*perm).reshape(-1, math.prod(window), c)


def window_reverse(windows: Tensor, window: Sequence[int], spatial: Sequence[int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, N, C)`` → ``(B, *spatial, C)``."""
    ndim = len(spatial)
    counts = [s // w for s, w in zip(spatial, window)]
    c = windows.shape[-1]
    x = windows.view(-1, *counts, *window, c)
    perm = [0]
    for i in range(ndim):
        perm += [1 + i, 1 + ndim + i]
    return x.permute(*perm + [2 * ndim + 1]).reshape(-1, *spatial, c)


def relative_position_index(window: Sequence[int], table_window: Sequence[int] | None = None) -> Tensor:
    """``(N, N)`` indices into a ``prod(2 * table_window - 1)``-row bias table.

    ``table_window`` is the window the table was built for; ``window`` (≤ it, per axis)
    the window actually used, e.g. clipped to a small feature map.
    """
    table_window = tuple(table_window or window)
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (ndim, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, tw in enumerate(table_window):
        stride = math.prod(2 * t - 1 for t in table_window[axis + 1 :])
        index += (rel[axis] + tw - 1) * stride
    return index


def shifted_window_mask(
    spatial: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device | None = None
) -> Tensor:
    """Additive mask ``(nW, N, N)``: 0 within a region of the rolled map, −100 across."""
    img = torch.zeros((1, *spatial, 1), device=device)
    per_axis = []
    for w, s in zip(window, shift):
        per_axis.append((slice(0, -w), slice(-w, -s), slice(-s, None)) if s > 0 else (slice(None),))
    for count, region in enumerate(itertools.product(*per_axis)):
        img[(slice(None), *region, slice(None))] = count
    regions = window_partition(img, window).squeeze(-1)  # (nW, N)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0)
