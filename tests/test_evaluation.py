"""transreg evaluate / compare and the benchmark data builder, on tiny synthetic volumes."""
from __future__ import annotations

import csv
import filecmp
import importlib.util
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from transreg.cli import main as cli_main
from transreg.evaluation import (DatasetError, compare, parse_label_spec, read_pairs, residual_displacement,
                                 select_labels)
from transreg.evaluation import methods as methods_module
from transreg.evaluation.methods import Alignment
from transreg.metrics import ASEG_EVAL_LABELS
from transreg.registration.preprocess import Grid, coordinates, voxel_map

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 28, 24)


def _rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _labels(seed: int) -> np.ndarray:
    """Three nested/adjacent blobs (labels 1, 2, 3) that move a little with the seed."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    centre = np.array(SHAPE) / 2 + rng.uniform(-1.5, 1.5, 3)
    r = np.linalg.norm((grid - centre) * np.array([1.0, 0.85, 1.0]), axis=-1)
    out = np.zeros(SHAPE, np.int16)
    out[r < 9 + rng.uniform(-1, 1)] = 1
    out[r < 5.5] = 2
    out[(r < 4) & (grid[..., 0] > centre[0])] = 3
    return out


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    """One anatomy at 2 mm in three native poses (rotation, shift by a fraction of a voxel,
    one stored with a reversed voxel axis) and a CSV of two ordered pairs."""
    folder = tmp_path_factory.mktemp("pairs")
    poses = [(0.0, (0.0, 0.0, 0.0), False), (7.0, (3.3, -2.7, 1.2), True), (-5.0, (-2.2, 1.6, -3.1), False)]
    for k, (angle, shift, flip) in enumerate(poses):
        affine = np.eye(4)
        linear = _rotation(angle) @ np.diag([2.0, 2.0, 2.0])
        affine[:3, :3] = linear
        affine[:3, 3] = -linear @ (np.array(SHAPE) - 1) / 2 + np.array(shift)
        labels = _labels(0)  # one anatomy in three poses: the affine stage can undo the pose
        if flip:  # the same anatomy stored with the first voxel axis reversed
            reverse = np.eye(4)
            reverse[0, 0], reverse[0, 3] = -1.0, SHAPE[0] - 1
            affine, labels = affine @ reverse, labels[::-1].copy()
        image = ndimage.gaussian_filter(np.array([0.0, 0.4, 0.8, 0.6])[labels], 0.7).astype(np.float32)
        _write(folder / f"s{k}.nii.gz", image, affine)
        _write(folder / f"s{k}_labels.nii.gz", labels, affine)
    with (folder / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["moving", "fixed", "moving_labels", "fixed_labels"])
        for m, fx in ((1, 0), (2, 1)):
            writer.writerow([f"s{m}.nii.gz", f"s{fx}.nii.gz", f"s{m}_labels.nii.gz", f"s{fx}_labels.nii.gz"])
    return folder / "pairs.csv"


def _numpy_dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    pa, pb = a == label, b == label
    return 2.0 * np.sum(pa & pb) / (np.sum(pa) + np.sum(pb))


# ----------------------------------------------------------------------------- data set


def test_read_pairs_and_errors(pairs_csv: Path, tmp_path: Path) -> None:
    pairs = read_pairs(pairs_csv)
    assert [p.name for p in pairs] == ["s1 → s0", "s2 → s1"]
    assert pairs[0].moving == pairs_csv.parent / "s1.nii.gz"
    bad = tmp_path / "bad.csv"
    bad.write_text("moving,fixed,moving_labels\na,b,c\n")
    with pytest.raises(DatasetError, match="missing column.*fixed_labels"):
        read_pairs(bad)
    bad.write_text("moving,fixed,moving_labels,fixed_labels\nnope.nii.gz,b,c,d\n")
    with pytest.raises(DatasetError, match="line 2: moving file not found"):
        read_pairs(bad)
    bad.write_text("moving,fixed,moving_labels,fixed_labels\n")
    with pytest.raises(DatasetError, match="lists no pairs"):
        read_pairs(bad)


def test_label_selection() -> None:
    aseg = np.array(ASEG_EVAL_LABELS + (5, 77))
    other = np.array(ASEG_EVAL_LABELS[:-1])
    assert select_labels("aseg30", aseg, other) == ASEG_EVAL_LABELS[:-1]  # present in both
    hcp = np.array([0, 1, 2, 3, 4, 5])
    assert select_labels("aseg30", hcp, hcp) == (1, 2, 3, 4, 5)  # 2, 3, 4 are not aseg structures here
    assert select_labels("all", np.array([0, 1, 2, 9]), np.array([0, 2, 9, 4])) == (2, 9)
    assert select_labels(parse_label_spec("4, 2"), hcp, hcp) == (4, 2)
    for spec in ("x,1", "0,3", ""):
        with pytest.raises(DatasetError):
            parse_label_spec(spec)


# ----------------------------------------------------------------------------- metrics


def test_residual_displacement_recovers_the_deformable_part() -> None:
    """A full map built as affine ∘ (x + u): the residual must be u."""
    fixed = Grid((10, 12, 8), np.diag([2.0, 2.0, 2.0, 1.0]))
    moving_affine = np.eye(4)
    moving_affine[:3, :3] = _rotation(20) @ np.diag([1.5, 2.0, 2.5])
    moving_affine[:3, 3] = [5.0, -3.0, 2.0]
    moving = Grid((16, 16, 16), moving_affine)
    world = np.eye(4)
    world[:3, :3] = _rotation(-8) * 1.1
    world[:3, 3] = [1.0, 2.0, -4.0]
    u = torch.randn(3, *fixed.shape) * 0.7
    matrix = torch.as_tensor(voxel_map(fixed, moving, world), dtype=torch.float32)
    x = coordinates(np.eye(4), fixed.shape)
    coords = torch.einsum("ij,j...->i...", matrix[:3, :3], x + u) + matrix[:3, 3].view(3, 1, 1, 1)
    residual = residual_displacement(Alignment(coords, world, np.zeros(fixed.shape)), fixed, moving)
    assert residual.shape == (1, 3, *fixed.shape)
    torch.testing.assert_close(residual[0], u, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- compare


def test_identity_dice_equals_unregistered_dice(pairs_csv: Path, tmp_path: Path) -> None:
    """Identity row = moving labels resampled through the two NIfTI affines (scipy, nearest)."""
    evaluation, _ = compare(["identity"], pairs_csv, tmp_path / "out", baselines=False, ants=False, labels="all",
                            device="cpu", progress=False, warmup=False)
    for row, pair in zip(evaluation.rows, read_pairs(pairs_csv)):
        mov, fix = nib.load(str(pair.moving_labels)), nib.load(str(pair.fixed_labels))
        to_moving = np.linalg.inv(mov.affine) @ fix.affine
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in fix.shape], indexing="ij")).reshape(3, -1)
        points = to_moving[:3, :3] @ grid + to_moving[:3, 3:]
        warped = ndimage.map_coordinates(np.asarray(mov.dataobj), points, order=0, mode="constant", cval=0)
        warped = warped.reshape(fix.shape)
        fixed = np.asarray(fix.dataobj)
        expected = {v: _numpy_dice(warped, fixed, v) for v in (1, 2, 3)}
        assert row["dice"] == pytest.approx(expected, abs=1e-12)
        assert row["dice_mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
        assert row["folding_percent"] == 0.0 and row["sdlogj"] == pytest.approx(0.0, abs=1e-6)


def test_compare_writes_table_and_plots(pairs_csv: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(methods_module, "ants_available", lambda: False)
    monkeypatch.setattr("transreg.evaluation.ants_available", lambda: False)
    out = tmp_path / "cmp"
    code = cli_main(["compare", "--models", "voxelmorph1", "--data", str(pairs_csv), "-o", str(out),
                     "--labels", "all", "--device", "cpu", "--no-progress"])
    assert code == 0
    for name in ("per_pair.csv", "summary.csv", "summary.md", "dice_boxplot.png", "dice_vs_runtime.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "per_pair.csv").open()))
    assert [r["method"] for r in rows] == ["identity"] * 2 + ["affine"] * 2 + ["voxelmorph1"] * 2
    for r in rows:  # the mean Dice column is the mean of the per-structure columns
        assert float(r["dice_mean"]) == pytest.approx(np.mean([float(r[f"dice_{v}"]) for v in (1, 2, 3)]), abs=1e-5)
    summary = {r["method"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert list(summary) == ["identity", "affine", "voxelmorph1"]
    for method, s in summary.items():
        per_pair = [float(r["dice_mean"]) for r in rows if r["method"] == method]
        assert float(s["dice_mean"]) == pytest.approx(np.mean(per_pair), abs=1e-5)
        assert float(s["dsc30"]) == pytest.approx(min(per_pair), abs=1e-5)  # ceil(0.3 × 2) = 1 pair
    assert int(summary["voxelmorph1"]["parameters"]) == sum(
        p.numel() for p in __import__("transreg").create_model("voxelmorph1", ndim=3).parameters())
    assert float(summary["voxelmorph1"]["macs"]) > 0 and summary["identity"]["macs"] == ""
    assert float(summary["voxelmorph1"]["peak_memory_mib"]) > 0
    # the affine baseline's map is purely affine: no deformable part (needs the affine stage's matrix)
    assert float(summary["affine"]["sdlogj_mean"]) < 1e-4 and float(summary["affine"]["folding_percent_mean"]) == 0
    # one anatomy in three rigid poses: the affine stage must undo them
    assert float(summary["affine"]["dice_mean"]) > 0.85 > float(summary["identity"]["dice_mean"]) + 0.2
    text = (out / "summary.md").read_text()
    assert "untrained weights: voxelmorph1" in text and "antspyx not installed" in text
    assert "| identity | 2 |" in text
    import matplotlib.image

    for name in ("dice_boxplot.png", "dice_vs_runtime.png"):
        assert matplotlib.image.imread(out / name).ndim == 3
    # paired differences against the first of --models, from the per-pair rows
    paired = {(r["method"], r["metric"]): r for r in csv.DictReader((out / "paired_differences.csv").open())}
    assert {m for m, _ in paired} == {"identity", "affine"} and {r["reference"] for r in paired.values()} == {"voxelmorph1"}
    for method in ("identity", "affine"):
        diffs = [float(a["dice_mean"]) - float(b["dice_mean"]) for a, b in zip(
            (r for r in rows if r["method"] == method), (r for r in rows if r["method"] == "voxelmorph1"))]
        d = paired[(method, "dice_mean")]
        assert float(d["mean"]) == pytest.approx(np.mean(diffs), abs=1e-5) and int(d["pairs"]) == 2
        assert float(d["low"]) <= float(d["mean"]) <= float(d["high"])
        assert int(d["better"]) == sum(x > 0 for x in diffs)
    assert "Paired differences against `voxelmorph1`" in text and "| affine | 2 |" in text


def test_bootstrap_interval_matches_scipy() -> None:
    """The percentile bootstrap interval of a mean, against scipy.stats.bootstrap."""
    from scipy import stats

    from transreg.evaluation.paired import bootstrap_mean_interval

    rng = np.random.default_rng(3)
    values = rng.normal(0.02, 0.03, 30)
    low, high = bootstrap_mean_interval(values, 0.95, resamples=40_000, seed=1)
    reference = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=40_000, method="percentile",
                                random_state=2).confidence_interval
    assert low == pytest.approx(reference.low, abs=1.5e-3) and high == pytest.approx(reference.high, abs=1.5e-3)
    assert bootstrap_mean_interval([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))


def test_paired_differences_match_pairs_and_skip_missing_values() -> None:
    from transreg.evaluation.paired import paired_differences

    rows = [{"method": "a", "pair": i, "dice_mean": 0.5 + 0.01 * i, "hd95": 3.0} for i in range(4)]
    rows += [{"method": "b", "pair": i, "dice_mean": 0.6 + 0.01 * i, "hd95": 2.0 if i else float("nan")}
             for i in (3, 2, 1, 0)]  # another order: matched by pair, not by position
    dice, hd95 = paired_differences(rows, "a")
    assert (dice.method, dice.metric, dice.pairs, dice.better) == ("b", "dice_mean", 4, 4)
    assert dice.mean == pytest.approx(0.1) and dice.low == pytest.approx(0.1) and dice.high == pytest.approx(0.1)
    assert (hd95.pairs, hd95.better, hd95.mean) == (3, 3, pytest.approx(-1.0))  # lower HD95 is better
    with pytest.raises(ValueError, match="reference method 'c'"):
        paired_differences(rows, "c")
    from transreg.evaluation.report import _paired_table

    assert "pairs resampled 500 times" in "\n".join(_paired_table(paired_differences(rows, "a", resamples=500)))


def test_compare_bad_inputs_fail_before_work(pairs_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    assert cli_main(["compare", "--models", "voxelmorph1", "--data", str(tmp_path / "x.csv"), "-o", str(out)]) == 2
    assert "pairs CSV not found" in capsys.readouterr().err
    assert cli_main(["evaluate", "--model", "voxelmorph1", "--data", str(pairs_csv), "-o", str(out),
                     "--labels", "a,b"]) == 2
    assert "--labels must be" in capsys.readouterr().err
    assert cli_main(["compare", "--models", "no_such_model", "--data", str(pairs_csv), "-o", str(out),
                     "--no-progress", "--device", "cpu", "--no-ants"]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- data builder


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_data", REPO / "evaluate" / "build_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_data"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fake_shared_data(tmp_path_factory) -> Path:
    """A miniature ``../shared/data``: three SynthSeg-like maps (40³, 1 mm, LIA) with priors
    and one HCP-like subject."""
    root = tmp_path_factory.mktemp("shared")
    synth = root / "synthseg_labelmaps"
    synth.mkdir()
    labels = np.array([0, 2, 3, 4, 10, 17, 24, 41, 42, 165])
    np.save(synth / "generation_labels.npy", labels)
    np.save(synth / "generation_classes_contrast_specific.npy", np.array([0, 2, 3, 1, 4, 5, 1, 2, 3, 6]))
    np.save(synth / "generation_classes.npy", np.arange(10))  # the finer classes (copied by build_data)
    np.save(synth / "prior_means_t1.npy", np.array([[7, 40, 160, 95, 130, 120, 60], [1, 8, 10, 10, 10, 10, 8]],
                                                   dtype=float))
    lia = np.array([[-1.0, 0, 0, 20], [0, 0, 1, -20], [0, -1, 0, 20], [0, 0, 0, 1]])
    for k in (1, 10, 11):
        rng = np.random.default_rng(k)
        grid = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"), -1).astype(float)
        r = np.linalg.norm(grid - 20 - rng.uniform(-2, 2, 3), axis=-1)
        data = np.zeros((40,) * 3, np.int32)
        data[r < 17] = 165  # extra-cerebral: removed by the builder
        data[r < 14] = 3
        data[(r < 14) & (grid[..., 0] < 20)] = 42
        data[r < 10] = 2
        data[(r < 10) & (grid[..., 0] < 20)] = 41
        data[r < 4] = 4
        data[(r < 3) & (grid[..., 1] > 20)] = 10
        affine = lia.copy()
        affine[:3, 3] += rng.uniform(-3, 3, 3)
        _write(synth / f"training_seg_{k:02d}.nii.gz", data.astype(np.float32), affine)
    hcp = root / "hcp_labels" / "train" / "100307"
    hcp.mkdir(parents=True)
    hcp_labels = np.zeros((36, 40, 36), np.int16)
    hcp_labels[8:28, 8:32, 8:28] = 2
    hcp_labels[12:24, 12:28, 12:24] = 1
    hcp_labels[16:20, 18:22, 16:20] = 5
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    _write(hcp / "labels_native.nii.gz", hcp_labels, las)
    _write(hcp / "Brainmasknative.nii.gz", (hcp_labels > 0).astype(np.uint8), las)
    return root


def test_build_data_is_deterministic_and_native(fake_shared_data: Path, tmp_path: Path) -> None:
    builder = _load_builder()
    args = ["--data", str(fake_shared_data), "--subjects", "synthseg_01", "synthseg_10", "synthseg_11", "hcp_100307",
            "--aligned-size", "12", "12", "12"]
    assert builder.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert builder.main([*args, "--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 15
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    out = tmp_path / "a"
    # all ordered test pairs, paths relative to the CSV
    rows = list(csv.DictReader((out / "test_pairs.csv").open()))
    assert [(r["moving"], r["fixed"]) for r in rows] == [
        ("native/synthseg_10/image.nii.gz", "native/synthseg_11/image.nii.gz"),
        ("native/synthseg_11/image.nii.gz", "native/synthseg_10/image.nii.gz")]
    assert len(read_pairs(out / "test_pairs.csv")) == 2
    # native position: every voxel's world point holds the same label in the original 1 mm map
    src = nib.load(str(fake_shared_data / "synthseg_labelmaps" / "training_seg_10.nii.gz"))
    built = nib.load(str(out / "native" / "synthseg_10" / "labels.nii.gz"))
    assert np.allclose(np.linalg.norm(built.affine[:3, :3], axis=0), 2.0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in built.shape], indexing="ij")).reshape(3, -1)
    src_vox = np.rint(np.linalg.inv(src.affine) @ built.affine @ np.vstack([grid, np.ones(grid.shape[1])]))[:3]
    original = np.asarray(src.dataobj).astype(int)[tuple(src_vox.astype(int))]
    original[original >= 100] = 0
    assert np.array_equal(np.asarray(built.dataobj).reshape(-1), original)
    image = np.asarray(nib.load(str(out / "native" / "synthseg_10" / "image.nii.gz")).dataobj)
    lab = np.asarray(built.dataobj)
    assert image.dtype == np.uint8 and image[lab == 2].mean() > image[lab == 3].mean()  # T1: WM brighter than GM
    # aligned copies: all on the common grid, the reference unchanged up to resampling
    shapes = {nib.load(str(p)).shape for p in out.glob("aligned/*/image.nii.gz")}
    assert shapes == {(12, 12, 12)}
    assert sorted(r["image"] for r in csv.DictReader((out / "train_aligned.csv").open())) == [
        "aligned/hcp_100307/image.nii.gz", "aligned/synthseg_01/image.nii.gz"]
