"""NIfTI I/O, displacement export read back by SimpleITK, preprocessing geometry."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from transreg.registration.io import Image, ImageError, load_image, save_displacement_itk, save_displacement_voxel, save_image
from transreg.registration.preprocess import (Grid, Preprocessing, coordinates, lattice_map, normalize_intensity,
                                             resample_image, sample, sample_affine)
from transreg.registration.result import RegistrationResult
from transreg.registration.transform import Transform


def oblique_affine(rotvec, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def smooth_volume(shape, seed=0) -> np.ndarray:
    """Smooth texture inside an ellipsoid, zero background near the borders (like a scan)."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.random(shape), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = ndimage.gaussian_filter((sum(a**2 for a in axes) < 0.6).astype(float), 1.0)
    return (100 * mask * (0.3 + texture)).astype(np.float32)


def smooth_displacement(shape, amplitude=2.0) -> np.ndarray:
    axes = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
    return np.stack([amplitude * np.sin(axes[(i + 1) % 3]) * np.cos(axes[(i + 2) % 3]) for i in range(3)])


FIXED_AFFINE = oblique_affine([0.3, -0.2, 0.25], (0.8, 1.0, 1.5), (-12.0, 20.0, 5.0))
MOVING_AFFINES = {
    "same grid": FIXED_AFFINE,
    "other grid": oblique_affine([-0.1, 0.2, -0.15], (1.0, 0.9, 1.2), (-10.0, 18.0, 3.0)),
}


@pytest.mark.parametrize("moving_grid", sorted(MOVING_AFFINES))
def test_itk_displacement_applied_by_simpleitk_matches_warped(tmp_path, moving_grid):
    """transreg's displacement_itk.nii.gz, applied by SimpleITK, reproduces warped.nii.gz."""
    shape = (36, 32, 22)
    moving = smooth_volume(shape)
    fixed = smooth_volume(shape, seed=1)
    moving_affine = MOVING_AFFINES[moving_grid]
    save_image(tmp_path / "moving.nii.gz", moving, moving_affine)
    save_image(tmp_path / "fixed.nii.gz", fixed, FIXED_AFFINE)
    fixed_img, moving_img = load_image(tmp_path / "fixed.nii.gz"), load_image(tmp_path / "moving.nii.gz")
    # a smooth voxel displacement on the fixed grid plus the change of grid between the two images
    change = np.linalg.solve(moving_affine, FIXED_AFFINE)
    ident = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float64)
    coords = np.einsum("ij,j...->i...", change[:3, :3], ident) + change[:3, 3, None, None, None]
    transform = Transform.from_displacement(coords - ident + smooth_displacement(shape), fixed_img.affine,
                                            moving_img.affine)
    warped = transform.apply(moving_img.data)
    result = RegistrationResult(Image(warped, fixed_img.affine), None, transform,
                                {"runtime_s": {}, "model": None}, fixed_img, warped)
    result.save(tmp_path / "out")

    field = sitk.ReadImage(str(tmp_path / "out" / "displacement_itk.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetDimension() == 3
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    reference = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"))
    by_itk = sitk.Resample(sitk.ReadImage(str(tmp_path / "moving.nii.gz")), reference, tx, sitk.sitkLinear, 0.0)
    by_itk = np.transpose(sitk.GetArrayFromImage(by_itk), (2, 1, 0))  # sitk arrays are (z, y, x)
    ours = nib.load(str(tmp_path / "out" / "warped.nii.gz"))
    np.testing.assert_allclose(ours.affine, FIXED_AFFINE, atol=1e-5)
    diff = np.abs(by_itk - ours.get_fdata())
    assert diff.mean() < 0.01 * np.ptp(moving), diff.mean()
    # and the same for the interior (where boundary conventions cannot hide an error)
    source = coords + smooth_displacement(shape)
    inside = (source > 1).all(0) & (source < np.array(shape)[:, None, None, None] - 2).all(0)
    assert inside.mean() > 0.1  # the interior check below is not vacuous
    assert diff[inside].max() < 0.01 * np.ptp(moving)


def test_itk_file_format_and_lps_sign(tmp_path):
    """A +4 mm RAS x / -3 mm y / +2 mm z shift is stored as (-4, +3, +2) LPS, 5-D, intent 1007."""
    shape = (5, 6, 7)
    field = np.stack([np.full(shape, 4.0), np.full(shape, -3.0), np.full(shape, 2.0)])
    save_displacement_itk(tmp_path / "d.nii.gz", field, FIXED_AFFINE)
    img = nib.load(str(tmp_path / "d.nii.gz"))
    assert img.shape == (5, 6, 7, 1, 3)
    assert img.header["intent_code"] == 1007
    np.testing.assert_allclose(img.get_fdata()[2, 3, 4, 0], [-4.0, 3.0, 2.0])
    tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(tmp_path / "d.nii.gz")), sitk.sitkVectorFloat64))
    p = np.array(sitk.ReadImage(str(tmp_path / "d.nii.gz")).TransformIndexToPhysicalPoint((2, 3, 4)))
    ras = FIXED_AFFINE @ [2, 3, 4, 1]
    np.testing.assert_allclose(p, ras[:3] * [-1, -1, 1], atol=1e-4)  # ITK reads the same world point
    np.testing.assert_allclose(tx.TransformPoint(p.tolist()), p + [-4.0, 3.0, 2.0], atol=1e-4)


