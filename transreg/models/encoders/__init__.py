"""Encoders; each exposes ``feature_info`` (channels and stride per stage)."""
from .cnn import UNetEncoder
from .swin import SwinEncoder
from .vit import ViTEncoder

__all__ = ["SwinEncoder", "UNetEncoder", "ViTEncoder"]
