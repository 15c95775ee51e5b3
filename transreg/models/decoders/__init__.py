"""Decoders and flow heads."""
from .heads import DiffeomorphicHead, FlowHead
from .unet import InputConvSkips, SkipDecoder, UpBlock
from .vitvnet import ViTVNetDecoder
from .voxelmorph import VxmDecoder

__all__ = ["DiffeomorphicHead", "FlowHead", "InputConvSkips", "SkipDecoder", "UpBlock", "ViTVNetDecoder", "VxmDecoder"]
