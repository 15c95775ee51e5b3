"""Losses against independent float64 computations (brute force, numpy, closed forms)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transreg import losses
from transreg.spatial import affine_to_flow

torch.manual_seed(0)


# --------------------------------------------------------------------------- NCC


def brute_force_ncc_map(a: np.ndarray, b: np.ndarray, window: int, eps: float = 1e-5) -> np.ndarray:
    """cc per voxel from explicit windows of the zero-padded images (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    r = window // 2
    pa, pb = np.pad(a, r), np.pad(b, r)
    n = window**a.ndim
    out = np.zeros(a.shape)
    for idx in np.ndindex(*a.shape):
        win = tuple(slice(i, i + window) for i in idx)
        wa, wb = pa[win], pb[win]
        sa, sb = wa.sum(), wb.sum()
        cross = (wa * wb).sum() - sa * sb / n
        va = (wa * wa).sum() - sa * sa / n
        vb = (wb * wb).sum() - sb * sb / n
        out[idx] = cross * cross / (va * vb + eps)
    return out


@pytest.mark.parametrize(
    "shape, window",
    [((2, 1, 7, 8, 9), 9), ((2, 1, 7, 8, 9), 5), ((1, 2, 13, 11), 9), ((1, 2, 13, 11), 3),
     ((1, 1, 12, 10, 9), 7), ((1, 1, 15, 14), 11)],  # every bit pattern of the doubling box sum
)
def test_ncc_matches_brute_force_with_borders(shape, window):
    a = torch.rand(shape)
    b = 0.5 * a + 0.5 * torch.rand(shape)  # partly correlated, so cc spans (0, 1)
    expected = np.stack(
        [
            np.stack([brute_force_ncc_map(a[i, c].numpy(), b[i, c].numpy(), window) for c in range(shape[1])])
            for i in range(shape[0])
        ]
    )
    got = losses.local_ncc_map(a, b, window).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert abs(losses.ncc(a, b, window).item() + expected.mean()) < 1e-5
    assert abs(losses.NCC(window)(a, b).item() + expected.mean()) < 1e-5


def test_ncc_is_invariant_to_affine_intensity_changes():
    a = torch.rand(1, 1, 16, 16, 16)
    assert losses.ncc(a, a).item() == pytest.approx(-1.0, abs=1e-4)
    assert losses.ncc(a, 3 * a).item() == pytest.approx(-1.0, abs=1e-4)
    # an intensity offset changes cc only where the window reaches the zero padding
    cc = losses.local_ncc_map(a, 3 * a - 2, window=9)[0, 0]
    assert torch.allclose(cc[4:-4, 4:-4, 4:-4], torch.ones(8, 8, 8), atol=1e-4)
    assert cc[0, 0, 0] < 0.9
    unrelated = losses.local_ncc_map(a, torch.rand_like(a), window=9)[0, 0]
    assert unrelated[4:-4, 4:-4, 4:-4].mean() < 0.05


def test_ncc_rejects_bad_input():
    a = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="odd"):
        losses.ncc(a, a, window=4)
    with pytest.raises(ValueError, match="same shape"):
        losses.ncc(a, torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="spatial dims"):
        losses.ncc(torch.rand(8, 8), torch.rand(8, 8))


# --------------------------------------------------------------------------- MSE / MI


def test_mse_matches_numpy():
    a, b = torch.rand(2, 1, 6, 7, 8), torch.rand(2, 1, 6, 7, 8)
    assert losses.MSE()(a, b).item() == pytest.approx(np.mean((a.double().numpy() - b.double().numpy()) ** 2), rel=1e-6)


def histogram_mi(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=[edges, edges])
    p_ab = joint / joint.sum()
    p_a, p_b = p_ab.sum(1, keepdims=True), p_ab.sum(0, keepdims=True)
    nz = p_ab > 0
    return float((p_ab[nz] * np.log(p_ab[nz] / (p_a * p_b)[nz])).sum())


