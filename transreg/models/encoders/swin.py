"""Swin Transformer encoder (2-D and 3-D), as in TransMorph.

Conv patch embedding, stages of (shifted-)window attention blocks with a learned
relative position bias, patch merging between stages, a LayerNorm on every output.
``forward`` returns one channels-first feature map per stage (strides ``patch · 2^i``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import (
    PatchEmbed,
    PatchMerging,
    WindowAttention,
    resize_pos_embed,
    shifted_window_mask,
    sinusoidal_pos_embed,
    window_partition,
    window_reverse,
)
from ..layers.checkpointing import maybe_checkpoint
from ..layers.timm_parts import DropPath, Mlp, trunc_normal_

__all__ = ["SwinEncoder", "SwinBlock", "SwinStage"]


def _clip_window(spatial: Sequence[int], window: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift for a feature map: a window larger than the map is clipped to it
    (and not shifted along that axis)."""
    win = tuple(min(w, s) for w, s in zip(window, spatial))
    shift = tuple(w // 2 if s >= w else 0 for w, s in zip(window, spatial))
    return win, shift


class SwinBlock(nn.Module):
    """LN → (S)W-MSA → residual → LN → MLP → residual, on channels-last ``(B, *S, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Sequence[int],
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        rel_pos_bias: bool = True,
    ):
        super().__init__()
        self.window = tuple(window)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, attn_drop, drop, rel_pos_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, masks: dict) -> Tensor:
        spatial = x.shape[1:-1]
        ndim = len(spatial)
        window, shift = _clip_window(spatial, self.window)
        if not self.shifted:
            shift = (0,) * ndim
        h = self.norm1(x)
        pad = []
        for s, w in zip(reversed(spatial), reversed(window)):
            pad += [0, (w - s % w) % w]
        if any(pad):
            h = F.pad(h, [0, 0] + pad)
        padded = h.shape[1:-1]
        dims = tuple(range(1, ndim + 1))
        mask = None
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=dims)
            key = (padded, window, shift)
            if key not in masks:
                masks[key] = shifted_window_mask(padded, window, shift, device=x.device)
            mask = masks[key]
        windows = self.attn(window_partition(h, window), window, mask)
        h = window_reverse(windows, window, padded)
        if any(shift):
            h = torch.roll(h, shifts=shift, dims=dims)
        if any(pad):
            h = h[(slice(None), *(slice(0, s) for s in spatial))]
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then optional merging."""

    def __init__(self, ndim: int, dim: int, depth: int, num_heads: int, window: Sequence[int],
                 drop_path: Sequence[float], downsample: bool, grad_checkpointing: bool = False, **block_args):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, shifted=i % 2 == 1, drop_path=drop_path[i], **block_args)
            for i in range(depth)
        )
        self.downsample = PatchMerging(ndim, dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, *S, C)`` → (stage output ``(B, *S, C)``, merged ``(B, *S/2, 2C)`` or the same)."""
        masks: dict = {}
        for block in self.blocks:
            x = maybe_checkpoint(self, block, x, masks)
        return x, (self.downsample(x) if self.downsample is not None else x)


class SwinEncoder(nn.Module):
    """Swin Transformer encoder.

    Input ``(B, in_ch, *S)`` with ``S`` divisible by ``patch_size · 2^(stages − 1)``;
    output: a list of ``(B, embed_dim · 2^i, *S / (patch_size · 2^i))``.
    ``pos_embed``: ``None``, ``"learned"`` (absolute, resized to the input) or
    ``"sinusoidal"``.
    """

    def __init__(
        self,
        ndim: int = 3,
        in_ch: int = 2,
        img_size: Sequence[int] = (160, 192, 224),
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 4, 2),
        num_heads: Sequence[int] = (4, 4, 8, 8),
        window_size: Sequence[int] = (5, 6, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        pos_embed: str | None = None,
        rel_pos_bias: bool = True,
        patch_norm: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if len(window_size) != ndim or len(img_size) != ndim:
            raise ValueError(f"window_size {window_size} and img_size {img_size} need {ndim} entries")
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads need the same length")
        self.ndim = ndim
        self.pos_embed_kind = pos_embed
        self.patch_embed = PatchEmbed(ndim, patch_size, in_ch, embed_dim, norm=patch_norm)
        if pos_embed == "learned":
            grid = [s // patch_size for s in img_size]
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        elif pos_embed not in (None, "sinusoidal"):
            raise ValueError(f"pos_embed must be None, 'learned' or 'sinusoidal', got {pos_embed!r}")
        self.pos_drop = nn.Dropout(drop_rate)
        n_blocks = sum(depths)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # stochastic depth rule
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.feature_info = []
        start = 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            self.stages.append(
                SwinStage(
                    ndim, dim, depth, heads, window_size, rates[start : start + depth],
                    downsample=i < len(depths) - 1, grad_checkpointing=grad_checkpointing,
                    mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                    rel_pos_bias=rel_pos_bias,
                )
            )
            self.norms.append(nn.LayerNorm(dim))
            self.feature_info.append({"num_chs": dim, "reduction": patch_size * 2**i, "module": f"stages.{i}"})
            start += depth
        self.size_divisor = patch_size * 2 ** (len(depths) - 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        if self.pos_embed_kind == "learned":
            x = x + resize_pos_embed(self.absolute_pos_embed, x.shape[2:])
        elif self.pos_embed_kind == "sinusoidal":
            x = x + sinusoidal_pos_embed(x.shape[1], x.shape[2:], device=x.device, dtype=x.dtype)
        x = self.pos_drop(x.movedim(1, -1))
        features = []
        for stage, norm in zip(self.stages, self.norms):
            out, x = stage(x)
            features.append(norm(out).movedim(-1, 1))  # channels-last layout, no copy
        return features
