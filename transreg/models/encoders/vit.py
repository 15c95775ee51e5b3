"""Hybrid ViT encoder (ViT-V-Net, Chen et al. 2021), 2-D and 3-D.

A CNN stem extracts full- to low-resolution features; a strided convolution cuts its
deepest map into ``patch``-sized tokens; a learned absolute position embedding (resized
when the input grid differs from ``img_size``) is added; pre-norm transformer blocks and
a final LayerNorm follow. The tokens come back as a channels-first map.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..layers import ConvAct, WindowAttention, conv_nd, max_pool_nd, resize_pos_embed
from ..layers.checkpointing import maybe_checkpoint
from ..layers.timm_parts import Mlp

__all__ = ["ConvStem", "ViTBlock", "ViTEncoder"]


def _double_conv(ndim: int, in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3×3 convolutions (with bias), each followed by ReLU (= LeakyReLU(0))."""
    return nn.Sequential(ConvAct(ndim, in_ch, out_ch, slope=0.0), ConvAct(ndim, out_ch, out_ch, slope=0.0))


class ConvStem(nn.Module):
    """ViT-V-Net's CNN stem.

    Level 0: two convs at full resolution; level ``i > 0``: 2× max-pool, two convs; then
    ``extra_pools`` further 2× max-pools of the last map. ``(B, in_ch, *S)`` → a list,
    fine to coarse, of ``(B, channels[i], *S / 2^i)`` followed by the pooled maps
    ``(B, channels[-1], *S / 2^(L - 1 + j))``, ``j = 1..extra_pools``.
    """

    def __init__(self, ndim: int, in_ch: int, channels: Sequence[int], extra_pools: int):
        super().__init__()
        widths = [in_ch, *channels]
        self.levels = nn.ModuleList(_double_conv(ndim, widths[i], widths[i + 1]) for i in range(len(channels)))
        self.pool = max_pool_nd(ndim)(2)
        self.extra_pools = extra_pools
        last = len(channels) - 1
        self.feature_info = [{"num_chs": c, "reduction": 2**i, "module": f"levels.{i}"} for i, c in enumerate(channels)]
        self.feature_info += [
            {"num_chs": channels[-1], "reduction": 2 ** (last + j), "module": "pool"} for j in range(1, extra_pools + 1)
        ]
        self.grad_checkpointing = False

    def _pool(self, x: Tensor) -> Tensor:
        """2× max pooling in ``x``'s dtype: exact in any dtype, while CPU autocast would
        pool (and keep for the backward pass) a float32 copy of a bf16 map."""
        with torch.autocast(x.device.type, enabled=False):
            return self.pool(x)

    def _level(self, i: int, x: Tensor) -> Tensor:
        return self.levels[i](self._pool(x) if i > 0 else x)

    def forward(self, x: Tensor) -> list[Tensor]:
        """With ``grad_checkpointing`` (training) each level's inner maps (its first
        convolution's output, the pooling indices) are recomputed in the backward pass."""
        features = []
        for i in range(len(self.levels)):
            x = maybe_checkpoint(self, self._level, i, x)
            features.append(x)
        for _ in range(self.extra_pools):
            x = self._pool(x)
            features.append(x)
        return features


class ViTBlock(nn.Module):
    """Pre-norm transformer block on tokens ``(B, N, C)``: LN → multi-head self-attention
    over all tokens → residual; LN → MLP (GELU) → residual. LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        # Global attention = one window holding every token, without relative bias.
        self.attn = WindowAttention(dim, (), num_heads, qkv_bias=True, attn_drop=attn_drop,
                                    proj_drop=attn_drop, rel_pos_bias=False)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.GELU, drop=drop)
        for fc in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), ())
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Hybrid ViT encoder.

    Input ``(B, in_ch, *S)``, ``S`` divisible by :attr:`size_divisor`
    (``2^(len(stem_channels) - 1) · patch_size``). Output: the stem features (see
    :class:`ConvStem`) followed by the transformer tokens as a map
    ``(B, hidden_size, *S / size_divisor)``, all listed in :attr:`feature_info`.
    ``img_size`` sets the position-embedding grid (``img_size / size_divisor``); other
    input sizes get it (bi/tri)linearly resized.
    """

    def __init__(
        self,
        ndim: int = 3,
        in_ch: int = 2,
        img_size: Sequence[int] = (160, 192, 224),
        stem_channels: Sequence[int] = (16, 32, 32),
        extra_pools: int = 2,
        patch_size: int = 8,
        hidden_size: int = 252,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
    ):
        super().__init__()
        if len(img_size) != ndim:
            raise ValueError(f"img_size {tuple(img_size)} needs {ndim} entries")
        self.stem = ConvStem(ndim, in_ch, stem_channels, extra_pools)
        self.size_divisor = 2 ** (len(stem_channels) - 1) * patch_size
        if any(s < self.size_divisor for s in img_size):
            raise ValueError(f"img_size {tuple(img_size)} is smaller than one patch ({self.size_divisor} voxels)")
        self.patch_embed = conv_nd(ndim)(stem_channels[-1], hidden_size, patch_size, stride=patch_size)
        grid = [s // self.size_divisor for s in img_size]
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *grid))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            ViTBlock(hidden_size, num_heads, mlp_dim, drop_rate, attn_drop_rate) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.feature_info = self.stem.feature_info + [
            {"num_chs": hidden_size, "reduction": self.size_divisor, "module": "norm"}
        ]
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the stem levels and the transformer blocks in the backward pass."""
        self.grad_checkpointing = enable
        self.stem.grad_checkpointing = enable

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.stem(x)
        deepest = features[len(self.stem.levels) - 1]
        tokens = self.patch_embed(deepest)  # (B, hidden, *grid)
        grid = tokens.shape[2:]
        tokens = tokens + resize_pos_embed(self.pos_embed, grid)
        tokens = self.pos_drop(tokens.flatten(2).transpose(1, 2))  # (B, N, hidden)
        for block in self.blocks:
            tokens = maybe_checkpoint(self, block, tokens)
        tokens = self.norm(tokens)
        features.append(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid))
        return features
