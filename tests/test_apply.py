"""`transreg apply` against SimpleITK's resampling of the same displacement field."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from transreg.cli import main
from transreg.registration.io import save_displacement_itk, save_image

def _affine(angles, spacing, shape, centre=(0.0, 0.0, 10.0)):
    """Voxel → RAS of a grid of ``shape`` centred on ``centre``: rotation (ITK needs
    orthonormal directions) × spacing."""
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


# an oblique moving grid, a field grid (flipped, other spacings, a little smaller), a reference grid
MOVING = _affine((8, -5, 12), (1.9, 1.8, 2.1), (40, 44, 36))
FIELD = _affine((180, 3, 0), (2.0, 2.2, 1.8), (34, 34, 38), centre=(2.0, -3.0, 11.0))
REFERENCE = _affine((0, 0, -4), (1.5, 1.5, 2.5), (50, 52, 30), centre=(-1.0, 2.0, 9.0))


def _volume(shape, seed):
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(shape), 2.0).astype(np.float32) * 100
    labels = np.digitize(image, np.quantile(image, [0.3, 0.5, 0.7])).astype(np.int16) * 7  # labels 0, 7, 14, 21
    return image, labels


def _itk_field(path, shape, affine, seed, amplitude_mm=4.0):
    """A smooth random displacement (LPS mm) written by SimpleITK (ITK's NIfTI writer, as ANTs uses)."""
    rng = np.random.default_rng(seed)
    vectors = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) for _ in range(3)], -1)
    vectors *= amplitude_mm / np.abs(vectors).max()
    field = sitk.GetImageFromArray(np.transpose(vectors, (2, 1, 0, 3)), isVector=True)  # (z, y, x, 3)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    field.SetSpacing(spacing.tolist())
    field.SetOrigin((lps @ affine[:3, 3]).tolist())
    field.SetDirection((lps @ affine[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(field, str(path))


def _sitk_resample(transform, image, reference, nearest):
    field = sitk.ReadImage(str(transform))
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    moving = sitk.ReadImage(str(image))
    out = sitk.Resample(moving, sitk.ReadImage(str(reference)), tx,
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0,
                        moving.GetPixelID() if nearest else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).T  # (z, y, x) → (x, y, z)


@pytest.fixture()
def files(tmp_path):
    image, labels = _volume((40, 44, 36), seed=0)
    save_image(tmp_path / "image.nii.gz", image, MOVING)
    save_image(tmp_path / "labels.nii.gz", labels, MOVING)
    _itk_field(tmp_path / "Warp.nii.gz", (34, 34, 38), FIELD, seed=1)
    save_image(tmp_path / "reference.nii.gz", np.zeros((50, 52, 30), np.float32), REFERENCE)
    field_grid = tmp_path / "field_grid.nii.gz"  # an image on the field's own grid, for SimpleITK's reference
    save_image(field_grid, np.zeros((34, 34, 38), np.float32), nib.load(str(tmp_path / "Warp.nii.gz")).affine)
    return tmp_path


@pytest.mark.parametrize("reference", ["field grid", "other grid"])
def test_linear_equals_simpleitk(files, reference):
    args = [] if reference == "field grid" else ["--reference", str(files / "reference.nii.gz")]
    out = files / "out.nii.gz"
    assert main(["apply", str(files / "Warp.nii.gz"), str(files / "image.nii.gz"), "-o", str(out), *args]) == 0
    ours = nib.load(str(out))
    ref_file = files / ("field_grid.nii.gz" if reference == "field grid" else "reference.nii.gz")
    expected = _sitk_resample(files / "Warp.nii.gz", files / "image.nii.gz", ref_file, nearest=False)
    assert ours.shape == expected.shape and ours.get_data_dtype() == np.float32
    np.testing.assert_allclose(ours.affine, nib.load(str(ref_file)).affine, atol=1e-5)
    data = ours.get_fdata()
    inside = expected != 0
    assert 0.3 < inside.mean() < 1.0  # the transform moves part of the grid outside the image: both give 0 there
    np.testing.assert_allclose(data, expected, atol=1e-5 * np.ptp(expected))  # float32 rounding only


def test_nearest_keeps_label_dtype_and_equals_simpleitk(files):
    out = files / "labels_out.nii.gz"
    assert main(["apply", str(files / "Warp.nii.gz"), str(files / "labels.nii.gz"), "-o", str(out),
                 "--reference", str(files / "reference.nii.gz"), "--interp", "nearest"]) == 0
    ours = nib.load(str(out))
    assert ours.get_data_dtype() == np.int16
    data = np.asarray(ours.dataobj)
    expected = _sitk_resample(files / "Warp.nii.gz", files / "labels.nii.gz", files / "reference.nii.gz", nearest=True)
    assert set(np.unique(data)) == set(np.unique(expected)) == {0, 7, 14, 21}
    assert (data != expected).mean() < 1e-4  # only rounding ties at exactly half a voxel may differ


def test_transreg_written_2d_field(tmp_path):
    affine = np.array([[0.0, -1.5, 0.0, 20.0], [1.2, 0.0, 0.0, -10.0], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1]])
    image, labels = _volume((48, 40), seed=2)
    save_image(tmp_path / "image.nii.gz", image, affine)
    save_image(tmp_path / "labels.nii.gz", labels, affine)
    rng = np.random.default_rng(3)
    displacement = np.stack([ndimage.gaussian_filter(rng.standard_normal((48, 40)), 4.0) for _ in range(2)]) * 20
    save_displacement_itk(tmp_path / "displacement_itk.nii.gz", displacement, affine)
    for name, interp in (("image", "linear"), ("labels", "nearest")):
        # a register output folder works as TRANSFORM
        assert main(["apply", str(tmp_path), str(tmp_path / f"{name}.nii.gz"), "-o", str(tmp_path / f"{name}_out.nii"),
                     "--interp", interp]) == 0
        ours = np.asarray(nib.load(str(tmp_path / f"{name}_out.nii")).dataobj).squeeze()
        expected = _sitk_resample(tmp_path / "displacement_itk.nii.gz", tmp_path / f"{name}.nii.gz",
                                  tmp_path / f"{name}.nii.gz", nearest=interp == "nearest").squeeze()
        assert ours.shape == (48, 40)
        if interp == "linear":
            np.testing.assert_allclose(ours, expected, atol=1e-3 * np.ptp(expected))
        else:
            assert ours.dtype == np.int16 and (ours != expected).mean() < 1e-3


def test_bad_input_one_line_and_no_output(tmp_path, capsys, files):
    voxel = tmp_path / "displacement_voxel.nii.gz"
    save_image(voxel, np.zeros((8, 8, 8, 3), np.float32), np.eye(4))
    out = tmp_path / "x.nii.gz"
    cases = [[str(voxel), str(files / "image.nii.gz")],
             [str(tmp_path / "missing.nii.gz"), str(files / "image.nii.gz")],
             [str(files / "Warp.nii.gz"), str(tmp_path / "missing.nii.gz")]]
    for args in cases:
        assert main(["apply", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("transreg apply: error:") and "\n" not in err and "Traceback" not in err
        assert not out.exists() and not list(tmp_path.glob(".*x.nii.gz"))
    assert main(["apply", str(voxel), str(files / "image.nii.gz"), "-o", str(out)]) == 2
    assert "voxel units" in capsys.readouterr().err
