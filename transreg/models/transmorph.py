"""TransMorph (Chen et al., MedIA 2022): Swin encoder + CNN decoder, 2-D and 3-D.

Defaults are the original 3-D configuration (input 160×192×224, window 5×6×7,
patch 4, depths 2-2-4-2); every ``create_model`` override maps to an argument here.
Ablations of the paper: ``conv_skip=False``, ``trans_skip=False``,
``rel_pos_bias=False``, ``pos_embed="learned" | "sinusoidal"``.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from .decoders import DiffeomorphicHead, FlowHead, InputConvSkips, SkipDecoder
from .encoders import SwinEncoder
from ..zoo.registry import register_model
from .base import RegistrationModel, records_init_args

__all__ = ["TransMorph"]

_DEFAULT_SIZE = {2: (160, 192), 3: (160, 192, 224)}


class TransMorph(RegistrationModel):
    """Swin encoder → five ×2 up-blocks with encoder and input skips → flow head.

    ``diffeomorphic=True`` is TransMorph-diff: four up-blocks to half resolution, a
    (probabilistic) velocity head and scaling and squaring.
    ``conv_skip=False`` keeps the input-skip convolutions' parameters (unused), as the
    original ablation does, so its checkpoints load and the parameter count matches.
    """

    @records_init_args
    def __init__(
        self,
        ndim: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | None = None,
        window_size: Sequence[int] | None = None,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 4, 2),
        num_heads: Sequence[int] = (4, 4, 8, 8),
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        pos_embed: str | None = None,
        rel_pos_bias: bool = True,
        reg_head_chan: int = 16,
        conv_skip: bool = True,
        trans_skip: bool = True,
        diffeomorphic: bool = False,
        int_steps: int = 7,
        probabilistic: bool = True,
        rescale_upsampled: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        img_size = tuple(img_size or _DEFAULT_SIZE[ndim])
        window_size = tuple(window_size or (s // 32 for s in img_size))
        self.ndim = ndim
        self.in_channels = in_channels
        self.conv_skip = conv_skip
        self.trans_skip = trans_skip
        e, r = embed_dim, reg_head_chan
        self.encoder = SwinEncoder(
            ndim, 2 * in_channels, img_size, patch_size, embed_dim, depths, num_heads, window_size,
            mlp_ratio, qkv_bias, drop_rate, 0.0, drop_path_rate, pos_embed, rel_pos_bias,
            grad_checkpointing=grad_checkpointing,
        )
        self.size_divisor = self.encoder.size_divisor
        self.input_skips = InputConvSkips(ndim, 2 * in_channels, e // 2, None if diffeomorphic else r)
        t = 1 if trans_skip else 0
        c = 1 if conv_skip else 0
        if diffeomorphic:
            channels, skips = [4 * e, 2 * e, e, r], [4 * e * t, 2 * e * t, e * t, e // 2 * c]
            self.head: FlowHead | DiffeomorphicHead = DiffeomorphicHead(
                ndim, r, int_steps, probabilistic, rescale_upsampled
            )
        else:
            channels, skips = [4 * e, 2 * e, e, e // 2, r], [4 * e * t, 2 * e * t, e * t, e // 2 * c, r * c]
            self.head = FlowHead(ndim, r)
        self.decoder = SkipDecoder(ndim, 8 * e, channels, skips)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.encoder(x)
        n_blocks = len(self.decoder.blocks)
        skips: list[Tensor | None] = [None] * n_blocks
        if self.trans_skip:
            skips[:3] = features[-2::-1][:3]
        if self.conv_skip:
            skips[3:] = self.input_skips(x)[: n_blocks - 3]
        out = self.decoder(features[-1], skips)
        if isinstance(self.head, DiffeomorphicHead):
            return self.head(out, x.shape[2:])
        return self.head(out), None


def _build(defaults: dict[str, Any], overrides: dict[str, Any]) -> TransMorph:
    return TransMorph(**{**defaults, **overrides})


@register_model
def transmorph(**kwargs: Any) -> TransMorph:
    """TransMorph: embed 96, depths 2-2-4-2, heads 4-4-8-8 (46.8 M parameters in 3-D)."""
    return _build({}, kwargs)


@register_model
def transmorph_large(**kwargs: Any) -> TransMorph:
    """TransMorph-Large: embed 128, depths 2-2-12-2, heads 4-4-8-16."""
    return _build({"embed_dim": 128, "depths": (2, 2, 12, 2), "num_heads": (4, 4, 8, 16)}, kwargs)


@register_model
def transmorph_small(**kwargs: Any) -> TransMorph:
    """TransMorph-Small: embed 48, depths 2-2-4-2, heads 4-4-4-4."""
    return _build({"embed_dim": 48, "num_heads": (4, 4, 4, 4)}, kwargs)


@register_model
def transmorph_tiny(**kwargs: Any) -> TransMorph:
    """TransMorph-Tiny: embed 6, depths 2-2-4-2, heads 2-2-4-4."""
    return _build({"embed_dim": 6, "num_heads": (2, 2, 4, 4)}, kwargs)


@register_model
def transmorph_diff(**kwargs: Any) -> TransMorph:
    """TransMorph-diff: probabilistic diffeomorphic variant (velocity at half resolution)."""
    return _build({"diffeomorphic": True}, kwargs)


# Reduced widths for CPU training on 2 mm brains (the zoo's *_micro models): the
# full-resolution decoder width (reg_head_chan), which dominates CPU time, is halved and
# each Swin stage has one block; the window is (grid of the 96×112×96 2 mm brain) / 32.
_MICRO = {"embed_dim": 12, "depths": (1, 1, 2, 1), "num_heads": (2, 2, 4, 4), "reg_head_chan": 8}
_MICRO_SIZE = {2: (96, 112), 3: (96, 112, 96)}


def _micro(defaults: dict[str, Any], kwargs: dict[str, Any]) -> TransMorph:
    size = {"img_size": _MICRO_SIZE[kwargs.get("ndim", 3)]}
    return _build({**_MICRO, **size, **defaults}, kwargs)


@register_model
def transmorph_micro(**kwargs: Any) -> TransMorph:
    """TransMorph-Micro (transreg, for CPU training): embed 12, depths 1-1-2-1, heads 2-2-4-4,
    full-resolution decoder width 8, img_size 96×112×96 (window 3×3×3)."""
    return _micro({}, kwargs)


@register_model
def transmorph_diff_micro(**kwargs: Any) -> TransMorph:
    """TransMorph-diff at the Micro widths; deterministic velocity (no KL term needed)."""
    return _micro({"diffeomorphic": True, "probabilistic": False}, kwargs)
