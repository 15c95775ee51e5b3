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


# ---------------------------------------------------------------------------------------
# ITK linear transform files (ANTs 0GenericAffine.mat, .txt) and chains, antsApplyTransforms' order

LPS = np.array([-1.0, -1.0, 1.0])


def _sitk_affine(centre=(5.0, -8.0, 12.0)):
    """Rotation (~14°) × anisotropic scale + a little shear, a centre away from the origin, a translation (LPS)."""
    from scipy.spatial.transform import Rotation

    matrix = Rotation.from_euler("zxy", (11, -6, 7), degrees=True).as_matrix() @ np.array(
        [[1.12, 0.06, 0.0], [0.0, 0.91, -0.04], [0.03, 0.0, 1.05]])
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(matrix.ravel().tolist())
    tx.SetCenter(centre)
    tx.SetTranslation((3.0, -2.5, 4.0))
    return tx


def _resample(moving_path, reference_path, tx, nearest=False):
    moving = sitk.ReadImage(str(moving_path))
    out = sitk.Resample(moving, sitk.ReadImage(str(reference_path)), tx,
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0,
                        moving.GetPixelID() if nearest else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).T


def _field_tx(path):
    return sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))


def _assert_close_and_sensitive(data, expected, wrong):
    """``data`` equals SimpleITK's ``expected`` to float32 rounding, and ``wrong`` (a
    mistaken centre or order) is far outside that tolerance: the test can fail."""
    tol = 1e-5 * np.ptp(expected)
    inside = expected != 0
    assert 0.3 < inside.mean() < 1.0  # part of the grid maps outside the image: both give 0 there
    np.testing.assert_allclose(data, expected, atol=tol)
    assert np.abs(wrong - expected).max() > 1000 * tol
    return float(np.abs(data - expected).max() / np.ptp(expected))


@pytest.mark.parametrize("form", ["mat", "txt", "tfm", "mat inverse"])
def test_affine_file_equals_simpleitk(files, form):
    tx = _sitk_affine()
    path = files / f"0GenericAffine.{form.split()[0]}"
    sitk.WriteTransform(tx, str(path))
    out = files / "out.nii.gz"
    reference = files / "reference.nii.gz"
    if form == "mat inverse":  # antsApplyTransforms' [file,1]
        args = ["-t", f"[{path},1]", str(files / "image.nii.gz")]
        tx, wrong = tx.GetInverse(), tx
    else:  # the single positional TRANSFORM, as for a field
        args = [str(path), str(files / "image.nii.gz")]
        wrong = _sitk_affine(centre=(0.0, 0.0, 0.0))
    assert main(["apply", *args, "-o", str(out), "--reference", str(reference)]) == 0
    ours = nib.load(str(out))
    assert ours.shape == (50, 52, 30) and ours.get_data_dtype() == np.float32
    np.testing.assert_allclose(ours.affine, REFERENCE, atol=1e-5)
    expected = _resample(files / "image.nii.gz", reference, tx)
    _assert_close_and_sensitive(ours.get_fdata(), expected, _resample(files / "image.nii.gz", reference, wrong))


def _linear_transforms():
    a2 = sitk.AffineTransform(2)
    a2.SetMatrix((0.9, -0.3, 0.25, 1.1))
    a2.SetCenter((4.0, -7.0))
    a2.SetTranslation((2.0, 3.0))
    zyx = sitk.Euler3DTransform((1.0, -2.0, 5.0), 0.2, -0.3, 0.4, (1.0, 2.0, -3.0))
    zyx.SetComputeZYX(True)
    composite = sitk.CompositeTransform([_sitk_affine(), sitk.Euler3DTransform((2.0, 0.0, 1.0), 0.1, 0.2, -0.3, (1.0, 0, 0))])
    return {
        "affine 3-D": _sitk_affine(),
        "affine 2-D": a2,
        "translation": sitk.TranslationTransform(3, (1.5, -2.0, 0.5)),
        "euler 3-D": sitk.Euler3DTransform((1.0, -2.0, 5.0), 0.2, -0.3, 0.4, (1.0, 2.0, -3.0)),
        "euler 3-D zyx": zyx,
        "versor rigid": sitk.VersorRigid3DTransform((0.1, -0.2, 0.15, np.sqrt(1 - 0.0725)), (1.0, 2.0, 3.0),
                                                    (4.0, -5.0, 6.0)),
        "similarity 3-D": sitk.Similarity3DTransform(1.3, (0.2, 0.3, -0.1), 0.4, (1.0, 2.0, 3.0), (-1.0, 0.5, 2.0)),
        "euler 2-D": sitk.Euler2DTransform((3.0, -1.0), 0.5, (2.0, 1.0)),
        "similarity 2-D": sitk.Similarity2DTransform(0.8, 0.3, (1.0, 2.0), (-2.0, 1.0)),
        "composite text": composite,
    }