def test_2d_itk_displacement(tmp_path):
    affine = np.array([[0, -1.5, 0, 10], [0.8, 0, 0, -5], [0, 0, 1, 2], [0, 0, 0, 1.0]])
    field = np.stack([np.full((6, 7), 3.0), np.full((6, 7), -2.0)])
    save_displacement_itk(tmp_path / "d.nii.gz", field, affine)
    img = sitk.ReadImage(str(tmp_path / "d.nii.gz"))
    assert img.GetDimension() == 2 and img.GetNumberOfComponentsPerPixel() == 2
    tx = sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
    p = np.array(img.TransformIndexToPhysicalPoint((2, 3)))
    np.testing.assert_allclose(tx.TransformPoint(p.tolist()), p + [-3.0, 2.0], atol=1e-5)


def test_voxel_displacement_channels_last(tmp_path):
    field = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    save_displacement_voxel(tmp_path / "v.nii.gz", field, FIXED_AFFINE)
    img = nib.load(str(tmp_path / "v.nii.gz"))
    assert img.shape == (4, 5, 6, 3)
    np.testing.assert_allclose(img.get_fdata()[1, 2, 3], field[:, 1, 2, 3], atol=1e-6)
    save_displacement_voxel(tmp_path / "v.npz", field, FIXED_AFFINE)
    np.testing.assert_allclose(np.load(tmp_path / "v.npz")["disp"], np.moveaxis(field, 0, -1))


def test_load_keeps_affine_2d_and_labels(tmp_path):
    save_image(tmp_path / "a.nii.gz", np.ones((4, 5, 6), np.int16) * 3, FIXED_AFFINE)
    img = load_image(tmp_path / "a.nii.gz")
    assert img.data.dtype == np.float32 and img.shape == (4, 5, 6)
    np.testing.assert_allclose(img.affine, FIXED_AFFINE, atol=1e-6)
    np.testing.assert_allclose(img.spacing, (0.8, 1.0, 1.5), atol=1e-6)
    assert load_image(tmp_path / "a.nii.gz", labels=True).data.dtype == np.int16
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 1), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    assert load_image(tmp_path / "flat.nii").shape == (8, 9)
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 2.5, np.float32), np.eye(4)), str(tmp_path / "frac.nii.gz"))
    with pytest.raises(ImageError, match="non-integer"):
        load_image(tmp_path / "frac.nii.gz", labels=True)


def test_grid_reorient_resample_crop_keep_world_geometry():
    grid = Grid((30, 40, 20), FIXED_AFFINE.copy())
    centre = grid.affine @ np.r_[(np.array(grid.shape) - 1) / 2, 1]
    model = Preprocessing(spacing=2.0, orientation="RAS", size=(16, 24, 20)).grid(grid)
    np.testing.assert_allclose(model.spacing, 2.0)
    np.testing.assert_allclose(model.affine @ np.r_[(np.array(model.shape) - 1) / 2, 1], centre, atol=1.01)
    # axes point closest to R, A, S
    assert all(np.argmax(np.abs(model.affine[:3, i])) == i and model.affine[i, i] > 0 for i in range(3))


