"""Image synthesis from label maps (the SynthMorph recipe), 2-D and 3-D, in torch.

Every function draws its randomness from an explicit ``torch.Generator`` so a sample is a
pure function of its seed (needed for exact resume and identical DDP ranks).

Recipe (Hoffmann et al., SynthMorph, IEEE TMI 2022; Billot et al., SynthSeg):
label map → smooth random deformation → per-label Gaussian intensities (random mean
and std per label) → Gaussian blur → smooth multiplicative bias field → min-max
normalisation → random gamma. Label maps come from real anatomy or from random shapes
(argmax of smooth noise images).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..spatial import integrate, warp

__all__ = [
    "smooth_noise",
    "gaussian_blur",
    "random_shapes",
    "random_deformation",
    "synthesize_image",
    "deform_labels",
]


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def smooth_noise(shape: Sequence[int], channels: int, coarse: Sequence[int], gen: torch.Generator, std: float = 1.0) -> Tensor:
    """Gaussian noise ``N(0, std)`` drawn on the grid ``coarse`` and upsampled (linearly)
    to ``shape`` → ``(1, channels, *shape)`` float32."""
    coarse = [max(2, int(c)) for c in coarse]
    noise = torch.randn(1, channels, *coarse, generator=gen) * std
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=tuple(shape), mode=mode, align_corners=True)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, *spatial)`` with ``sigma`` voxels (zero-padded
    borders renormalised, so flat images stay flat)."""
    if sigma <= 0:
        return image
    ndim = image.dim() - 2
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    conv = F.conv2d if ndim == 2 else F.conv3d
    channels = image.shape[1]
    out, weight = image, torch.ones_like(image[:, :1])
    for axis in range(ndim):
        view = [1] * ndim
        view[axis] = kernel.numel()
        k = kernel.view(1, 1, *view)
        padding = [0] * ndim
        padding[axis] = radius
        out = conv(out, k.expand(channels, 1, *view), padding=padding, groups=channels)
        weight = conv(weight, k, padding=padding)
    return out / weight


def random_shapes(shape: Sequence[int], num_labels: int, gen: torch.Generator, scale: int = 8) -> Tensor:
    """A label map of random blobs: argmax over ``num_labels`` smooth noise images drawn on a
    grid ``scale`` times coarser than ``shape`` → ``(1, 1, *shape)`` int64 in [0, num_labels)."""
    if num_labels < 2:
        raise ValueError(f"num_labels must be >= 2, got {num_labels}")
    noise = smooth_noise(shape, num_labels, [s // scale for s in shape], gen)
    return noise.argmax(dim=1, keepdim=True)


def random_deformation(shape: Sequence[int], gen: torch.Generator, max_std: float = 2.0, scale: int = 8, steps: int = 5) -> Tensor:
    """A smooth diffeomorphic displacement ``(1, ndim, *shape)`` in voxels: a stationary
    velocity ``N(0, σ)``, ``σ ~ U(0, max_std)`` voxels, drawn on a grid ``scale`` times
    coarser, upsampled and integrated by scaling and squaring."""
    sigma = _uniform(gen, 0.0, max_std)
    velocity = smooth_noise(shape, len(shape), [s // scale for s in shape], gen, std=sigma)
    return integrate(velocity, steps=steps)


def synthesize_image(
    labels: Tensor,
    num_labels: int,
    gen: torch.Generator,
    std_range: tuple[float, float] = (0.0, 0.1),
    max_blur: float = 1.0,
    max_bias: float = 0.3,
    gamma_std: float = 0.25,
    means: Tensor | None = None,
) -> Tensor:
    """A random-contrast image for an integer label map ``(1, 1, *S)`` (values in
    ``[0, num_labels)``) → ``(1, 1, *S)`` float32 in ``[0, 1]``.

    Per label: mean ``~ U(0, 1)`` (or ``means[label]`` if given), std ``~ U(*std_range)``; then blur with ``σ ~ U(0,
    max_blur)`` voxels, multiply by ``exp`` of a smooth field with std ``~ U(0, max_bias)``,
    rescale to [0, 1] and apply ``x ** exp(N(0, gamma_std))``.
    """
    shape = labels.shape[2:]
    if means is None:
        means = torch.rand(num_labels, generator=gen)
    stds = std_range[0] + (std_range[1] - std_range[0]) * torch.rand(num_labels, generator=gen)
    flat = labels.reshape(-1)
    image = means[flat] + stds[flat] * torch.randn(flat.shape, generator=gen)
    image = image.view(1, 1, *shape)
    image = gaussian_blur(image, _uniform(gen, 0.0, max_blur))
    bias_std = _uniform(gen, 0.0, max_bias)
    image = image * torch.exp(smooth_noise(shape, 1, [4] * len(shape), gen, std=bias_std))
    low, high = image.min(), image.max()
    image = (image - low) / (high - low).clamp_min(1e-6)
    gamma = math.exp(gamma_std * float(torch.randn((), generator=gen)))
    return image.clamp_min(0.0) ** gamma


def deform_labels(labels: Tensor, flow: Tensor) -> Tensor:
    """Warp an integer label map ``(1, 1, *S)`` with nearest-neighbour sampling."""
    return warp(labels, flow, mode="nearest")
