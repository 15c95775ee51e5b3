"""Learned affine registration: one affine map per (moving, fixed) pair.

Two architectures: :class:`AffineNet` (a CNN encoder on the pair + a regression head) and
:class:`KeypointAffineNet` (a shared keypoint detector on each image + the closed-form
least-squares affine between the two keypoint sets, as KeyMorph, Yu et al. 2022).

``AffineNet(moving, fixed)`` returns an :class:`AffineOutput`: the usual ``flow`` (the
dense displacement of the predicted affine on the fixed grid, voxels), ``warped`` and
``matrix`` ``(B, ndim, ndim + 1)``, the voxel map fixed → moving (``q = A p + t``, voxel
indices of the input grid). Because ``flow`` is an ordinary displacement, the trainer's
Dice / similarity losses train the network unchanged.

The head predicts ``ndim(ndim-1)/2`` rotation angles (radians, exponential map of a
skew-symmetric matrix), ``ndim`` log-scales, ``ndim(ndim-1)/2`` shears and ``ndim``
translations (in units of ``translation_scale`` voxels); the map acts about the grid
centre ``c``: ``A = exp(K) · diag(exp(s)) · (I + U)``, ``t = c − A c + translation``.
The head is initialised to zero: an untrained network predicts the identity. The input
grid is assumed isotropic (see :mod:`transreg.registration.learned_affine`, which builds
it from world coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spatial import affine_to_flow, warp
from ..zoo.registry import register_model
from .base import RegistrationModel, RegistrationOutput, records_init_args
from .layers import ConvNormAct, conv_nd

__all__ = ["AffineNet", "KeypointAffineNet", "AffineOutput", "affine_from_parameters", "fit_affine"]


@dataclass
class AffineOutput(RegistrationOutput):
    """:class:`RegistrationOutput` plus ``matrix`` ``(B, ndim, ndim + 1)``: voxel map
    fixed → moving of the input grid."""

    matrix: Tensor | None = None


def affine_from_parameters(params: Tensor, shape: Sequence[int], translation_scale: float = 1.0) -> Tensor:
    """Voxel-space affine ``(B, ndim, ndim + 1)`` about the centre of a grid of ``shape``
    from ``params`` ``(B, 2·ndim + ndim(ndim-1))``: rotations (rad), log-scales, shears,
    translations (× ``translation_scale`` voxels), in that order."""
    ndim = len(shape)
    pairs = ndim * (ndim - 1) // 2
    if params.shape[-1] != 2 * ndim + 2 * pairs:
        raise ValueError(f"{ndim}-D affine parameters need {2 * ndim + 2 * pairs} values, got {params.shape[-1]}")
    rot, log_scale, shear, shift = params.split([pairs, ndim, pairs, ndim], dim=-1)
    rows, cols = torch.triu_indices(ndim, ndim, offset=1, device=params.device)
    batch = params.shape[0]
    skew = params.new_zeros(batch, ndim, ndim)
    skew[:, rows, cols] = rot
    upper = params.new_zeros(batch, ndim, ndim)
    upper[:, rows, cols] = shear
    eye = torch.eye(ndim, device=params.device, dtype=params.dtype)
    linear = torch.matrix_exp(skew - skew.transpose(1, 2)) @ torch.diag_embed(log_scale.exp()) @ (eye + upper)
    centre = (torch.tensor(shape, device=params.device, dtype=params.dtype) - 1) / 2
    t = centre - linear @ centre + shift * translation_scale
    return torch.cat([linear, t[..., None]], dim=-1)


class AffineNet(RegistrationModel):
    """Strided CNN encoder (one stride-2 and one stride-1 ``ConvNormAct`` per level) →
    adaptive average pooling to ``pool_size`` per axis (keeps the layout the regression
    needs) → MLP → affine parameters (see the module docstring).

    ``channels``: the width of each encoder level; ``hidden``: the MLP's hidden width;
    ``translation_scale``: voxels per unit of the translation outputs.
    """

    size_divisor = 1

    @records_init_args
    def __init__(self, ndim: int = 3, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 64),
                 pool_size: int = 3, hidden: int = 256, translation_scale: float = 10.0):
        super().__init__()
        self.ndim = ndim
        self.in_channels = in_channels
        self.translation_scale = translation_scale
        layers: list[nn.Module] = []
        width = 2 * in_channels
        for out in channels:
            layers += [ConvNormAct(ndim, width, out, stride=2), ConvNormAct(ndim, out, out)]
            width = out
        self.encoder = nn.Sequential(*layers)
        self.pool_size = pool_size
        n_params = 2 * ndim + ndim * (ndim - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * pool_size**ndim, hidden),
                                  nn.LeakyReLU(0.01, inplace=True), nn.Linear(hidden, n_params))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def affine_parameters(self, moving: Tensor, fixed: Tensor) -> Tensor:
        """``(B, 2·ndim + ndim(ndim-1))`` parameters for inputs ``(B, C, *S)``."""
        features = self.encoder(torch.cat([moving, fixed], dim=1))
        pool = F.adaptive_avg_pool2d if self.ndim == 2 else F.adaptive_avg_pool3d
        return self.head(pool(features, self.pool_size))

    def forward(self, moving: Tensor, fixed: Tensor) -> AffineOutput:
        self._check_inputs(moving, fixed)
        shape = tuple(moving.shape[2:])
        params = self.affine_parameters(moving, fixed).float()
        matrix = affine_from_parameters(params, shape, self.translation_scale)
        flow = affine_to_flow(matrix, shape)
        return AffineOutput(flow=flow, warped=warp(moving, flow), matrix=matrix)


def fit_affine(source: Tensor, target: Tensor, ridge: float = 1e-4) -> Tensor:
    """Least-squares affine ``(B, ndim, ndim + 1)`` mapping points ``source`` ``(B, K, ndim)``
    onto ``target`` ``(B, K, ndim)`` (``target ≈ A source + t``). ``ridge`` (relative to the
    points' mean squared spread about their centre) pulls ``A`` towards the identity, so
    that nearly degenerate point sets (an untrained detector) give a near-identity map."""
    ndim = source.shape[-1]
    centre = source.mean(1, keepdim=True)
    centred = source - centre
    gram = centred.transpose(1, 2) @ centred  # (B, ndim, ndim)
    eye = torch.eye(ndim, device=source.device, dtype=source.dtype)
    damping = ridge * gram.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * eye + 1e-12 * eye
    residual = target - source
    delta = torch.linalg.solve(gram + damping, centred.transpose(1, 2) @ (residual - residual.mean(1, keepdim=True)))
    linear = eye + delta.transpose(1, 2)
    shift = target.mean(1) - (linear @ centre.transpose(1, 2))[..., 0]
    return torch.cat([linear, shift[..., None]], dim=-1)


class KeypointAffineNet(RegistrationModel):
    """A keypoint detector applied to each image alone (shared weights): a strided CNN
    encoder (``channels``, stride 2 each), the deepest features upsampled to level
    ``heatmap_level`` (input / 2^(level + 1)) and joined with its features, a 1×1 conv to
    ``keypoints`` heatmaps, a spatial softmax and its centre of mass → ``keypoints`` points
    (voxels); the affine is the least-squares fit fixed points → moving points."""

    size_divisor = 1

    @records_init_args
    def __init__(self, ndim: int = 3, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 64),
                 keypoints: int = 64, heatmap_level: int = 1):
        super().__init__()
        self.ndim = ndim
        self.in_channels = in_channels
        self.down = nn.ModuleList()
        width = in_channels
        for out in channels:
            self.down.append(nn.Sequential(ConvNormAct(ndim, width, out, stride=2), ConvNormAct(ndim, out, out)))
            width = out
        self.heatmap_level = heatmap_level
        skip = channels[heatmap_level]
        self.up = ConvNormAct(ndim, width + skip, skip)
        self.heads = nn.Sequential(ConvNormAct(ndim, skip, skip), conv_nd(ndim)(skip, keypoints, 1))

    def detect(self, image: Tensor) -> Tensor:
        """Keypoints ``(B, K, ndim)`` in voxel indices of ``image`` ``(B, C, *S)``."""
        features = []
        x = image
        for block in self.down:
            x = block(x)
            features.append(x)
        skip = features[self.heatmap_level]
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
        heat = self.heads(self.up(torch.cat([x, skip], dim=1))).float()
        weights = heat.flatten(2).softmax(-1)  # (B, K, V)
        shape = heat.shape[2:]
        axes = [(torch.arange(n, device=heat.device, dtype=torch.float32) + 0.5) * (s / n) - 0.5
                for n, s in zip(shape, image.shape[2:])]  # heatmap voxel centres in input voxels
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (ndim, V)
        return weights @ grid.T

    def forward(self, moving: Tensor, fixed: Tensor) -> AffineOutput:
        self._check_inputs(moving, fixed)
        shape = tuple(moving.shape[2:])
        matrix = fit_affine(self.detect(fixed), self.detect(moving))
        flow = affine_to_flow(matrix, shape)
        return AffineOutput(flow=flow, warped=warp(moving, flow), matrix=matrix)


@register_model
def affine_micro(**kwargs: Any) -> KeypointAffineNet:
    """The learned affine stage (zoo: ``affine_micro.synth_brain``): keypoint detector
    16-32-64-64, heatmaps at input / 4, 64 keypoints, least-squares affine (chosen over the regression
    head by measurement, ``train/README.md``)."""
    return KeypointAffineNet(**kwargs)


@register_model
def affine_regression_micro(**kwargs: Any) -> AffineNet:
    """Regression alternative: encoder 16-32-64-64 (stride 2 each), 3³ pooled features, MLP 256 → 12 parameters."""
    return AffineNet(**kwargs)