def test_resample_matches_a_linear_function():
    """Resampling an image of the linear function f(p) = a·p (world mm) gives a·p at the new points."""
    grid = Grid((30, 40, 20), FIXED_AFFINE.copy())
    a = np.array([0.5, -0.25, 1.0])
    ident = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")).reshape(3, -1)
    world = grid.affine[:3, :3] @ ident + grid.affine[:3, 3:]
    data = (a @ world).reshape(grid.shape).astype(np.float32)
    target = Preprocessing(spacing=1.0).grid(grid).cropped_or_padded((10, 12, 8))
    out = resample_image(data, grid, target)[0, 0].numpy()
    t_ident = np.stack(np.meshgrid(*[np.arange(n) for n in target.shape], indexing="ij")).reshape(3, -1)
    expected = (a @ (target.affine[:3, :3] @ t_ident + target.affine[:3, 3:])).reshape(target.shape)
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_intensity_normalisation():
    data = np.linspace(-1000, 1000, 2001, dtype=np.float32)
    out, rec = normalize_intensity(data, {"method": "ct", "level": 40, "width": 400})
    assert (rec["lo"], rec["hi"]) == (-160.0, 240.0)
    np.testing.assert_allclose(out[[0, 1040, 1240, 2000]], [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    out, rec = normalize_intensity(data, "percentile")
    np.testing.assert_allclose([rec["lo"], rec["hi"]], np.percentile(data, [0.5, 99.5]))
    assert out.min() == 0.0 and out.max() == 1.0
    assert Preprocessing.from_dict({"intensity": {"method": "minmax"}, "spacing": [1, 1, 2], "modality": "T1w"}) \
        == Preprocessing(spacing=(1, 1, 2), normalization={"method": "minmax"})
    assert Preprocessing.from_dict({"intensity": "min-max"}).normalization == {"method": "minmax"}
    with pytest.raises(ValueError, match="unknown intensity method 'zscore'"):
        normalize_intensity(data, "zscore")


def test_transform_world_displacement_is_physical():
    """displacement_world = A_m y − A_f x, checked on one voxel by hand."""
    u = torch.zeros(3, 4, 5, 6)
    u[:, 1, 2, 3] = torch.tensor([1.0, -2.0, 0.5])
    moving_affine = MOVING_AFFINES["other grid"]
    t = Transform.from_displacement(u, FIXED_AFFINE, moving_affine)
    y = np.array([1 + 1.0, 2 - 2.0, 3 + 0.5, 1])
    expected = (moving_affine @ y - FIXED_AFFINE @ np.array([1, 2, 3, 1]))[:3]
    np.testing.assert_allclose(t.displacement_world()[:, 1, 2, 3], expected, atol=1e-4)


def _lattice_matrix(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A random signed axis permutation with a whole-voxel shift (crop, pad, flip, swap)."""
    m = np.zeros((ndim + 1, ndim + 1))
    for i, j in enumerate(rng.permutation(ndim)):
        m[i, j] = rng.choice([-1.0, 1.0])
    m[:ndim, ndim] = rng.integers(-3, 12, ndim)
    m[ndim, ndim] = 1.0
    return m


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_lattice_resampling_is_the_interpolation_it_replaces(ndim, padding):
    """Crops, pads, flips and axis swaps take the index-lookup path of sample_affine; its
    values are grid_sample's (sample at the same coordinates), floats and label maps."""
    rng = np.random.default_rng(ndim)
    source = (9, 11, 8)[:ndim]
    image = torch.rand(2, 3, *source, dtype=torch.float32)
    labels = torch.from_numpy(rng.integers(0, 40, (1, 1, *source)).astype(np.int16))
    for _ in range(6):
        matrix, shape = _lattice_matrix(rng, ndim), tuple(int(n) for n in rng.integers(5, 14, ndim))
        assert lattice_map(matrix) is not None
        coords = coordinates(matrix, shape)
        assert torch.allclose(sample_affine(image, matrix, shape, padding=padding),
                              sample(image, coords, padding=padding), atol=1e-5)
        fast = sample_affine(labels, matrix, shape, mode="nearest", padding=padding)
        assert fast.dtype == torch.int16
        assert torch.equal(fast, sample(labels, coords, mode="nearest", padding=padding))


def test_only_whole_voxel_axis_maps_are_lattice_maps():
    eye = np.eye(4)
    assert lattice_map(eye) is not None
    for edit in [(0, 3, 0.5), (0, 0, 2.0), (0, 1, 1.0), (1, 1, 0.999)]:
        m = eye.copy()
        m[edit[0], edit[1]] = edit[2]
        assert lattice_map(m) is None, edit
    rotation = np.eye(4)
    rotation[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # 90° in-plane: a lattice map
    assert lattice_map(rotation) is not None
