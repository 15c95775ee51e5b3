"""`transreg register` end to end, bad input, mapping back to the fixed grid, checkpoints."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import SimpleITK as sitk
from scipy import ndimage

import transreg
from transreg.cli import main
from transreg.registration.io import save_image
from transreg.zoo import index as zoo
from transreg.registration.defaults import default_model, sample_pair
from transreg.registration.result import OUTPUT_FILES

OBLIQUE = np.array([[0.76, -0.27, -0.24, -12.0], [0.17, 0.92, -0.47, 20.0], [0.18, 0.27, 1.40, 5.0], [0, 0, 0, 1]])


def blob_image(shape, seed=0, shift=None):
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.random(shape), 1.5)
    shift = shift or (0.0,) * len(shape)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) - s for n, s in zip(shape, shift)], indexing="ij")
    mask = sum(a**2 for a in axes) < 0.5
    return (mask * (50 + 100 * texture)).astype(np.float32), mask.astype(np.int16) * (1 + (axes[0] > 0))


def test_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["register", "--sample", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert all((out / name).is_file() for name in OUTPUT_FILES)
    assert str(out.resolve() / "warped.nii.gz") in printed and "[affine]" in printed and "[deformable]" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == default_model()  # zoo v1's shipped checkpoint
    assert report["model"]["trained"] is (zoo.DEFAULT_CHECKPOINT is not None)
    assert {"load", "model", "preprocess", "affine", "deformable", "resample", "write"} <= set(report["runtime_s"])
    assert 0.0 <= report["folding_percent"] < 1.0
    assert report["dice"]["mean"] > report["dice_before"] + 0.2  # the affine stage aligned the pair
    assert set(report["dice"]["per_label"]) >= {"2", "3", "17", "41"}

    paths = sample_pair()
    fixed = nib.load(str(paths["fixed"]))
    warped_labels = nib.load(str(out / "warped_labels.nii.gz"))
    assert np.issubdtype(warped_labels.get_data_dtype(), np.integer)
    assert warped_labels.shape == fixed.shape
    np.testing.assert_allclose(warped_labels.affine, fixed.affine, atol=1e-5)
    assert set(np.unique(np.asarray(warped_labels.dataobj))) <= set(np.unique(np.asarray(nib.load(str(paths["moving_labels"])).dataobj)))
    assert nib.load(str(out / "displacement_voxel.nii.gz")).shape == (*fixed.shape, 3)

    # the full transform (affine stage ∘ network) in the ITK file reproduces warped.nii.gz
    field = sitk.ReadImage(str(out / "displacement_itk.nii.gz"))
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    by_itk = sitk.Resample(sitk.ReadImage(str(paths["moving"])), sitk.ReadImage(str(paths["fixed"])), tx,
                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    by_itk = np.transpose(sitk.GetArrayFromImage(by_itk), (2, 1, 0))
    ours = nib.load(str(out / "warped.nii.gz")).get_fdata()
    assert np.abs(by_itk - ours).mean() < 0.01 * np.ptp(ours)


def _bad_inputs(tmp_path):
    image, labels = blob_image((16, 16, 16))
    save_image(tmp_path / "ok.nii.gz", image, OBLIQUE)
    save_image(tmp_path / "labels_small.nii.gz", labels[:8], OBLIQUE)
    save_image(tmp_path / "four_d.nii.gz", np.stack([image, image], -1), OBLIQUE)
    with_nan = image.copy()
    with_nan[3, 4, 5] = np.nan
    save_image(tmp_path / "nan.nii.gz", with_nan, OBLIQUE)
    save_image(tmp_path / "flat.nii.gz", image[:, :, 8], OBLIQUE)
    (tmp_path / "text.nii.gz").write_text("not an image")
    (tmp_path / "a_file").write_text("")
    ok = str(tmp_path / "ok.nii.gz")
    return {
        "missing file": ([str(tmp_path / "nope.nii.gz"), ok], "not found"),
        "not NIfTI": ([str(tmp_path / "text.nii.gz"), ok], "not a readable NIfTI"),
        "4-D image": ([str(tmp_path / "four_d.nii.gz"), ok], "4-D"),
        "NaNs": ([ok, str(tmp_path / "nan.nii.gz")], "NaN"),
        "2-D with 3-D": ([str(tmp_path / "flat.nii.gz"), ok], "2-D"),
        "label shape": ([ok, ok, "--moving-labels", str(tmp_path / "labels_small.nii.gz")], "shape"),
        "OUT is a file": ([ok, ok, "-o", str(tmp_path / "a_file")], "not a folder"),
        "OUT under a file": ([ok, ok, "-o", str(tmp_path / "a_file" / "out")], "not a folder"),
    }


CASES = ["missing file", "not NIfTI", "4-D image", "NaNs", "2-D with 3-D", "label shape", "OUT is a file",
         "OUT under a file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_clear_error_and_no_output(tmp_path, capsys, case):
    args, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    if "-o" not in args:
        args = args + ["-o", str(out)]
    capsys.readouterr()
    assert main(["register", *args, "--model", "transmorph_tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
    assert (tmp_path / "a_file").is_file()


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    image, _ = blob_image((16, 16, 16))
    save_image(tmp_path / "img.nii.gz", image, OBLIQUE)
    result = transreg.register(tmp_path / "img.nii.gz", tmp_path / "img.nii.gz", affine_only=True, spacing=2.0)
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transreg.registration.overlay.save_overlay", broken)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="No space left"):
        result.save(out)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(ValueError, match="No space left"):
        result.save(out)
    assert list(out.iterdir()) == []


def test_results_map_back_to_the_original_fixed_grid_exactly(tmp_path):
    """Oblique anisotropic image onto itself, no affine, untrained (≈ zero) network: the full
    transform through the 2 mm RAS model grid is the identity on the original grid."""
    image, _ = blob_image((30, 26, 18))
    save_image(tmp_path / "img.nii.gz", image, OBLIQUE)
    result = transreg.register(tmp_path / "img.nii.gz", tmp_path / "img.nii.gz", model="transmorph_tiny",
                               affine=False, spacing=2.0, device="cpu")
    assert result.report["preprocessing"]["model_grid_shape"] != [30, 26, 18]
    np.testing.assert_allclose(result.transform.displacement_voxel(), 0.0, atol=1e-2)
    np.testing.assert_allclose(result.warped.data, image, atol=0.01 * np.ptp(image))
    np.testing.assert_allclose(result.warped.affine, OBLIQUE)


def _disk_pair(tmp_path, shift_mm):
    size = 48
    affine = np.diag([1.5, 1.5, 1.0, 1.0])
    fixed, fixed_labels = blob_image((size, size), seed=1)
    moving, moving_labels = blob_image((size, size), seed=1, shift=(shift_mm / (1.5 * size / 2), 0))
    for name, data in {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels,
                       "moving_labels": moving_labels}.items():
        save_image(tmp_path / f"{name}.nii.gz", data, affine)
    return {k: tmp_path / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels")}


def test_2d_with_checkpoint_folder_uses_its_preprocessing(tmp_path):
    paths = _disk_pair(tmp_path, shift_mm=6.0)
    model = transreg.create_model("transmorph_tiny", ndim=2)
    transreg.save_pretrained(model, tmp_path / "ckpt", preprocessing={"spacing": [3.0, 3.0], "intensity": "min-max"})
    result = transreg.register(paths["moving"], paths["fixed"], model=str(tmp_path / "ckpt"),
                               moving_labels=paths["moving_labels"], fixed_labels=paths["fixed_labels"])
    report = result.report
    assert report["preprocessing"]["spacing"] == (3.0, 3.0)
    assert report["preprocessing"]["model_grid_shape"] == [24, 24]
    assert report["model"]["trained"] is True and report["model"]["source"] == "local-dir"
    assert report["dice"]["mean"] > 0.9 > report["dice_before"]
    assert result.warped.data.shape == (48, 48)


def test_instance_optimisation_improves_the_match(tmp_path):
    paths = _disk_pair(tmp_path, shift_mm=4.0)
    common = dict(model="transmorph_tiny", affine=False, spacing=1.5, device="cpu")
    fixed = nib.load(str(paths["fixed"])).get_fdata()
    plain = transreg.register(paths["moving"], paths["fixed"], **common)
    refined = transreg.register(paths["moving"], paths["fixed"], instance_opt=40, instance_opt_weight=1.0, **common)
    error = lambda r: np.abs(r.warped.data - fixed).mean()  # noqa: E731
    assert error(refined) < 0.7 * error(plain)
    assert refined.report["runtime_s"]["instance_opt"] > 0


def test_affine_only_and_no_affine_exclude(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["register", "--sample", "-o", str(tmp_path / "o"), "--affine-only", "--no-affine"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="affine_only"):
        transreg.register(*[sample_pair()[k] for k in ("moving", "fixed")], affine_only=True, instance_opt=3)


def test_bf16_inference_matches_fp32_on_the_sample(tmp_path):
    """The network stage in bf16 gives (nearly) the fp32 registration: Dice within 0.005."""
    import transreg
    from transreg.registration.defaults import sample_pair

    pair = sample_pair()
    torch.manual_seed(0)
    net = transreg.create_model("transmorph_tiny")
    with torch.no_grad():
        net.head.conv.weight.mul_(3e4)  # a few voxels of displacement from the untrained head
    results = {p: transreg.register(pair["moving"], pair["fixed"], model=net, moving_labels=pair["moving_labels"],
                                    fixed_labels=pair["fixed_labels"], affine=False, precision=p)
               for p in ("fp32", "bf16")}
    assert results["bf16"].report["precision"] == "bf16"
    with torch.no_grad():
        net.head.conv.weight.zero_()
    still = transreg.register(pair["moving"], pair["fixed"], model=net, affine=False)
    network_part = results["fp32"].transform.displacement_voxel() - still.transform.displacement_voxel()
    assert np.abs(network_part).max() > 1.0  # the network moves voxels by more than one voxel
    assert abs(results["fp32"].report["dice"]["mean"] - results["bf16"].report["dice"]["mean"]) < 0.005