@pytest.mark.parametrize("name", list(_linear_transforms()))
@pytest.mark.parametrize("inverse", [False, True])
def test_linear_types_map_points_as_simpleitk(tmp_path, name, inverse):
    from transreg.registration.itk_transforms import read_itk_linear

    tx = _linear_transforms()[name]
    n = tx.GetDimension()
    for suffix in ("txt",) if name == "composite text" else ("mat", "txt"):
        path = tmp_path / f"t.{suffix}"
        sitk.WriteTransform(tx, str(path))
        matrix = read_itk_linear(path, inverse=inverse)
        reference = sitk.ReadTransform(str(path))
        if inverse:
            reference = reference.GetInverse()
        points = np.random.default_rng(0).uniform(-50, 50, (20, n))
        flip = LPS[:n]
        expected = np.array([flip * np.array(reference.TransformPoint((flip * p).tolist())) for p in points])
        ours = points @ matrix[:n, :n].T + matrix[:n, n]
        np.testing.assert_allclose(ours, expected, atol=1e-9)
        assert np.abs(points - expected).max() > 0.5  # not the identity


def test_affine_2d_equals_simpleitk(tmp_path):
    affine = np.array([[0.0, -1.5, 0.0, 20.0], [1.2, 0.0, 0.0, -10.0], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1]])
    image, _ = _volume((48, 40), seed=4)
    save_image(tmp_path / "image.nii.gz", image, affine)
    tx = _linear_transforms()["affine 2-D"]
    sitk.WriteTransform(tx, str(tmp_path / "a.mat"))
    assert main(["apply", str(tmp_path / "a.mat"), str(tmp_path / "image.nii.gz"), "-o", str(tmp_path / "out.nii.gz"),
                 "--reference", str(tmp_path / "image.nii.gz")]) == 0
    ours = np.asarray(nib.load(str(tmp_path / "out.nii.gz")).dataobj).squeeze()
    expected = _resample(tmp_path / "image.nii.gz", tmp_path / "image.nii.gz", tx).squeeze()
    wrong = _resample(tmp_path / "image.nii.gz", tmp_path / "image.nii.gz", tx.GetInverse()).squeeze()
    _assert_close_and_sensitive(ours, expected, wrong)


@pytest.mark.parametrize("reference", ["reference", "field grid"])
def test_chain_field_then_affine_equals_simpleitk(files, reference):
    """``-t Warp.nii.gz -t 0GenericAffine.mat``: p → warp → affine, SimpleITK's CompositeTransform([affine, warp])."""
    affine = _sitk_affine()
    sitk.WriteTransform(affine, str(files / "0GenericAffine.mat"))
    chain = ["-t", str(files / "Warp.nii.gz"), "-t", str(files / "0GenericAffine.mat")]
    ref_args = ["--reference", str(files / "reference.nii.gz")] if reference == "reference" else []
    ref_file = files / ("reference.nii.gz" if reference == "reference" else "field_grid.nii.gz")
    listed = sitk.CompositeTransform([affine, _field_tx(files / "Warp.nii.gz")])  # last added applies first
    swapped = sitk.CompositeTransform([_field_tx(files / "Warp.nii.gz"), affine])

    out = files / "chain.nii.gz"
    assert main(["apply", *chain, str(files / "image.nii.gz"), "-o", str(out), *ref_args]) == 0
    ours = nib.load(str(out))
    np.testing.assert_allclose(ours.affine, nib.load(str(ref_file)).affine, atol=1e-5)
    expected = _resample(files / "image.nii.gz", ref_file, listed)
    assert ours.shape == expected.shape and ours.get_data_dtype() == np.float32
    _assert_close_and_sensitive(ours.get_fdata(), expected, _resample(files / "image.nii.gz", ref_file, swapped))

    labels_out = files / "chain_labels.nii.gz"
    assert main(["apply", *chain, str(files / "labels.nii.gz"), "-o", str(labels_out), *ref_args,
                 "--interp", "nearest"]) == 0
    labels = nib.load(str(labels_out))
    assert labels.get_data_dtype() == np.int16
    data = np.asarray(labels.dataobj)
    expected = _resample(files / "labels.nii.gz", ref_file, listed, nearest=True)
    assert set(np.unique(data)) == set(np.unique(expected)) == {0, 7, 14, 21}
    assert (data != expected).mean() < 1e-4  # only rounding ties at exactly half a voxel may differ
    assert (_resample(files / "labels.nii.gz", ref_file, swapped, nearest=True) != expected).mean() > 0.05


