"""Registration losses: image similarity, label overlap and flow regularisers.

Every loss is an ``nn.Module`` with a functional twin of the same behaviour:

==================  =============================  ====================================
module              functional                     call
==================  =============================  ====================================
``NCC``             ``ncc``                        ``loss(warped, fixed)``
``MSE``             ``mse``                        ``loss(warped, fixed)``
``MutualInformation`` ``mutual_information``       ``loss(warped, fixed)``
``MIND``            ``mind``                       ``loss(warped, fixed)``
``DiceLoss``        ``dice_loss``                  ``loss(warped_labels, fixed_labels)``
``Diffusion``       ``diffusion``                  ``loss(flow)``
``BendingEnergy``   ``bending_energy``             ``loss(flow)``
``NegativeJacobian`` ``negative_jacobian``         ``loss(flow)``
==================  =============================  ====================================

Images are ``(B, C, *spatial)`` with 2 or 3 spatial dimensions; a flow is a displacement
``(B, ndim, *spatial)`` in voxels (see :mod:`transreg.spatial`). Similarity losses are
minimised (they return the *negative* similarity); every loss returns a scalar tensor on
the input's device. Statistics are computed in float32 with autocast disabled, so the
losses are safe under bf16/fp16 mixed precision.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transreg.spatial import jacobian_determinant

__all__ = [
    "NCC",
    "MSE",
    "MutualInformation",
    "MIND",
    "DiceLoss",
    "Diffusion",
    "BendingEnergy",
    "NegativeJacobian",
    "ncc",
    "local_ncc_map",
    "mse",
    "mutual_information",
    "mutual_information_of_weights",
    "parzen_weights",
    "mind",
    "mind_ssc",
    "dice_loss",
    "diffusion",
    "bending_energy",
    "negative_jacobian",
]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _full_precision(x: Tensor) -> Iterator[None]:
    """Disable autocast on ``x``'s device so statistics stay in float32."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def _check_images(a: Tensor, b: Tensor, what: str = "images") -> int:
    """Validate a (warped, fixed) pair; returns the number of spatial dimensions."""
    for name, x in (("warped", a), ("fixed", b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            raise ValueError(
                f"{what} must have shape (B, C, *spatial) with 2 or 3 spatial dims, "
                f"got {name} of shape {tuple(x.shape)}"
            )
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.dim() - 2


def _check_flow(flow: Tensor) -> int:
    if not isinstance(flow, Tensor):
        raise TypeError(f"flow must be a torch.Tensor, got {type(flow).__name__}")
    ndim = flow.dim() - 2
    if ndim not in (2, 3) or flow.shape[1] != ndim:
        raise ValueError(
            f"flow must have shape (B, ndim, *spatial) with ndim 2 or 3, got {tuple(flow.shape)}"
        )
    if any(n < 3 for n in flow.shape[2:]):
        raise ValueError(f"flow needs at least 3 voxels along every axis, got {tuple(flow.shape[2:])}")
    return ndim


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (int, float)):
        spacing = (float(spacing),) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return spacing


def _physical_flow(flow: Tensor, spacing: tuple[float, ...]) -> Tensor:
    """Displacement in physical units: component ``j`` times ``spacing[j]`` (float32)."""
    scale = torch.tensor(spacing, device=flow.device, dtype=torch.float32)
    return flow.float() * scale.view(1, -1, *([1] * len(spacing)))


def _diff(x: Tensor, axis: int, step: float) -> Tensor:
    """Forward difference along spatial ``axis`` (tensor dim ``axis + 2``) divided by ``step``."""
    n = x.shape[axis + 2]
    return (x.narrow(axis + 2, 1, n - 1) - x.narrow(axis + 2, 0, n - 1)) / step


# --------------------------------------------------------------------------- NCC


def _window_sums(padded: Tensor, dim: int, n: int, window: int) -> Tensor:
    """Sums of ``window`` consecutive entries along ``dim`` at offsets ``0 … n − 1``.

    ``padded`` has ``n + window − 1`` entries along ``dim``. By doubling: blocks of 1, 2,
    4, … entries are built by adding shifted halves, and the blocks of the set bits of
    ``window`` are added side by side — ``O(log window)`` passes instead of ``window − 1``.
    """
    total: Tensor | None = None
    block, length, offset, bits = padded, 1, 0, window
    while True:
        if bits & 1:
            part = block.narrow(dim, offset, n)
            total = part if total is None else total + part
            offset += length
        bits >>= 1
        if not bits:
            return total
        size = block.shape[dim] - length
        block = block.narrow(dim, 0, size) + block.narrow(dim, length, size)
        length *= 2


def _box_mean(x: Tensor, window: int) -> Tensor:
    """Mean over a ``window``-wide box around each voxel, zero padding outside the image.

    Separable: per axis, window sums of the zero-padded input by doubling
    (:func:`_window_sums`, float32 pairwise sums); exactly the zero-padded
    ``window**ndim`` box sum divided by its full size.
    """
    ndim = x.dim() - 2
    if window == 1:
        return x
    r = window // 2
    for axis in range(ndim):
        dim = axis + 2
        pad = [0] * (2 * ndim)
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = r  # F.pad lists the last axis first
        x = _window_sums(F.pad(x, pad), dim, x.shape[dim], window)
    return x / float(window**ndim)


def local_ncc_map(a: Tensor, b: Tensor, window: int = 9, eps: float = 1e-5) -> Tensor:
    """Local squared normalised cross-correlation ``cc`` at every voxel, ``(B, C, *spatial)``.

    With window sums ``S`` over a ``window**ndim`` box (zero padding outside the image,
    the box size ``N = window**ndim`` fixed also at the borders — the convention of the
    VoxelMorph/TransMorph convolution with ``padding=window // 2``)::

        cross = S(ab) - S(a) S(b) / N
        var_a = S(a²) - S(a)² / N,   var_b likewise
        cc    = cross² / (var_a · var_b + eps)

    Channels are treated independently. Computed in float32.
    """
    _check_images(a, b)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer, got {window!r}")
    ndim = a.dim() - 2
    n = float(window**ndim)
    with _full_precision(a):
        a, b = a.float(), b.float()
        stats = _box_mean(torch.cat([a, b, a * a, b * b, a * b], dim=1), window)
        mean_a, mean_b, mean_aa, mean_bb, mean_ab = stats.chunk(5, dim=1)
        # with window means, cross = N·c and var = N·v, so cc = c² / (v_a·v_b + eps / N²)
        cross = mean_ab - mean_a * mean_b
        var_a = mean_aa - mean_a * mean_a
        var_b = mean_bb - mean_b * mean_b
        return cross * cross / (var_a * var_b + eps / (n * n))


def ncc(a: Tensor, b: Tensor, window: int = 9, eps: float = 1e-5) -> Tensor:
    """Negative mean local squared NCC (VoxelMorph/TransMorph ``NCC``), in ``[-1, 0]``.

    ``a``, ``b``: ``(B, C, *spatial)``. See :func:`local_ncc_map` for the definition and
    the border convention. Cost is ``O(window)`` per voxel (separable box filter), not
    ``O(window**ndim)``.
    """
    return -local_ncc_map(a, b, window, eps).mean()


class NCC(nn.Module):
    """Local squared normalised cross-correlation loss: ``NCC(window=9)(warped, fixed)``.

    Returns ``-mean(cc)`` (see :func:`local_ncc_map`); the TransMorph/VoxelMorph training
    loss with a 9³ window in 3-D (9² in 2-D).
    """

    def __init__(self, window: int = 9, eps: float = 1e-5) -> None:
        super().__init__()
        self.window = window
        self.eps = eps

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return ncc(warped, fixed, self.window, self.eps)

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps}"


