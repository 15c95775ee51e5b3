"""The learned affine stage: parametrisation, network, training pairs, world composition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from transreg.data.affine_pairs import AffineLabelPairs, centred_grid, random_world_affine
from transreg.models.affine import AffineNet, affine_from_parameters, fit_affine
from transreg.registration.learned_affine import input_space, learned_affine
from transreg.registration.preprocess import Grid
from transreg.zoo.factory import build_architecture


def test_zero_parameters_give_the_identity() -> None:
    matrix = affine_from_parameters(torch.zeros(2, 12), (7, 9, 11))
    expected = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1).expand(2, 3, 4)
    assert torch.allclose(matrix, expected, atol=1e-7)


def test_rotation_scale_and_translation_about_the_grid_centre() -> None:
    theta, log_s, shift = 0.3, math.log(1.2), 1.5
    params = torch.zeros(1, 12, dtype=torch.float64)
    params[0, 0] = theta  # rotation in the (0, 1) plane
    params[0, 3] = log_s  # scale of axis 0
    params[0, 9] = shift  # translation along axis 0 (x translation_scale)
    shape = (9, 9, 9)
    matrix = affine_from_parameters(params, shape, translation_scale=2.0)[0].numpy()
    rot = Rotation.from_rotvec([0.0, 0.0, -theta]).as_matrix()  # exp of [[0, θ], [-θ, 0]] in the (0, 1) plane
    linear = rot @ np.diag([1.2, 1.0, 1.0])
    centre = (np.asarray(shape) - 1) / 2
    np.testing.assert_allclose(matrix[:, :3], linear, atol=1e-10)
    np.testing.assert_allclose(matrix[:, 3], centre - linear @ centre + [3.0, 0.0, 0.0], atol=1e-10)


@pytest.mark.parametrize("shape", [(32, 40, 36), (33, 29, 31), (40, 24)])
def test_untrained_network_predicts_the_identity_for_any_size(shape: tuple[int, ...]) -> None:
    net = build_architecture("affine_regression_micro", ndim=len(shape)).eval()
    moving, fixed = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    with torch.no_grad():
        out = net(moving, fixed)
    assert out.flow.shape == (1, len(shape), *shape)
    assert out.matrix.shape == (1, len(shape), len(shape) + 1)
    assert float(out.flow.abs().max()) == 0.0
    assert torch.allclose(out.warped, moving, atol=1e-5)


def test_flow_is_the_dense_displacement_of_the_matrix() -> None:
    net = AffineNet(ndim=3)
    torch.nn.init.normal_(net.head[-1].weight, std=0.05)
    out = net(torch.rand(1, 1, 16, 20, 18), torch.rand(1, 1, 16, 20, 18))
    a, t = out.matrix[0, :, :3].detach().numpy(), out.matrix[0, :, 3].detach().numpy()
    for point in [(0, 0, 0), (15, 19, 17), (3, 11, 5)]:
        expected = a @ np.asarray(point) + t - np.asarray(point)
        np.testing.assert_allclose(out.flow[0][(slice(None), *point)].detach().numpy(), expected, atol=1e-4)


def test_random_world_affine_respects_its_ranges() -> None:
    gen = torch.Generator().manual_seed(0)
    centre = np.array([10.0, -20.0, 30.0])
    for _ in range(50):
        m = random_world_affine(centre, gen, degrees=30.0, scale=0.15, shift=30.0)
        moved = m[:3, :3] @ centre + m[:3, 3]
        assert np.all(np.abs(moved - centre) <= 30.0 + 1e-9)  # translation only moves the centre
        singular = np.linalg.svd(m[:3, :3], compute_uv=False)
        assert singular.max() <= 1.15 * (1 + 1e-9) and singular.min() >= 0.85 * (1 - 1e-9)
        rotation = m[:3, :3] @ np.linalg.inv(np.diag(np.linalg.norm(m[:3, :3], axis=0)))
        angle = np.degrees(Rotation.from_matrix(rotation).magnitude())
        assert angle <= 3 * 30.0  # three Euler angles of at most 30° each
    assert np.allclose(random_world_affine(centre, gen, 0.0, 0.0, 0.0), np.eye(4))


def test_centred_grid_is_centred_on_the_point() -> None:
    grid = centred_grid(np.array([1.0, 2.0, 3.0]), 5.0, (48, 40, 32))
    centre = grid.affine[:3, :3] @ ((np.asarray(grid.shape) - 1) / 2) + grid.affine[:3, 3]
    np.testing.assert_allclose(centre, [1.0, 2.0, 3.0])
    assert np.allclose(grid.spacing, 5.0)


@pytest.fixture()
def label_maps(tmp_path):
    """Three 1-mm LIA label maps of a head: a skin shell (label 258) around a brain (labels 2, 3, 41)."""
    import nibabel as nib

    affine = np.array([[-1.0, 0, 0, 40], [0, 0, 1, -40], [0, -1, 0, 40], [0, 0, 0, 1]])
    x, y, z = np.meshgrid(*[np.arange(80)] * 3, indexing="ij")
    for i, radius in enumerate((30, 28, 32)):
        r = np.sqrt((x - 40) ** 2 + ((y - 40) * 1.2) ** 2 + (z - 38) ** 2)
        labels = np.where(r < radius, 258, 0)
        labels[r < radius - 6] = 3
        labels[(r < radius - 12) & (x < 40)] = 2
        labels[(r < radius - 12) & (x >= 40)] = 41
        nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(tmp_path / f"seg_{i}.nii.gz"))
    return str(tmp_path / "seg_*.nii.gz")


def test_affine_pairs_are_reproducible_and_strip_skulls(label_maps: str) -> None:
    data = AffineLabelPairs(label_maps, (24, 24, 24), 4.0, seed=3)
    again = AffineLabelPairs(label_maps, (24, 24, 24), 4.0, seed=3)
    assert list(data.label_values) == list(range(13))  # background + 12 groups
    stripped = whole = 0
    for k in range(8):
        item, twin = data[k], again[k]
        for key, value in item.items():
            assert value.shape == (1, 24, 24, 24)
            assert torch.equal(value, twin[key])
        assert 0.0 <= float(item["moving"].min()) and float(item["moving"].max()) <= 1.0
        skin = 12  # the extra-cerebral group
        has_skin = [bool((item[k] == skin).any()) for k in ("moving_labels", "fixed_labels")]
        assert has_skin[0] == has_skin[1]  # both images of a pair are heads, or both brains
        stripped += not has_skin[0]
        whole += has_skin[0]
    assert stripped and whole


def test_affine_pairs_move_the_head_by_up_to_the_ranges(label_maps: str) -> None:
    """The moving head's centre of mass stays near its grid's centre (grids follow the head)."""
    data = AffineLabelPairs(label_maps, (24, 24, 24), 4.0, jitter=0.0)
    for k in range(4):
        mask = (data[k]["moving_labels"][0] > 0).numpy()
        com = np.asarray(ndimage.center_of_mass(mask))
        assert np.all(np.abs(com - 11.5) < 2.0)  # voxels of 4 mm


def test_field_of_view_boxes_keep_the_brain_and_centre_the_intensity(tmp_path) -> None:
    """With ``field_of_view=1`` every image is zero outside one axis-aligned box that holds
    every brain voxel, and without jitter the image's centre of mass (scipy) lies at its
    grid's centre, as the learned stage centres its inputs. Heads with 20 mm of scalp leave
    the box room to cut tissue."""
    import nibabel as nib

    x, y, z = np.meshgrid(*[np.arange(80)] * 3, indexing="ij")
    for i, radius in enumerate((14, 13, 15)):
        r = np.sqrt((x - 40) ** 2 + ((y - 40) * 1.2) ** 2 + (z - 38) ** 2)
        labels = np.where(r < radius + 20, 258, 0)
        labels[r < radius] = 3
        labels[(r < radius - 5) & (x < 40)] = 2
        labels[(r < radius - 5) & (x >= 40)] = 41
        nib.save(nib.Nifti1Image(labels.astype(np.int16), np.eye(4)), str(tmp_path / f"seg_{i}.nii.gz"))
    data = AffineLabelPairs(str(tmp_path / "seg_*.nii.gz"), (24, 24, 24), 4.0, jitter=0.0, field_of_view=1.0)
    cut_sides = 0
    for k in range(6):
        for role in ("moving", "fixed"):
            image, labels = data[k][role][0].numpy(), data[k][f"{role}_labels"][0].numpy()
            lit = np.argwhere(image > 0)
            low, high = lit.min(0), lit.max(0) + 1
            box = np.zeros(image.shape, dtype=bool)
            box[tuple(slice(a, b) for a, b in zip(low, high))] = True
            assert not image[~box].any()
            assert (image[box] > 0).mean() > 0.99  # the box is lit throughout (one voxel may be the minimum)
            brain = (labels > 0) & (labels < 12)
            assert brain.any() and box[brain].all()
            cut_sides += int(((labels > 0) & ~box).any())
            centre = np.asarray(ndimage.center_of_mass(image))
            assert np.all(np.abs(centre - 11.5) < 1.5), centre
    assert cut_sides  # some heads lose tissue outside the brain to their box


def test_field_of_view_option_reaches_the_pairs_and_is_checked(label_maps: str) -> None:
    from transreg.data import build_source
    from transreg.data.synthetic import DataError
    from transreg.training.config import DataConfig

    cfg = DataConfig(size=[24, 24, 24], spacing=[4.0, 4.0, 4.0])
    data, _ = build_source(f"synthetic:affine:{label_maps}?field_of_view=0.25&jitter=2", cfg, seed=0, augment=False)
    assert (data.field_of_view, data.jitter) == (0.25, 2.0)
    with pytest.raises(DataError, match="unknown option 'fov'"):
        build_source(f"synthetic:affine:{label_maps}?fov=1", cfg, seed=0, augment=False)
    with pytest.raises(DataError, match="field_of_view is a probability"):
        build_source(f"synthetic:affine:{label_maps}?field_of_view=2", cfg, seed=0, augment=False)


class _FixedVoxelMap(torch.nn.Module):
    """A stand-in affine network that always predicts the same voxel matrix."""

    def __init__(self, matrix: np.ndarray, spacing: float, size: int):
        super().__init__()
        self.matrix = torch.as_tensor(matrix[:3], dtype=torch.float32)
        self.preprocessing = {"spacing": [spacing] * 3, "size": [size] * 3}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor):
        return type("Out", (), {"matrix": self.matrix[None]})()


def _blob_image(shape=(40, 44, 36)) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.exp(-((x - 18) ** 2 / 60 + (y - 24) ** 2 / 90 + (z - 16) ** 2 / 40)).astype(np.float32)


def test_learned_stage_starts_from_the_centres_of_mass() -> None:
    """With a network that predicts the identity the stage is the translation between the
    two images' centres of mass (scipy's centre of mass, independent of transreg)."""
    data = _blob_image()
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    moving_affine = fixed_affine.copy()
    moving_affine[:3, 3] = [7.0, -11.0, 4.5]
    identity = np.eye(4)
    net = _FixedVoxelMap(identity, 5.0, 24)
    image = torch.as_tensor(data)[None, None]
    result = learned_affine(net, image, Grid(data.shape, moving_affine), image, Grid(data.shape, fixed_affine))
    com = np.asarray(ndimage.center_of_mass(data))
    expected = (moving_affine[:3, :3] @ com + moving_affine[:3, 3]) - (fixed_affine[:3, :3] @ com + fixed_affine[:3, 3])
    np.testing.assert_allclose(result.matrix[:3, :3], np.eye(3), atol=1e-9)
    np.testing.assert_allclose(result.matrix[:3, 3], expected, atol=1e-3)


def test_learned_stage_composes_each_pass_on_the_fixed_grid() -> None:
    data = _blob_image()
    grid = Grid(data.shape, np.diag([2.0, 2.0, 2.0, 1.0]))
    voxel = np.eye(4)
    voxel[:3, :3] = Rotation.from_rotvec([0.0, 0.0, 0.2]).as_matrix()
    voxel[:3, 3] = [1.0, -2.0, 0.5]
    net = _FixedVoxelMap(voxel, 5.0, 24)
    image = torch.as_tensor(data)[None, None]
    one = learned_affine(net, image, grid, image, grid, passes=1).matrix
    two = learned_affine(net, image, grid, image, grid, passes=2).matrix
    com = grid.affine[:3, :3] @ np.asarray(ndimage.center_of_mass(data)) + grid.affine[:3, 3]
    g_f = centred_grid(com, 5.0, (24, 24, 24)).affine
    step = g_f @ voxel @ np.linalg.inv(g_f)  # same image: the centres of mass coincide
    np.testing.assert_allclose(one, step, atol=1e-3)
    np.testing.assert_allclose(two, step @ step, atol=1e-3)


def test_an_affine_model_needs_its_input_space() -> None:
    with pytest.raises(ValueError, match="records no preprocessing spacing and size"):
        input_space(build_architecture("affine_regression_micro"))


def test_least_squares_fit_recovers_a_known_affine() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 40, size=(2, 30, 3))
    truth = np.concatenate([Rotation.random(2, random_state=2).as_matrix() * 1.1, rng.normal(size=(2, 3, 1)) * 5], 2)
    moved = np.einsum("bij,bkj->bki", truth[:, :, :3], points) + truth[:, None, :, 3]
    fitted = fit_affine(torch.as_tensor(points), torch.as_tensor(moved), ridge=0.0).numpy()
    np.testing.assert_allclose(fitted, truth, atol=1e-8)
    # noisy points: the same answer as numpy's least squares
    noisy = moved + rng.normal(scale=0.5, size=moved.shape)
    design = np.concatenate([points[0], np.ones((30, 1))], 1)
    expected = np.linalg.lstsq(design, noisy[0], rcond=None)[0].T
    np.testing.assert_allclose(fit_affine(torch.as_tensor(points), torch.as_tensor(noisy), ridge=0.0)[0].numpy(),
                               expected, atol=1e-8)


@pytest.mark.parametrize("shape", [(40, 40, 40), (33, 29, 31), (48, 40)])
def test_keypoint_network_maps_an_image_onto_itself_by_the_identity(shape: tuple[int, ...]) -> None:
    """Any weights: the same image gives the same keypoints, whose fit is the identity."""
    torch.manual_seed(0)
    net = build_architecture("affine_micro", ndim=len(shape)).eval()
    image = torch.rand(1, 1, *shape)
    with torch.no_grad():
        out = net(image, image)
    eye = torch.cat([torch.eye(len(shape)), torch.zeros(len(shape), 1)], 1)
    assert torch.allclose(out.matrix[0], eye, atol=1e-3)
    assert out.flow.shape == (1, len(shape), *shape) and float(out.flow.abs().max()) < 0.05


def test_keypoints_are_in_input_voxels() -> None:
    """A detector whose heatmaps peak at one voxel puts the keypoint at that voxel's centre."""
    net = build_architecture("affine_micro", keypoints=2).eval()
    image = torch.zeros(1, 1, 40, 40, 40)
    with torch.no_grad():
        last = net.heads[-1]
        last.weight.zero_()
        last.bias.zero_()
        heat = torch.full((1, 2, 10, 10, 10), -1e4)  # heatmaps at input / 4
        heat[0, 0, 2, 3, 4] = 0.0
        heat[0, 1, 9, 0, 5] = 0.0
        last.register_forward_hook(lambda module, args, out: out + heat)
        points = net.detect(image)[0].numpy()
    np.testing.assert_allclose(points, [[9.5, 13.5, 17.5], [37.5, 1.5, 21.5]], atol=1e-4)  # (i + 0.5) * 4 - 0.5
