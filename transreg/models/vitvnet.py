"""ViT-V-Net (Chen et al., 2021): hybrid ViT encoder + CNN decoder, 2-D and 3-D.

Defaults are the configuration of the TransMorph paper's baseline (input 160×192×224,
hidden 252, 12 layers of 12 heads, MLP 3072, patch 8 on the ¼-resolution stem map;
31,560,079 parameters in 3-D). Any input size works: it is padded to a multiple of 32
and the position embedding is resized to the token grid.
"""
from __future__ import annotations

from typing import Any, Sequence

import math

from torch import Tensor

from .decoders import FlowHead, ViTVNetDecoder
from .encoders import ViTEncoder
from .layers import channels_last
from ..zoo.registry import register_model
from .base import InputError, RegistrationModel, records_init_args

__all__ = ["ViTVNet"]

_DEFAULT_SIZE = {2: (160, 192), 3: (160, 192, 224)}


class ViTVNet(RegistrationModel):
    """Hybrid ViT → ``conv_more`` → ×2 up-blocks with stem skips → flow head.

    Decoder block ``i`` (``i < n_skip``) takes the stem feature at its resolution;
    ``len(decoder_channels)`` blocks must bring the token map back to full resolution.
    """

    @records_init_args
    def __init__(
        self,
        ndim: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | None = None,
        stem_channels: Sequence[int] = (16, 32, 32),
        extra_pools: int = 2,
        patch_size: int = 8,
        hidden_size: int = 252,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
        head_channels: int = 512,
        decoder_channels: Sequence[int] = (96, 48, 32, 32, 16),
        n_skip: int = 5,
    ):
        super().__init__()
        self.ndim = ndim
        self.in_channels = in_channels
        self.encoder = ViTEncoder(
            ndim, 2 * in_channels, tuple(img_size or _DEFAULT_SIZE[ndim]), stem_channels, extra_pools,
            patch_size, hidden_size, depth, num_heads, mlp_dim, drop_rate, attn_drop_rate,
        )
        self.size_divisor = self.encoder.size_divisor
        if 2 ** len(decoder_channels) != self.size_divisor:
            raise ValueError(
                f"{len(decoder_channels)} decoder blocks upsample by {2 ** len(decoder_channels)}, but the "
                f"tokens are at 1/{self.size_divisor} resolution"
            )
        by_stride = {f["reduction"]: i for i, f in enumerate(self.encoder.feature_info[:-1])}
        self.skip_index: list[int | None] = [
            by_stride.get(self.size_divisor >> (i + 1)) if i < n_skip else None for i in range(len(decoder_channels))
        ]
        self.skip_channels = [0 if j is None else self.encoder.feature_info[j]["num_chs"] for j in self.skip_index]
        self.decoder = ViTVNetDecoder(ndim, hidden_size, head_channels, decoder_channels, self.skip_channels)
        self.head = FlowHead(ndim, decoder_channels[-1])

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        tokens = x.shape[0] * math.prod(s // self.size_divisor for s in x.shape[2:])
        if self.training and tokens < 2:
            raise InputError(
                f"ViT-V-Net's BatchNorm needs more than one token per channel in training, but a batch of "
                f"{x.shape[0]} at {tuple(x.shape[2:])} (padded) gives {tokens}: use a batch of 2 or more, or "
                f"images larger than {self.size_divisor} voxels along some axis"
            )
        features = self.encoder(channels_last(x))  # the stem then writes its skips in the decoder's layout
        tokens = features[-1]
        skips = [None if j is None else features[j] for j in self.skip_index]
        del features  # the decoder frees each skip once used (SkipDecoder.forward)
        return self.head(self.decoder(tokens, skips)), None


@register_model
def vitvnet(**kwargs: Any) -> ViTVNet:
    """ViT-V-Net: hidden 252, 12 layers, 12 heads, MLP 3072, patch 8 (31.6 M parameters in 3-D)."""
    return ViTVNet(**kwargs)


_MICRO_SIZE = {2: (96, 128), 3: (96, 128, 96)}  # the 2 mm brain grid 96×112×96, padded to 32


@register_model
def vitvnet_micro(**kwargs: Any) -> ViTVNet:
    """ViT-V-Net-Micro (transreg, for CPU training): stem 8-16-16, hidden 96, 4 layers of 4
    heads, MLP 384, head 64, decoder 48-32-32-16-16 (its last two levels at ViT-V-Net's
    widths); position grid of a 96×112×96 input."""
    defaults = {"stem_channels": (8, 16, 16), "hidden_size": 96, "depth": 4, "num_heads": 4, "mlp_dim": 384,
                "head_channels": 64, "decoder_channels": (48, 32, 32, 16, 16),
                "img_size": _MICRO_SIZE[kwargs.get("ndim", 3)]}
    return ViTVNet(**{**defaults, **kwargs})
