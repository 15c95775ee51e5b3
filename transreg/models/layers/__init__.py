"""Shared building blocks (2-D and 3-D)."""
from .attention import WindowAttention
from .conv import (
    ConvAct,
    ConvNormAct,
    avg_pool_nd,
    conv_concat,
    conv_nd,
    linear_mode,
    max_pool_nd,
)
from .memory_format import channels_last
from .norm import BatchNormAct, InstanceNormAct, instance_norm_act
from .patch import PatchEmbed, PatchMerging
from .pos_embed import resize_pos_embed, sinusoidal_pos_embed
from .windows import relative_position_index, shifted_window_mask, window_partition, window_reverse

__all__ = [
    "WindowAttention",
    "ConvAct",
    "ConvNormAct",
    "channels_last",
    "conv_concat",
    "avg_pool_nd",
    "max_pool_nd",
    "conv_nd",
    "BatchNormAct",
    "InstanceNormAct",
    "instance_norm_act",
    "linear_mode",
    "PatchEmbed",
    "PatchMerging",
    "resize_pos_embed",
    "sinusoidal_pos_embed",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
