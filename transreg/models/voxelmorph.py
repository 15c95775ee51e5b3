"""VoxelMorph (Balakrishnan et al., TMI 2019): U-Net → dense displacement, 2-D and 3-D.

``voxelmorph1`` and ``voxelmorph2`` are VxmDense-1 / VxmDense-2 as used as baselines in
the TransMorph paper (274,387 and 301,411 parameters in 3-D). The network is fully
convolutional: any input size works (padded to a multiple of 16).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from .decoders import FlowHead, VxmDecoder
from .encoders import UNetEncoder
from .layers import channels_last
from ..zoo.registry import register_model
from .base import RegistrationModel, records_init_args

__all__ = ["VoxelMorph"]


class VoxelMorph(RegistrationModel):
    """U-Net encoder (stride-2 convs) → U-Net decoder (+ full-resolution convs) → flow head.

    ``enc_channels``: one width per level; ``dec_channels``: one per level, then the
    full-resolution convolutions (VoxelMorph's ``nb_unet_features``).
    """

    @records_init_args
    def __init__(
        self,
        ndim: int = 3,
        in_channels: int = 1,
        enc_channels: Sequence[int] = (16, 32, 32, 32),
        dec_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
    ):
        super().__init__()
        self.ndim = ndim
        self.in_channels = in_channels
        self.encoder = UNetEncoder(ndim, 2 * in_channels, enc_channels)
        self.size_divisor = self.encoder.size_divisor
        skip_channels = [2 * in_channels, *enc_channels[:-1]]
        self.decoder = VxmDecoder(ndim, enc_channels[-1], skip_channels, dec_channels)
        self.head = FlowHead(ndim, self.decoder.out_channels)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = channels_last(x)  # once: the encoder's input and the decoder's first skip
        features = self.encoder(x)
        return self.decoder(features[-1], [x, *features[:-1]], head=self.head), None


@register_model
def voxelmorph1(**kwargs: Any) -> VoxelMorph:
    """VoxelMorph-1 (VxmDense-1): encoder 8-32-32-32, decoder 32×5-8-8."""
    return VoxelMorph(**{"enc_channels": (8, 32, 32, 32), "dec_channels": (32, 32, 32, 32, 32, 8, 8), **kwargs})


@register_model
def voxelmorph2(**kwargs: Any) -> VoxelMorph:
    """VoxelMorph-2 (VxmDense-2): encoder 16-32-32-32, decoder 32×5-16-16."""
    return VoxelMorph(**kwargs)