def test_mutual_information_equals_histogram_mi_when_windows_are_narrow():
    bins = 8
    rng = np.random.default_rng(1)
    ia = rng.integers(0, bins, size=(12, 13, 14))
    ib = np.where(rng.random(ia.shape) < 0.7, (ia * 3) % bins, rng.integers(0, bins, size=ia.shape))
    centers = np.linspace(0, 1, bins)
    edges = np.concatenate([[-0.5 / (bins - 1)], (centers[:-1] + centers[1:]) / 2, [1 + 0.5 / (bins - 1)]])
    expected = histogram_mi(centers[ia], centers[ib], edges)
    a = torch.tensor(centers[ia], dtype=torch.float32)[None, None]
    b = torch.tensor(centers[ib], dtype=torch.float32)[None, None]
    got = -losses.mutual_information(a, b, bins=bins, sigma_ratio=0.05).item()
    assert expected > 0.3
    assert got == pytest.approx(expected, abs=1e-5)


def parzen_mi_float64(a: np.ndarray, b: np.ndarray, bins: int, sigma_ratio: float) -> float:
    centers = np.linspace(0, 1, bins)
    sigma = sigma_ratio / (bins - 1)
    wa = np.exp(-((a.ravel()[:, None] - centers) ** 2) / (2 * sigma**2))
    wb = np.exp(-((b.ravel()[:, None] - centers) ** 2) / (2 * sigma**2))
    wa /= wa.sum(1, keepdims=True)
    wb /= wb.sum(1, keepdims=True)
    p_ab = wa.T @ wb / wa.shape[0]
    p_a, p_b = p_ab.sum(1, keepdims=True), p_ab.sum(0, keepdims=True)
    return float((p_ab * np.log(p_ab / (p_a * p_b))).sum())


def test_mutual_information_matches_float64_parzen_reference():
    a = torch.rand(1, 1, 10, 11, 12)
    b = (a * 0.6 + 0.4 * torch.rand_like(a)) ** 2
    expected = parzen_mi_float64(a.double().numpy(), b.double().numpy(), 16, 1.0)
    got = -losses.MutualInformation(bins=16)(a, b).item()
    assert got == pytest.approx(expected, abs=1e-5)
    assert -losses.mutual_information(a, a, bins=16).item() > got  # MI(a, a) = H(a) is maximal


# --------------------------------------------------------------------------- MIND


