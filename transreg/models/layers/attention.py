"""Window multi-head self-attention with a learned relative position bias (Swin)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .timm_parts import trunc_normal_
from .windows import relative_position_index

__all__ = ["WindowAttention"]


class WindowAttention(nn.Module):
    """(Shifted-)window attention over ``(B * nW, N, C)`` token windows.

    The bias table has ``prod(2 * window - 1)`` rows per head; a smaller window (clipped
    to a small feature map) reads the matching sub-table, so the parameters depend on the
    configured window only. Runs through fused ``scaled_dot_product_attention`` with the
    bias (+ shift mask) as the additive attention mask.
    """

    def __init__(
        self,
        dim: int,
        window: Sequence[int],
        num_heads: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window = tuple(window)
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if rel_pos_bias:
            rows = math.prod(2 * w - 1 for w in self.window)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            trunc_normal_(self.relative_position_bias_table, std=0.02)
        else:
            self.register_parameter("relative_position_bias_table", None)
        self._index_cache: dict[tuple[int, ...], Tensor] = {}

    def _bias(self, window: tuple[int, ...], device: torch.device) -> Tensor:
        """``(heads, N, N)`` relative position bias for ``window``."""
        index = self._index_cache.get(window)
        if index is None or index.device != device:
            index = relative_position_index(window, self.window).to(device)
            self._index_cache[window] = index
        n = index.shape[0]
        table = self.relative_position_bias_table
        return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, window: tuple[int, ...], mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B * nW, N, C)``; ``mask`` ``(nW, N, N)`` additive or None.

        q, k, v stay 4-D ``(B * nW, heads, N, d)``: the fused CPU/GPU kernels take only
        4-D inputs (a 5-D call falls back to the unfused math path, ~2.5× slower). The
        shift mask and the bias are summed once into ``(nW, heads, N, N)``, repeated over
        the batch only when ``B > 1``.
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B*nW, heads, N, d)
        attn_mask = None
        if self.relative_position_bias_table is not None:
            attn_mask = self._bias(window, x.device).unsqueeze(0).to(q.dtype)  # (1, heads, N, N)
        if mask is not None:
            n_win = mask.shape[0]
            mask = mask.unsqueeze(1).to(q.dtype)  # (nW, 1, N, N)
            attn_mask = mask if attn_mask is None else attn_mask + mask
            if bw != n_win:
                attn_mask = attn_mask.expand(bw // n_win, *attn_mask.shape).reshape(bw, *attn_mask.shape[1:])
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))