def test_python_api_single_path_and_list(files):
    from transreg.registration.apply import apply_transform

    sitk.WriteTransform(_sitk_affine(), str(files / "a.txt"))
    single = apply_transform(files / "Warp.nii.gz", files / "image.nii.gz")
    listed = apply_transform([str(files / "Warp.nii.gz")], files / "image.nii.gz")
    np.testing.assert_array_equal(single.data, listed.data)
    affine = apply_transform(str(files / "a.txt"), files / "image.nii.gz", files / "reference.nii.gz")
    twice = apply_transform([files / "a.txt", (files / "a.txt", True)], files / "image.nii.gz", files / "reference.nii.gz")
    assert affine.data.shape == twice.data.shape == (50, 52, 30)
    with pytest.raises(ValueError, match="no transform"):
        apply_transform([], files / "image.nii.gz", files / "reference.nii.gz")
    # an affine then its inverse: the identity map, i.e. plain resampling onto the reference grid
    expected = _resample(files / "image.nii.gz", files / "reference.nii.gz", sitk.Transform(3, sitk.sitkIdentity))
    np.testing.assert_allclose(twice.data, expected, atol=1e-4 * np.ptp(expected))


def test_bad_transform_files_one_line_and_no_output(tmp_path, capsys, files):
    from scipy.io import savemat

    savemat(str(tmp_path / "other.mat"), {"foo": np.eye(3)}, format="4")
    sitk.WriteTransform(_linear_transforms()["affine 2-D"], str(tmp_path / "affine2d.mat"))
    sitk.WriteTransform(sitk.BSplineTransformInitializer(sitk.Image([8, 8, 8], sitk.sitkFloat32), [2, 2, 2]),
                        str(tmp_path / "bspline.txt"))
    (tmp_path / "garbage.mat").write_bytes(b"not a matlab file at all")
    sitk.WriteTransform(_sitk_affine(), str(tmp_path / "affine.mat"))
    image, out = str(files / "image.nii.gz"), tmp_path / "x.nii.gz"
    reference = ["--reference", str(files / "reference.nii.gz")]
    cases = {
        "not found": [str(tmp_path / "missing.mat"), image, *reference],
        "holds no ITK transform": [str(tmp_path / "other.mat"), image, *reference],
        "not a readable ITK .mat": [str(tmp_path / "garbage.mat"), image, *reference],
        "BSplineTransform": [str(tmp_path / "bspline.txt"), image, *reference],
        "the image is 3-D but the transform": ["-t", str(tmp_path / "affine2d.mat"), image, *reference],
        "--reference": ["-t", str(tmp_path / "affine.mat"), image],
        "cannot be inverted": ["-t", f"[{files / 'Warp.nii.gz'},1]", image],
        "mix 2-D and 3-D": ["-t", str(files / "Warp.nii.gz"), "-t", str(tmp_path / "affine2d.mat"), image],
        "not both": [str(files / "Warp.nii.gz"), image, "-t", str(tmp_path / "affine.mat")],
        "IMAGE is missing": [str(files / "Warp.nii.gz")],
    }
    for expected, args in cases.items():
        assert main(["apply", *args, "-o", str(out)]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert err.startswith("transreg apply: error:") and "\n" not in err and "Traceback" not in err, err
        assert expected in err, err
        assert not out.exists() and not list(tmp_path.glob(".*x.nii.gz"))