def brute_force_mind_2d(img: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """MIND-SSC of a 2-D image with explicit loops (float64)."""
    h, w = img.shape
    nbrs = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    pairs = [(p, q) for p, q in itertools.combinations(nbrs, 2) if (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 == 2]
    pad = np.pad(img.astype(np.float64), dilation, mode="edge")
    ssd = []
    for p, q in pairs:
        sp = pad[dilation + p[0] * dilation : dilation + p[0] * dilation + h, dilation + p[1] * dilation : dilation + p[1] * dilation + w]
        sq = pad[dilation + q[0] * dilation : dilation + q[0] * dilation + h, dilation + q[1] * dilation : dilation + q[1] * dilation + w]
        d = np.pad((sp - sq) ** 2, radius, mode="edge")
        box = np.zeros((h, w))
        for y, x in np.ndindex(h, w):
            box[y, x] = d[y : y + 2 * radius + 1, x : x + 2 * radius + 1].mean()
        ssd.append(box)
    ssd = np.stack(ssd)
    dist = ssd - ssd.min(0)
    var = dist.mean(0)
    var = np.clip(var, var.mean() * 1e-3, var.mean() * 1e3)
    return np.exp(-dist / var)


def test_mind_ssc_matches_brute_force_2d():
    img = torch.rand(1, 1, 12, 10)
    got = losses.mind_ssc(img, radius=1, dilation=2)[0].numpy()
    np.testing.assert_allclose(got, brute_force_mind_2d(img[0, 0].numpy(), 1, 2), atol=1e-5)
    assert losses.mind_ssc(torch.rand(2, 3, 8, 8, 8)).shape == (2, 36, 8, 8, 8)  # 12 pairs x 3 channels


def test_mind_is_modality_invariant_but_sees_misalignment():
    a = F.avg_pool3d(torch.rand(1, 1, 20, 20, 20), 3, 1, 1)
    assert losses.MIND()(a, 1.0 - 2.0 * a).item() < 1e-6  # inverted contrast, same structure
    assert losses.MIND()(a, torch.roll(a, 3, dims=2)).item() > 1e-3


# --------------------------------------------------------------------------- Dice


def reference_dice_loss(pred_onehot: np.ndarray, true_onehot: np.ndarray, include_background: bool) -> float:
    per_item = []
    for p, t in zip(pred_onehot, true_onehot):
        scores = []
        for k in range(0 if include_background else 1, p.shape[0]):
            denom = p[k].sum() + t[k].sum()
            if denom > 0:
                scores.append(2 * (p[k] * t[k]).sum() / (denom + 1e-5))
        per_item.append(np.mean(scores))
    return 1 - float(np.mean(per_item))


@pytest.mark.parametrize("spatial", [(9, 10), (6, 7, 8)])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_loss_soft_and_integer_forms_match_one_hot_reference(spatial, include_background):
    k = 6
    truth = torch.randint(0, k - 1, (2, 1, *spatial))  # class 5 absent from the truth
    soft = torch.softmax(3 * torch.randn(2, k, *spatial), dim=1)
    true_onehot = F.one_hot(truth[:, 0], k).movedim(-1, 1).double().numpy()
    expected = reference_dice_loss(soft.double().numpy(), true_onehot, include_background)
    loss = losses.DiceLoss(include_background=include_background)
    assert loss(soft, truth).item() == pytest.approx(expected, abs=1e-5)
    assert loss(truth, soft).item() == pytest.approx(expected, abs=1e-5)
    assert loss(soft, torch.as_tensor(true_onehot, dtype=torch.float32)).item() == pytest.approx(expected, abs=1e-5)
    hard = soft.argmax(1, keepdim=True)
    hard_expected = reference_dice_loss(F.one_hot(hard[:, 0], k).movedim(-1, 1).double().numpy(), true_onehot, include_background)
    assert losses.dice_loss(hard, truth, include_background=include_background).item() == pytest.approx(hard_expected, abs=1e-5)


def test_dice_loss_maps_label_values_and_ignores_others():
    values = torch.tensor([0, 2, 41, 99])
    fixed = values[torch.randint(0, 4, (1, 1, 8, 9, 10))]
    warped = values[torch.randint(0, 4, (1, 1, 8, 9, 10))]
    labels = [0, 2, 41]
    pred = np.stack([(warped[0, 0] == v).numpy() for v in labels]).astype(float)[None]
    true = np.stack([(fixed[0, 0] == v).numpy() for v in labels]).astype(float)[None]
    expected = reference_dice_loss(pred, true, include_background=False)
    assert losses.dice_loss(warped, fixed, labels=labels).item() == pytest.approx(expected, abs=1e-5)
    soft = torch.as_tensor(pred, dtype=torch.float32)
    assert losses.DiceLoss(labels=labels)(soft, fixed).item() == pytest.approx(expected, abs=1e-5)
    assert losses.dice_loss(fixed, fixed, labels=labels).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_rejects_inconsistent_classes():
    with pytest.raises(ValueError, match="channels"):
        losses.dice_loss(torch.rand(1, 4, 5, 5), torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="label map values"):
        losses.dice_loss(torch.rand(1, 3, 5, 5), torch.full((1, 1, 5, 5), 7))


# --------------------------------------------------------------------------- regularisers


def grid(shape):
    return torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
def test_diffusion_of_linear_field_and_spacing(shape):
    ndim = len(shape)
    a = torch.randn(ndim, ndim, dtype=torch.float64)
    flow = torch.einsum("ji,i...->j...", a, grid(shape))[None].float()
    assert losses.Diffusion()(flow).item() == pytest.approx((a**2).sum().item() / ndim**2, rel=1e-4)
    spacing = torch.tensor([0.5, 2.0, 1.5][:ndim], dtype=torch.float64)
    physical = a * spacing[:, None] / spacing[None, :]  # d(s_j u_j) / d(s_i x_i)
    expected = (physical**2).sum().item() / ndim**2
    assert losses.diffusion(flow, spacing=spacing.tolist()).item() == pytest.approx(expected, rel=1e-4)


def test_diffusion_matches_transmorph_grad_l2_formula():
    flow = torch.randn(2, 3, 6, 7, 8)
    dy = (flow[:, :, 1:] - flow[:, :, :-1]).abs() ** 2
    dx = (flow[:, :, :, 1:] - flow[:, :, :, :-1]).abs() ** 2
    dz = (flow[:, :, :, :, 1:] - flow[:, :, :, :, :-1]).abs() ** 2
    assert losses.diffusion(flow).item() == pytest.approx(((dx.mean() + dy.mean() + dz.mean()) / 3).item(), rel=1e-6)


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
def test_bending_energy_of_quadratic_field(shape):
    ndim = len(shape)
    x = grid(shape)
    a, b = 0.3, -0.7
    flow = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    flow[0, 0] = a * x[0] ** 2  # d²u0/dx0² = 2a
    flow[0, 1] = b * x[0] * x[1]  # d²u1/dx0dx1 = b
    assert losses.BendingEnergy()(flow.float()).item() == pytest.approx(4 * a * a + 2 * b * b, rel=1e-4)
    s = [2.0, 0.5, 1.0][:ndim]
    expected = (2 * a * s[0] / s[0] ** 2) ** 2 + 2 * (b * s[1] / (s[0] * s[1])) ** 2
    assert losses.bending_energy(flow.float(), spacing=s).item() == pytest.approx(expected, rel=1e-4)
    linear = torch.einsum("ji,i...->j...", torch.randn(ndim, ndim, dtype=torch.float64), x)[None].float()
    assert losses.bending_energy(linear).item() < 1e-6


def test_negative_jacobian_penalises_folds_only():
    shape = (8, 9, 10)
    identity = torch.zeros(1, 3, *shape)
    assert losses.NegativeJacobian()(identity).item() == 0.0
    mirror = torch.tensor([[[-1.0, 0, 0, 7], [0, 1, 0, 0], [0, 0, 1, 0]]])  # det = -1
    assert losses.NegativeJacobian()(affine_to_flow(mirror, shape)).item() == pytest.approx(1.0, abs=1e-5)
    shrink = torch.tensor([[[0.5, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 1.2, 0]]])
    assert losses.negative_jacobian(affine_to_flow(shrink, shape)).item() == 0.0


def test_regularisers_reject_bad_flows():
    with pytest.raises(ValueError, match="flow must have shape"):
        losses.diffusion(torch.rand(1, 2, 5, 5, 5))
    with pytest.raises(ValueError, match="spacing"):
        losses.bending_energy(torch.rand(1, 2, 5, 5), spacing=[1.0, -1.0])


# --------------------------------------------------------------------------- mixed precision


SIMILARITY = {
    "ncc": losses.NCC(),
    "mse": losses.MSE(),
    "mi": losses.MutualInformation(),
    "mind": losses.MIND(),
}
REGULARISERS = {"diffusion": losses.Diffusion(), "bending": losses.BendingEnergy(), "negjac": losses.NegativeJacobian()}


@pytest.mark.parametrize("spatial", [(12, 14), (10, 12, 14)])
@pytest.mark.parametrize("name", [*SIMILARITY, "dice", *REGULARISERS])
def test_gradients_are_finite_under_bf16_autocast(name, spatial):
    ndim = len(spatial)
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(1, 6, 3, padding=1)
    image = torch.rand(2, 1, *spatial)
    fixed = torch.rand(2, 1, *spatial)
    labels = torch.randint(0, 6, (2, 1, *spatial))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(image)  # bf16 activations, as a network would produce
        assert out.dtype == torch.bfloat16
        if name in SIMILARITY:
            loss = SIMILARITY[name](torch.sigmoid(out[:, :1]), fixed)
        elif name == "dice":
            loss = losses.DiceLoss()(torch.softmax(out, dim=1), labels)
        else:
            loss = REGULARISERS[name](5 * out[:, :ndim])  # large enough to fold
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0
