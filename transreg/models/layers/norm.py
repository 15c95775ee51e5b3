"""Normalisation fused with its activation, in the input's memory format (inference in place)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .memory_format import is_channels_last

__all__ = ["BatchNormAct", "InstanceNormAct", "instance_norm_act"]


def instance_norm_act(x: Tensor, slope: float, eps: float = 1e-5, inplace: bool = False) -> Tensor:
    """``leaky_relu(instance_norm(x), slope)`` (no affine, no running statistics).

    ``x`` ``(B, C, *S)``, 2-D or 3-D; the output has ``x``'s shape and memory format.
    Without an autograd graph, a channels-last ``x`` is normalised through its
    ``(B, voxels, C)`` view: the mean, the centring and the variance of the centred
    values by batched matrix products (a row of ones, a rank-1 update, the Gram matrix's
    diagonal), no layout copies, in place when ``inplace``. (``F.instance_norm`` copies a channels-last tensor to the
    contiguous layout and returns it there, which slows the next convolution.) Elsewhere
    ``F.instance_norm``. Both are two-pass (centred) variances.
    """
    view = _voxels_by_channels(x)
    if view is None or (torch.is_grad_enabled() and x.requires_grad):
        return F.leaky_relu(F.instance_norm(x, eps=eps), slope, inplace=True)
    if not inplace:
        x = x.clone(memory_format=torch.preserve_format)
        view = _voxels_by_channels(x)
    voxels = view.shape[1]
    ones = view.new_ones(view.shape[0], 1, voxels)
    mean = torch.bmm(ones, view).float().div_(voxels).to(x.dtype)  # (B, 1, C)
    # view -= mean as a rank-1 update: in bf16 a broadcast sub_ is not vectorised here (~12x slower)
    view.baddbmm_(ones.transpose(1, 2), mean, alpha=-1)
    var = torch.bmm(view.transpose(1, 2), view).diagonal(dim1=1, dim2=2).float().div_(voxels)
    view.mul_(var.add_(eps).rsqrt_().unsqueeze(1).to(x.dtype))
    return F.leaky_relu_(x, slope)


def _voxels_by_channels(x: Tensor) -> Tensor | None:
    """The ``(B, voxels, C)`` view of a channels-last ``x``, or None if it has none."""
    if not is_channels_last(x) or x.shape[1] < 2:
        return None
    return x.permute(0, *range(2, x.dim()), 1).view(x.shape[0], -1, x.shape[1])


class InstanceNormAct(nn.Module):
    """Instance norm (no affine) → LeakyReLU(``slope``) as one module: :func:`instance_norm_act`.

    ``inplace=True`` (like ``nn.LeakyReLU(inplace=True)``) overwrites the input when no
    autograd graph is recorded; use it where the input is a temporary (after a convolution).
    No parameters or buffers.
    """

    def __init__(self, num_features: int, slope: float = 0.01, eps: float = 1e-5, inplace: bool = False):
        super().__init__()
        self.num_features, self.slope, self.eps, self.inplace = num_features, slope, eps, inplace

    def forward(self, x: Tensor) -> Tensor:
        return instance_norm_act(x, self.slope, self.eps, self.inplace)

    def extra_repr(self) -> str:
        return f"{self.num_features}, slope={self.slope}, eps={self.eps}, inplace={self.inplace}"


class BatchNormAct(_BatchNorm):
    """BatchNorm → ReLU as one module, 2-D or 3-D (state-dict keys of a BatchNorm).

    In training (or with an autograd graph) the usual batch norm then ReLU. In inference
    the running statistics make it a per-channel affine map, applied in place with
    ``inplace=True`` (no second full-size map, any memory format) before an in-place ReLU.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, inplace: bool = False):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.inplace = inplace

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (4, 5):
            raise ValueError(f"BatchNormAct expects (B, C, H, W) or (B, C, D, H, W) input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.running_var is None or (torch.is_grad_enabled() and x.requires_grad):
            return F.relu(super().forward(x), inplace=True)
        self._check_input_dim(x)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # in x's dtype: a float32 factor on a bf16 map would compute through a float32 temporary
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = scale.to(x.dtype).view(shape), shift.to(x.dtype).view(shape)
        x = x.mul_(scale) if self.inplace else x * scale
        return F.relu_(x.add_(shift))
