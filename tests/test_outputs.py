"""`transreg register --outputs / --uncompressed`: the chosen outputs and only those are
written, they read back as computed, the QC step runs only for the report, and the
overlay shows the images with the fixed edges."""
from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

import transreg
from transreg.cli import main
from transreg.registration.io import RAS_TO_LPS, save_image
from transreg.registration.outputs import OUTPUTS, output_names, parse_outputs
from transreg.registration.overlay import PANEL, save_overlay

from test_register import OBLIQUE, blob_image


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    moving, moving_labels = blob_image((20, 18, 16), seed=0, shift=(0.1, 0.0, 0.0))
    fixed, fixed_labels = blob_image((20, 18, 16), seed=1)
    paths = {}
    for name, data in (("moving", moving), ("moving_labels", moving_labels), ("fixed", fixed),
                       ("fixed_labels", fixed_labels)):
        paths[name] = folder / f"{name}.nii.gz"
        save_image(paths[name], data, OBLIQUE)
    return paths


@pytest.fixture(scope="module")
def result(pair):
    return transreg.register(pair["moving"], pair["fixed"], model="transmorph_tiny", moving_labels=pair["moving_labels"],
                             fixed_labels=pair["fixed_labels"], affine=False, device="cpu", spacing=2.0)


def _args(pair, out, *extra):
    return ["register", str(pair["moving"]), str(pair["fixed"]), "-o", str(out), "--moving-labels",
            str(pair["moving_labels"]), "--fixed-labels", str(pair["fixed_labels"]), "--model", "transmorph_tiny",
            "--no-affine", "--spacing", "2", "--device", "cpu", *extra]


@pytest.mark.parametrize("chosen", [("warped", "itk"), ("labels", "voxel", "report"), ("overlay",)])
def test_only_the_chosen_outputs_are_written(pair, tmp_path, chosen, capsys):
    out = tmp_path / "out"
    assert main(_args(pair, out, "--outputs", ",".join(chosen))) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS[name] for name in chosen)
    printed = capsys.readouterr().out
    assert ("[qc]" in printed) == ("report" in chosen)  # the QC step runs for the report only


def test_uncompressed_writes_nii(pair, tmp_path):
    out = tmp_path / "out"
    assert main(_args(pair, out, "--uncompressed")) == 0
    expected = {f.replace(".nii.gz", ".nii") for f in OUTPUTS.values()}
    assert {p.name for p in out.iterdir()} == expected
    with open(out / "warped.nii", "rb") as f:
        assert f.read(2) != b"\x1f\x8b"  # not gzip


def test_unknown_output_is_one_error_and_writes_nothing(pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(pair, out, "--outputs", "warped,flow")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown output 'flow'" in err and "choose from warped" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="none given"):
        parse_outputs(" , ")


@pytest.mark.parametrize("compressed", [True, False])
def test_files_read_back_equal_the_result(result, tmp_path, compressed):
    written = result.save(tmp_path / "out", compressed=compressed)
    files = output_names(None, compressed)
    assert set(written) == set(files.values())
    read = {name: nib.load(str(tmp_path / "out" / files[name])) for name in ("warped", "labels", "itk", "voxel")}
    np.testing.assert_array_equal(read["warped"].get_fdata(dtype=np.float32), result.warped.data)
    np.testing.assert_array_equal(np.asarray(read["labels"].dataobj), result.warped_labels.data)
    assert read["labels"].get_data_dtype() == result.warped_labels.data.dtype
    voxel = np.moveaxis(np.asarray(read["voxel"].dataobj), -1, 0)
    np.testing.assert_array_equal(voxel, result.transform.displacement_voxel())
    itk = np.moveaxis(np.asarray(read["itk"].dataobj)[:, :, :, 0], -1, 0) * RAS_TO_LPS.reshape(3, 1, 1, 1)
    np.testing.assert_allclose(itk, result.transform.displacement_world(), atol=1e-6)
    for image in read.values():
        np.testing.assert_allclose(image.affine, result.fixed.affine, atol=1e-5)
    report = json.loads((tmp_path / "out" / files["report"]).read_text())
    assert report["outputs"] == sorted(files.values()) and report["dice"]["mean"] == result.report["dice"]["mean"]


def test_without_qc_the_report_has_no_qc(pair):
    plain = transreg.register(pair["moving"], pair["fixed"], model="transmorph_tiny", affine=False, device="cpu",
                              spacing=2.0, moving_labels=pair["moving_labels"], fixed_labels=pair["fixed_labels"],
                              qc=False)
    assert not {"folding_percent", "dice", "dice_before", "dice_affine"} & set(plain.report)
    assert "qc" not in plain.report["runtime_s"]


def test_overlay_shows_the_images_and_the_fixed_edges_on_moving_and_warped(tmp_path):
    fixed = np.zeros((40, 30, 20), np.float32)
    fixed[10:30, 8:22, 5:15] = 1.0  # a bright box
    moving = np.roll(fixed, 12, axis=0)  # the box moved out of the mid-sagittal slice
    save_overlay(tmp_path / "o.png", fixed, moving, fixed, np.eye(4), title="t")
    png = np.asarray(PILImage.open(tmp_path / "o.png").convert("RGB")).astype(int)
    red = (png[..., 0] > 200) & (png[..., 1] < 60) & (png[..., 2] < 60)
    step, label = PANEL + 4, 60  # panel pitch; the row labels' column
    assert set(((np.flatnonzero(red.any(0)) - label) // step).tolist()) == {1, 2}  # moving and warped only
    top = png.shape[0] - 3 * step  # below the title and column names
    centre = lambda row, col: png[top + row * step + PANEL // 2, label + col * step + PANEL // 2]  # noqa: E731
    for row in range(3):  # the box is in the middle of every view of fixed and warped
        assert centre(row, 0).min() > 200 and centre(row, 2).min() > 200
    assert centre(0, 1).max() < 30  # mid-sagittal slice of the moved box: dark
    assert red[top: top + step].sum() > 2 * 2 * (14 + 10)  # sagittal: the box's outline on two panels


def test_the_same_image_gives_the_same_bytes(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    save_image(tmp_path / "a.nii.gz", data, OBLIQUE)
    time.sleep(1.1)  # a gzip time stamp would change
    save_image(tmp_path / "b.nii.gz", data, OBLIQUE)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    np.testing.assert_array_equal(nib.load(str(tmp_path / "b.nii.gz")).get_fdata(dtype=np.float32), data)
