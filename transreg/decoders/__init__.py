"""Decoders and flow heads."""
from .heads import DiffeomorphicHead, FlowHead
from .unet import InputConvSkips, SkipDecoder, UpBlock

__all__ = ["DiffeomorphicHead", "FlowHead", "InputConvSkips", "SkipDecoder", "UpBlock"]
