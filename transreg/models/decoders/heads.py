"""Flow heads: a dense displacement head and a diffeomorphic (velocity) head."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..layers import conv_nd
from ...spatial import integrate, resize_flow

__all__ = ["FlowHead", "DiffeomorphicHead"]


def _small_conv(ndim: int, in_ch: int, std: float, bias: float = 0.0) -> nn.Module:
    conv = conv_nd(ndim)(in_ch, ndim, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, 0.0, std)
    nn.init.constant_(conv.bias, bias)
    return conv


class FlowHead(nn.Module):
    """3×3 convolution to an ``ndim``-channel displacement in voxels, init N(0, 1e-5)."""

    def __init__(self, ndim: int, in_ch: int):
        super().__init__()
        self.conv = _small_conv(ndim, in_ch, 1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DiffeomorphicHead(nn.Module):
    """Stationary velocity → scaling and squaring → displacement.

    The velocity (voxels of the grid it lives on) is predicted at the resolution of the
    features, integrated there with ``steps`` squarings and resized to the output size.
    ``probabilistic`` adds a log-variance branch: during training the velocity is
    sampled as ``mean + exp(log_sigma / 2) · ε`` (Dalca et al. 2019); in eval the mean.
    ``rescale_upsampled`` multiplies the vectors by the resize factor (correct units);
    ``False`` reproduces TransMorphDiff, which keeps half-resolution voxel units.
    """

    def __init__(self, ndim: int, in_ch: int, steps: int = 7, probabilistic: bool = False,
                 rescale_upsampled: bool = True):
        super().__init__()
        self.steps = steps
        self.rescale_upsampled = rescale_upsampled
        self.mean = _small_conv(ndim, in_ch, 1e-5)
        self.log_sigma = _small_conv(ndim, in_ch, 1e-10, bias=-10.0) if probabilistic else None

    def forward(self, x: Tensor, out_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Features ``(B, in_ch, *S)`` → (displacement ``(B, ndim, *out_size)``, velocity)."""
        velocity = self.mean(x)
        if self.log_sigma is not None and self.training:
            velocity = velocity + torch.exp(self.log_sigma(x) / 2.0) * torch.randn_like(velocity)
        flow = integrate(velocity, self.steps)
        if tuple(flow.shape[2:]) != tuple(out_size):
            flow = resize_flow(flow, out_size, rescale=self.rescale_upsampled)
        return flow, velocity
