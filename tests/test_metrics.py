"""Metrics against brute force, closed forms and an independent Learn2Reg-style computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from transreg import metrics
from transreg.spatial import affine_to_flow

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- Dice


def test_dice_counts_on_known_overlap():
    pred = np.zeros((10, 10), dtype=np.int32)
    true = np.zeros((10, 10), dtype=np.int32)
    pred[0:4, 0:5] = 1  # 20 voxels
    true[2:6, 0:5] = 1  # 20 voxels, 10 shared
    pred[8, 8] = 3  # label 3 only in pred
    true[9, 9] = 5  # label 5 only in true
    scores = metrics.dice(pred, true)
    assert scores == {1: pytest.approx(0.5), 3: 0.0, 5: 0.0}
    explicit = metrics.dice(torch.as_tensor(pred)[None, None], true.astype(np.float32), labels=[1, 7])
    assert explicit[1] == pytest.approx(0.5) and math.isnan(explicit[7])
    assert metrics.structure_mean(explicit) == pytest.approx(0.5)


def test_dice_groups_merge_masks():
    pred = RNG.integers(0, 4, size=(6, 7, 8))
    true = RNG.integers(0, 4, size=(6, 7, 8))
    got = metrics.dice(pred, true, groups={"left+right": (1, 2), "three": (3,)})
    p, t = np.isin(pred, (1, 2)), np.isin(true, (1, 2))
    assert got["left+right"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
    assert got["three"] == pytest.approx(metrics.dice(pred, true)[3])
    with pytest.raises(ValueError, match="labels or groups"):
        metrics.dice(pred, true, labels=[1], groups={"a": (1,)})


def test_dice_rejects_bad_maps():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.dice(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="integer labels"):
        metrics.dice(np.full((4, 4), 0.5), np.zeros((4, 4)))


def test_aseg_labels_file_matches_built_in_list(tmp_path):
    assert metrics.ASEG_EVAL_LABELS == (
        2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31,
        41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60, 63,
    )  # fmt: skip
    assert metrics.aseg_eval_labels() == metrics.ASEG_EVAL_LABELS
    shared = metrics._DEFAULT_ASEG_FILE
    if shared.is_file():
        assert metrics.aseg_eval_labels(shared) == metrics.ASEG_EVAL_LABELS
    np.savez(tmp_path / "labels.npz", labels=np.array([4, 43]))
    assert metrics.aseg_eval_labels(tmp_path / "labels.npz") == (4, 43)
    with pytest.raises(FileNotFoundError):
        metrics.aseg_eval_labels(tmp_path / "missing.npz")
    groups = metrics.aseg_lr_groups()
    assert len(groups) == 17 and groups["hippocampus"] == (17, 53) and groups["brain-stem"] == (16,)
    assert sorted(v for members in groups.values() for v in members) == sorted(metrics.ASEG_EVAL_LABELS)


# --------------------------------------------------------------------------- HD95


def brute_force_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of mask with a face neighbour outside it or outside the image."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return mask & ~inner


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    pa = np.argwhere(brute_force_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(brute_force_surface(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


@pytest.mark.parametrize("shape, spacing", [((20, 17), (1.0, 1.0)), ((20, 17), (0.7, 2.0)), ((12, 11, 10), (1.5, 1.0, 0.8))])
def test_hd95_matches_brute_force(shape, spacing):
    smooth = [ndimage.gaussian_filter(RNG.random(shape), 1.5) for _ in range(2)]
    pred = np.digitize(smooth[0], np.quantile(smooth[0], [0.3, 0.7]))
    true = np.digitize(smooth[1], np.quantile(smooth[1], [0.4, 0.8]))
    got = metrics.hd95(torch.as_tensor(pred), true, spacing=spacing)
    assert set(got) == {1, 2}
    for label in (1, 2):
        assert got[label] == pytest.approx(brute_force_hd95(pred == label, true == label, spacing), rel=1e-9)


def test_hd95_known_shift_and_absent_structures():
    a = np.zeros((30, 30), dtype=int)
    b = np.zeros((30, 30), dtype=int)
    a[10:20, 10:20] = 1
    b[13:23, 10:20] = 1  # shifted by 3 voxels along axis 0
    a[0, 0] = 2
    got = metrics.hd95(a, b, labels=[1, 2, 3], spacing=(2.0, 1.0))
    assert got[1] == pytest.approx(6.0)  # 3 voxels × 2 mm, the largest surface distance
    assert got[2] == math.inf and math.isnan(got[3])
    with pytest.raises(ValueError, match="3-D label map"):
        metrics.hd95(a, b, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(a, b, spacing=(1.0, 0.0))


# --------------------------------------------------------------------------- flows


def quadratic_flow(shape, c: float) -> np.ndarray:
    """u_0 = c x0², other components 0: det J = 1 + 2 c x0 (exact for central differences)."""
    flow = np.zeros((len(shape), *shape))
    x0 = np.arange(shape[0], dtype=np.float64).reshape(-1, *([1] * (len(shape) - 1)))
    flow[0] = np.broadcast_to(c * x0**2, shape)
    return flow


def expected_quadratic_jacobian(shape, c: float) -> np.ndarray:
    n = shape[0]
    d = 1 + 2 * c * np.arange(n, dtype=np.float64)
    d[0] = 1 + c  # one-sided: c·1² - c·0²
    d[-1] = 1 + c * (2 * n - 3)  # one-sided: c(n-1)² - c(n-2)²
    return np.broadcast_to(d.reshape(-1, *([1] * (len(shape) - 1))), shape)


@pytest.mark.parametrize("shape", [(16, 12), (14, 9, 8)])
def test_folding_percent_known_answers(shape):
    ndim = len(shape)
    assert metrics.folding_percent(np.zeros((ndim, *shape))) == 0.0
    flip = torch.eye(ndim, ndim + 1)[None].clone()
    flip[0, 0, 0] = -1.0
    assert metrics.folding_percent(affine_to_flow(flip, shape)) == 100.0
    squeeze = torch.eye(ndim, ndim + 1)[None] * 0.3
    assert metrics.folding_percent(affine_to_flow(squeeze, shape)[0]) == 0.0
    c = -0.05  # det J = 1 - 0.1 x0 <= 0 from x0 = 10 on
    expected = 100.0 * np.mean(expected_quadratic_jacobian(shape, c) <= 0)
    assert expected > 0
    assert metrics.folding_percent(quadratic_flow(shape, c)) == pytest.approx(expected)
    mask = np.zeros(shape, dtype=bool)
    mask[:5] = True
    assert metrics.folding_percent(quadratic_flow(shape, c), mask=mask) == 0.0


def learn2reg_sdlogj_reference(disp: np.ndarray) -> float:
    """Independent numpy version of the Learn2Reg formula (3-D, (3, X, Y, Z) in voxels)."""
    kernel = np.array([-0.5, 0.0, 0.5])
    grads = np.empty((3, 3, *disp.shape[1:]))  # grads[i, j] = d u_j / d x_i
    for i in range(3):
        for j in range(3):
            grads[i, j] = ndimage.correlate1d(disp[j], kernel, axis=i, mode="constant", cval=0.0)
    jac = (grads + np.eye(3).reshape(3, 3, 1, 1, 1))[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    return float(np.log(np.clip(det + 3, 1e-9, 1e9)).std())


def test_sdlogj_known_answers_and_learn2reg_reference():
    shape = (16, 12, 10)
    assert metrics.sdlogj(np.zeros((3, *shape))) == 0.0
    affine = torch.tensor([[[1.2, 0.1, 0.0, 1.0], [0.0, 0.9, 0.2, -2.0], [0.1, 0.0, 1.1, 0.5]]])
    assert metrics.sdlogj(affine_to_flow(affine, shape)) == pytest.approx(0.0, abs=1e-6)
    c = 0.03
    det = 1 + 2 * c * np.arange(shape[0])[2:-2]  # exact inside the 2-voxel crop
    expected = np.log(det + 3).std()  # every x0 slice has the same number of voxels
    assert metrics.sdlogj(quadratic_flow(shape, c)) == pytest.approx(expected, rel=1e-5)
    assert metrics.sdlogj(quadratic_flow(shape, c), offset=0.0) == pytest.approx(np.log(det).std(), rel=1e-5)
    smooth = np.stack([ndimage.gaussian_filter(RNG.normal(size=shape), 2) * 20 for _ in range(3)])
    assert metrics.sdlogj(smooth) == pytest.approx(learn2reg_sdlogj_reference(smooth), rel=1e-4)


@pytest.mark.parametrize("shape", [(12, 10), (10, 8, 7)])
def test_non_diffeomorphic_volume_known_answers(shape):
    ndim = len(shape)
    assert metrics.non_diffeomorphic_volume(np.zeros((ndim, *shape))) == 0.0
    flip = torch.eye(ndim, ndim + 1)[None].clone()
    flip[0, 0, 0] = -1.0
    assert metrics.non_diffeomorphic_volume(affine_to_flow(flip, shape)) == pytest.approx(100.0)
    c = -0.08
    # along x0 a cell [i, i+1] maps to length 1 + c (2 i + 1); it is inverted where that is < 0
    lengths = 1 + c * (2 * np.arange(shape[0] - 1) + 1)
    expected = 100.0 * np.mean(np.maximum(-lengths, 0))
    assert expected > 0
    assert metrics.non_diffeomorphic_volume(quadratic_flow(shape, c)) == pytest.approx(expected)


def test_flow_metrics_reject_batches_and_bad_shapes():
    with pytest.raises(ValueError, match="one field at a time"):
        metrics.folding_percent(torch.zeros(2, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="one displacement"):
        metrics.sdlogj(np.zeros((8, 8)))


# --------------------------------------------------------------------------- TRE and aggregation


def test_tre_with_linear_flow_and_spacing():
    shape = (10, 12, 14)
    a = torch.tensor([[[1.1, 0.0, 0.1, 2.0], [0.05, 0.9, 0.0, -1.0], [0.0, 0.1, 1.0, 0.5]]], dtype=torch.float64)
    flow = affine_to_flow(a, shape)[0].numpy()
    fixed = RNG.uniform(1, 8, size=(6, 3))  # off-grid points: linear interpolation is exact
    exact = fixed @ a[0, :, :3].numpy().T + a[0, :, 3].numpy()
    moving = exact + RNG.normal(size=(6, 3))
    spacing = (1.5, 1.0, 2.0)
    expected = np.linalg.norm((exact - moving) * spacing, axis=1)
    np.testing.assert_allclose(metrics.tre(fixed, moving, flow, spacing=spacing), expected, rtol=1e-6)
    before = np.linalg.norm((fixed - moving) * spacing, axis=1)
    np.testing.assert_allclose(metrics.tre(torch.as_tensor(fixed), moving, spacing=spacing), before)
    with pytest.raises(ValueError, match=r"\(N, 2\) or \(N, 3\)"):
        metrics.tre(fixed, moving[:3])


def test_summarize_mean_std_and_worst_30_percent():
    values = [0.9, 0.5, 0.7, 0.8, np.nan, 0.6, 0.85, 0.75, 0.65, 0.95, 0.55]
    s = metrics.summarize(values)
    clean = np.array([v for v in values if not np.isnan(v)])
    assert s["n"] == 10
    assert s["mean"] == pytest.approx(clean.mean()) and s["std"] == pytest.approx(clean.std())
    assert s["dsc30"] == pytest.approx(np.mean([0.5, 0.55, 0.6]))
    hd = metrics.summarize(torch.tensor([1.0, 2.0, 3.0, 10.0]), higher_is_better=False, ddof=1)
    assert hd["dsc30"] == pytest.approx(np.mean([10.0, 3.0]))  # ceil(0.3 × 4) = 2 worst = largest
    assert hd["std"] == pytest.approx(np.std([1, 2, 3, 10], ddof=1))
    assert math.isnan(metrics.summarize([np.nan])["mean"])


def test_dice_counts_equal_the_mask_definition():
    """dice counts every label in one pass; the result is 2|P∩T| / (|P| + |T|) per label,
    for small, large and negative labels, and for merged groups."""
    rng = np.random.default_rng(4)
    for values in ([0, 2, 3, 41, 42], [0, 7, 3_000_000], [-5, 0, 4]):
        pred = rng.choice(values, size=(17, 13, 11))
        true = np.where(rng.random(pred.shape) < 0.7, pred, rng.choice(values, size=pred.shape))
        scores = metrics.dice(pred, true)
        assert sorted(scores) == sorted(v for v in values if v != 0)
        for label, score in scores.items():
            p, t = pred == label, true == label
            assert score == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
    merged = metrics.dice(pred, true, groups={"both": [-5, 4]})["both"]
    p, t = np.isin(pred, [-5, 4]), np.isin(true, [-5, 4])
    assert merged == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
