"""The three pieces of timm that the transformer encoders use: ``Mlp``, ``DropPath`` and
``trunc_normal_``.

Importing ``timm`` imports torchvision and ``torch._dynamo`` (several seconds of start-up
for every ``transreg register``), so they live here, written to match timm exactly: the
same parameter names (``fc1``, ``fc2``: checkpoints load unchanged) and the same use of the
random-number generator (a seeded model initialises and drops paths as with timm;
``torch.nn.init.trunc_normal_`` of PyTorch 2.14 samples differently).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Mlp", "DropPath", "trunc_normal_"]


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> Tensor:
    """Fill ``tensor`` in place with N(``mean``, ``std``²) truncated to ``[a, b]`` (inverse
    CDF of a uniform sample, as ``timm.layers.trunc_normal_``)."""
    def cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    low, high = cdf((a - mean) / std), cdf((b - mean) / std)
    with torch.no_grad():
        tensor.uniform_(2 * low - 1, 2 * high - 1).erfinv_()
        return tensor.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)


class Mlp(nn.Module):
    """``fc1`` → activation → dropout → ``fc2`` → dropout on the last axis."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of a sample with
    probability ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep) if keep > 0.0 else x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