# --------------------------------------------------------------------------- MSE


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared intensity difference of ``(B, C, *spatial)`` images (float32)."""
    _check_images(a, b)
    with _full_precision(a):
        return (a.float() - b.float()).pow(2).mean()


class MSE(nn.Module):
    """Mean squared error: ``MSE()(warped, fixed)``."""

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return mse(warped, fixed)


# --------------------------------------------------------------------------- MI


def _check_histogram(bins: int, min_value: float, max_value: float, sigma_ratio: float) -> None:
    if bins < 2 or not max_value > min_value or sigma_ratio <= 0:
        raise ValueError(
            f"need bins >= 2, max_value > min_value and sigma_ratio > 0, got bins={bins}, "
            f"range=({min_value}, {max_value}), sigma_ratio={sigma_ratio}"
        )


def parzen_weights(
    values: Tensor, bins: int = 32, min_value: float = 0.0, max_value: float = 1.0, sigma_ratio: float = 1.0
) -> Tensor:
    """Gaussian Parzen-window bin weights ``(B, V, bins)`` of intensities ``values`` ``(B, V)``.

    Values are clamped to ``[min_value, max_value]``; ``bins`` centres span that range
    evenly and the window's standard deviation is ``sigma_ratio × bin spacing``. Each
    value's weights sum to one (float32). A fixed image's weights can be computed once and
    reused across the steps of an optimisation (:func:`mutual_information_of_weights`).
    """
    _check_histogram(bins, min_value, max_value, sigma_ratio)
    with _full_precision(values):
        centers = torch.linspace(min_value, max_value, bins, device=values.device, dtype=torch.float32)
        sigma = sigma_ratio * (max_value - min_value) / (bins - 1)
        d2 = (values.float().clamp(min_value, max_value).unsqueeze(-1) - centers).pow(2)  # (B, V, K)
        return torch.softmax(-d2 / (2.0 * sigma * sigma), dim=-1)  # stable even for tiny sigma


def mutual_information_of_weights(weights_a: Tensor, weights_b: Tensor, eps: float = 1e-10) -> Tensor:
    """Negative mutual information (nats, mean over the batch) of two images given their
    :func:`parzen_weights` ``(B, V, K)`` at the same ``V`` points: the joint histogram is
    the mean outer product of the weights, ``MI = Σ p_ab log(p_ab / (p_a p_b))``."""
    if weights_a.shape[:2] != weights_b.shape[:2]:
        raise ValueError(f"weights of the same points needed, got {tuple(weights_a.shape)} and {tuple(weights_b.shape)}")
    with _full_precision(weights_a):
        p_ab = weights_a.float().transpose(1, 2) @ weights_b.float() / weights_a.shape[1]  # (B, K, K)
        p_a = p_ab.sum(dim=2, keepdim=True)
        p_b = p_ab.sum(dim=1, keepdim=True)
        mi = (p_ab * torch.log((p_ab + eps) / (p_a * p_b + eps))).sum(dim=(1, 2))
        return -mi.mean()


def mutual_information(
    a: Tensor,
    b: Tensor,
    bins: int = 32,
    min_value: float = 0.0,
    max_value: float = 1.0,
    sigma_ratio: float = 1.0,
    eps: float = 1e-10,
) -> Tensor:
    """Negative global mutual information with Parzen (Gaussian) windowing, in nats.

    ``a``, ``b``: ``(B, C, *spatial)``; all channels are pooled. Intensities are clamped
    to ``[min_value, max_value]``; ``bins`` bin centres span that range evenly and the
    Gaussian window has standard deviation ``sigma_ratio × bin spacing``
    (:func:`parzen_weights`). Each voxel's weights are normalised to sum to one, the joint
    histogram is their outer-product mean, and ``MI = Σ p_ab log(p_ab / (p_a p_b))`` per
    batch element, averaged (:func:`mutual_information_of_weights`).
    Memory: ``2 × voxels × bins`` floats per batch element.
    """
    _check_images(a, b)
    wa, wb = (parzen_weights(x.reshape(x.shape[0], -1), bins, min_value, max_value, sigma_ratio) for x in (a, b))
    return mutual_information_of_weights(wa, wb, eps)


class MutualInformation(nn.Module):
    """Global mutual information loss (multi-modal): ``MutualInformation()(warped, fixed)``.

    See :func:`mutual_information`; intensities are expected in ``[min_value, max_value]``
    (default ``[0, 1]``, the range of transreg's normalised images).
    """

    def __init__(
        self, bins: int = 32, min_value: float = 0.0, max_value: float = 1.0, sigma_ratio: float = 1.0
    ) -> None:
        super().__init__()
        self.bins, self.min_value, self.max_value, self.sigma_ratio = bins, min_value, max_value, sigma_ratio

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return mutual_information(warped, fixed, self.bins, self.min_value, self.max_value, self.sigma_ratio)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, range=({self.min_value}, {self.max_value}), sigma_ratio={self.sigma_ratio}"


# --------------------------------------------------------------------------- MIND-SSC


def _ssc_pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of face neighbours of the centre at distance sqrt(2) (the SSC pattern).

    3-D: 6 neighbours → 12 pairs; 2-D: 4 neighbours → 4 pairs.
    """
    neighbours = []
    for axis in range(ndim):
        for sign in (-1, 1):
            offset = [0] * ndim
            offset[axis] = sign
            neighbours.append(tuple(offset))
    return [
        (p, q)
        for p, q in itertools.combinations(neighbours, 2)
        if sum((i - j) ** 2 for i, j in zip(p, q)) == 2
    ]


def mind_ssc(image: Tensor, radius: int = 2, dilation: int = 2, eps: float = 1e-6) -> Tensor:
    """MIND-SSC descriptor (Heinrich et al., MICCAI 2013) of ``(B, C, *spatial)`` images.

    For each pair ``(p, q)`` of the self-similarity context (face neighbours at distance
    ``dilation``, pairs not opposite each other), the squared difference of the image
    shifted by ``p`` and by ``q`` is averaged over a ``(2 radius + 1)`` box (edge
    replication at the borders). With ``D`` those patch distances per voxel,
    ``MIND = exp(-(D - min D) / V)``, ``V`` the mean of ``D - min D`` over the pairs,
    clamped to ``[1e-3, 1e3] ×`` its image mean. Returns ``(B, C·P, *spatial)`` with
    ``P = 12`` pairs in 3-D and 4 in 2-D. Computed in float32.
    """
    ndim = image.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"image must have shape (B, C, *spatial) with 2 or 3 spatial dims, got {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"need radius >= 0 and dilation >= 1, got radius={radius}, dilation={dilation}")
    with _full_precision(image):
        x = image.float()
        spatial = x.shape[2:]
        padded = F.pad(x, [dilation] * (2 * ndim), mode="replicate")

        def shifted(offset: tuple[int, ...]) -> Tensor:
            out = padded
            for axis, o in enumerate(offset):
                out = out.narrow(axis + 2, dilation + o * dilation, spatial[axis])
            return out

        ssd = torch.cat([(shifted(p) - shifted(q)).pow(2) for p, q in _ssc_pairs(ndim)], dim=1)
        if radius > 0:
            k = 2 * radius + 1
            pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
            ssd = pool(F.pad(ssd, [radius] * (2 * ndim), mode="replicate"), k, stride=1)
        channels = x.shape[1]
        ssd = ssd.unflatten(1, (-1, channels))  # (B, P, C, *spatial)
        dist = ssd - ssd.amin(dim=1, keepdim=True)
        var = dist.mean(dim=1, keepdim=True)
        var_mean = var.mean(dim=tuple(range(2, var.dim())), keepdim=True)
        var = torch.maximum(torch.minimum(var, var_mean * 1e3), var_mean * 1e-3).clamp_min(eps)
        return torch.exp(-dist / var).flatten(1, 2)


def mind(a: Tensor, b: Tensor, radius: int = 2, dilation: int = 2) -> Tensor:
    """Mean squared difference of the MIND-SSC descriptors of ``a`` and ``b`` (multi-modal)."""
    _check_images(a, b)
    return (mind_ssc(a, radius, dilation) - mind_ssc(b, radius, dilation)).pow(2).mean()


class MIND(nn.Module):
    """MIND-SSC descriptor distance: ``MIND(radius=2, dilation=2)(warped, fixed)``."""

    def __init__(self, radius: int = 2, dilation: int = 2) -> None:
        super().__init__()
        self.radius, self.dilation = radius, dilation

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return mind(warped, fixed, self.radius, self.dilation)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, dilation={self.dilation}"


# --------------------------------------------------------------------------- Dice


def _class_index(labels_map: Tensor, labels: Sequence[int] | None, num_classes: int) -> Tensor:
    """Integer map ``(B, 1, *S)`` → class indices ``(B, V)`` in ``[0, K]``; ``K`` = ignored."""
    flat = labels_map.reshape(labels_map.shape[0], -1).long()
    if labels is None:
        if flat.numel() and (flat.min() < 0 or flat.max() >= num_classes):
            raise ValueError(
                f"label map values must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                f"got range [{int(flat.min())}, {int(flat.max())}]; pass labels=[...] to map label values"
            )
        return flat
    table = torch.as_tensor(list(labels), device=flat.device, dtype=torch.long)
    order = torch.argsort(table)
    sorted_table = table[order]
    pos = torch.searchsorted(sorted_table, flat).clamp_max(len(table) - 1)
    found = sorted_table[pos] == flat
    return torch.where(found, order[pos], torch.full_like(flat, num_classes))


def _soft_dice_terms(
    soft: Tensor, index: Tensor, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, soft volume and hard volume ``(B, K)`` without a one-hot of ``index``."""
    flat = soft.reshape(soft.shape[0], num_classes, -1)
    safe = index.clamp_max(num_classes - 1).unsqueeze(1)
    picked = flat.gather(1, safe).squeeze(1) * (index < num_classes)
    inter = flat.new_zeros(flat.shape[0], num_classes + 1).scatter_add(1, index, picked)
    hard = flat.new_zeros(flat.shape[0], num_classes + 1).scatter_add(1, index, torch.ones_like(picked))
    return inter[:, :num_classes], flat.sum(dim=2), hard[:, :num_classes]


def _hard_dice_terms(index_a: Tensor, index_b: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection and volumes ``(B, K)`` of two class-index maps (bincount, no one-hot)."""
    k1 = num_classes + 1
    terms = []
    for ia, ib in zip(index_a, index_b):
        counts = torch.bincount(ia * k1 + ib, minlength=k1 * k1).view(k1, k1)
        terms.append(torch.stack([counts.diagonal(), counts.sum(1), counts.sum(0)])[:, :num_classes])
    inter, vol_a, vol_b = torch.stack(terms, dim=1).float()
    return inter, vol_a, vol_b


def dice_loss(
    warped: Tensor,
    fixed: Tensor,
    labels: Sequence[int] | None = None,
    include_background: bool = False,
    eps: float = 1e-5,
) -> Tensor:
    """``1 - mean Dice`` over classes, for integer label maps or (soft) one-hot maps.

    ``warped`` and ``fixed`` are each either an integer label map ``(B, 1, *spatial)`` or
    a one-hot / probability map ``(B, K, *spatial)`` (float, channel ``k`` = class ``k``);
    at least one side fixes ``K``. With ``labels`` (``K`` label values), integer maps are
    mapped to classes (``labels[k]`` → class ``k``, other values ignored); without it
    integer values are the class indices. Class 0 is the background and is left out
    unless ``include_background``. Classes absent from both inputs of a batch element
    are left out of its mean. Integer maps are never expanded to one-hot (memory stays
    ``O(voxels)`` for them), and the loss is differentiable w.r.t. float inputs.
    """
    _check_images_dice(warped, fixed)
    float_sides = [x for x in (warped, fixed) if torch.is_floating_point(x)]
    if labels is not None:
        num_classes = len(labels)
    elif float_sides:
        num_classes = float_sides[0].shape[1]
    else:
        num_classes = int(max(warped.max(), fixed.max())) + 1
    for name, x in (("warped", warped), ("fixed", fixed)):
        if torch.is_floating_point(x) and x.shape[1] != num_classes:
            raise ValueError(f"{name} has {x.shape[1]} channels but there are {num_classes} classes")
    with _full_precision(warped):
        if len(float_sides) == 2:
            a = warped.float().flatten(2)
            b = fixed.float().flatten(2)
            inter, vol_a, vol_b = (a * b).sum(2), a.sum(2), b.sum(2)
        elif len(float_sides) == 1:
            soft, hard = (warped, fixed) if torch.is_floating_point(warped) else (fixed, warped)
            inter, vol_a, vol_b = _soft_dice_terms(soft.float(), _class_index(hard, labels, num_classes), num_classes)
        else:
            inter, vol_a, vol_b = _hard_dice_terms(
                _class_index(warped, labels, num_classes), _class_index(fixed, labels, num_classes), num_classes
            )
        dice = 2 * inter / (vol_a + vol_b + eps)
        present = (vol_a + vol_b) > 0
        if not include_background and labels is None:
            present[:, 0] = False
        elif not include_background:
            present &= torch.as_tensor([lab != 0 for lab in labels], device=present.device)
        per_item = (dice * present).sum(1) / present.sum(1).clamp_min(1)
        return 1 - per_item.mean()


def _check_images_dice(warped: Tensor, fixed: Tensor) -> None:
    for name, x in (("warped", warped), ("fixed", fixed)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            raise ValueError(f"{name} must be (B, 1 or K, *spatial) with 2 or 3 spatial dims, got {tuple(x.shape)}")
        if not torch.is_floating_point(x) and x.shape[1] != 1:
            raise ValueError(f"integer label map {name} must have one channel, got shape {tuple(x.shape)}")
    if warped.shape[0] != fixed.shape[0] or warped.shape[2:] != fixed.shape[2:]:
        raise ValueError(
            f"warped {tuple(warped.shape)} and fixed {tuple(fixed.shape)} differ in batch or spatial size"
        )


class DiceLoss(nn.Module):
    """Dice loss on label maps: ``DiceLoss()(warped_onehot_or_labels, fixed_labels)``.

    See :func:`dice_loss` (integer maps or one-hot, background excluded by default).
    """

    def __init__(
        self, labels: Sequence[int] | None = None, include_background: bool = False, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.labels = None if labels is None else tuple(int(lab) for lab in labels)
        self.include_background = include_background
        self.eps = eps

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return dice_loss(warped, fixed, self.labels, self.include_background, self.eps)

    def extra_repr(self) -> str:
        n = "auto" if self.labels is None else len(self.labels)
        return f"labels={n}, include_background={self.include_background}"


# --------------------------------------------------------------------------- regularisers


def diffusion(
    flow: Tensor, spacing: float | Sequence[float] | None = None, penalty: Literal["l2", "l1"] = "l2"
) -> Tensor:
    """Diffusion regulariser: mean over axes of the mean squared (or absolute) forward
    difference of the flow — TransMorph's ``Grad3d(penalty='l2')`` / VoxelMorph's ``Grad``.

    ``flow`` ``(B, ndim, *spatial)`` in voxels. With ``spacing`` (mm per voxel, one per
    axis) the gradient is that of the physical displacement in mm per mm (component
    ``j`` scaled by ``spacing[j]``, differences along axis ``i`` divided by
    ``spacing[i]``); without it, voxel units.
    """
    ndim = _check_flow(flow)
    if penalty not in ("l1", "l2"):
        raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
    sp = _spacing(spacing, ndim)
    with _full_precision(flow):
        u = _physical_flow(flow, sp)
        terms = [_diff(u, axis, sp[axis]) for axis in range(ndim)]
        terms = [d.pow(2) if penalty == "l2" else d.abs() for d in terms]
        return sum(d.mean() for d in terms) / ndim


def _central(x: Tensor, axis: int, step: float) -> Tensor:
    """Central difference along spatial ``axis``, the border voxels dropped on that axis."""
    n = x.shape[axis + 2]
    return (x.narrow(axis + 2, 2, n - 2) - x.narrow(axis + 2, 0, n - 2)) / (2 * step)


def _crop(x: Tensor, axes: Sequence[int]) -> Tensor:
    for axis in axes:
        x = x.narrow(axis + 2, 1, x.shape[axis + 2] - 2)
    return x


def bending_energy(flow: Tensor, spacing: float | Sequence[float] | None = None) -> Tensor:
    """Bending energy ``mean Σ_j [Σ_i (∂²u_j/∂x_i²)² + 2 Σ_{i<k} (∂²u_j/∂x_i∂x_k)²]``.

    Second derivatives by 3-point central differences (pure) and the 4-point cross
    stencil (mixed), on the voxels at least one voxel from every border — exact for
    quadratic fields. ``flow`` ``(B, ndim, *spatial)`` in voxels; ``spacing`` as in
    :func:`diffusion` (then in mm⁻¹).
    """
    ndim = _check_flow(flow)
    sp = _spacing(spacing, ndim)
    with _full_precision(flow):
        u = _physical_flow(flow, sp)
        total = u.new_zeros(())
        for i in range(ndim):
            n = u.shape[i + 2]
            second = (u.narrow(i + 2, 2, n - 2) - 2 * u.narrow(i + 2, 1, n - 2) + u.narrow(i + 2, 0, n - 2)) / (sp[i] ** 2)
            total = total + _crop(second, [a for a in range(ndim) if a != i]).pow(2).sum(1).mean()
            for k in range(i + 1, ndim):
                mixed = _central(_central(u, i, sp[i]), k, sp[k])
                total = total + 2 * _crop(mixed, [a for a in range(ndim) if a not in (i, k)]).pow(2).sum(1).mean()
        return total


def negative_jacobian(flow: Tensor, threshold: float = 0.0) -> Tensor:
    """Folding penalty ``mean(relu(threshold - det J))`` of ``x ↦ x + flow(x)``.

    ``det J`` by central differences (:func:`transreg.spatial.jacobian_determinant`);
    zero for a fold-free field when ``threshold = 0``. Spacing does not change the
    determinant of a displacement given in voxels.
    """
    _check_flow(flow)
    with _full_precision(flow):
        return F.relu(threshold - jacobian_determinant(flow.float())).mean()


class Diffusion(nn.Module):
    """L2 (or L1) gradient regulariser: ``Diffusion()(flow)``; see :func:`diffusion`."""

    def __init__(self, spacing: float | Sequence[float] | None = None, penalty: Literal["l2", "l1"] = "l2") -> None:
        super().__init__()
        self.spacing, self.penalty = spacing, penalty

    def forward(self, flow: Tensor) -> Tensor:
        return diffusion(flow, self.spacing, self.penalty)

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}, spacing={self.spacing}"


class BendingEnergy(nn.Module):
    """Bending energy regulariser: ``BendingEnergy()(flow)``; see :func:`bending_energy`."""

    def __init__(self, spacing: float | Sequence[float] | None = None) -> None:
        super().__init__()
        self.spacing = spacing

    def forward(self, flow: Tensor) -> Tensor:
        return bending_energy(flow, self.spacing)

    def extra_repr(self) -> str:
        return f"spacing={self.spacing}"


class NegativeJacobian(nn.Module):
    """Folding penalty: ``NegativeJacobian()(flow)``; see :func:`negative_jacobian`."""

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, flow: Tensor) -> Tensor:
        return negative_jacobian(flow, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
