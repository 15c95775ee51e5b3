"""Encoders; each exposes ``feature_info`` (channels and stride per stage)."""
from .swin import SwinEncoder

__all__ = ["SwinEncoder"]
