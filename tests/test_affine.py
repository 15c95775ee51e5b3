"""The affine stage recovers known affine maps (3-D and 2-D); initialisation from moments."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from transreg.losses import mutual_information
from transreg.registration.affine import (
    _AffineParameters,
    _LevelLoss,
    _optimise_level,
    affine_align,
    center_of_mass,
    initial_transform,
)
from transreg.registration.preprocess import sample
from transreg.registration.preprocess import Grid


class Phantom:
    """A textured ellipsoid defined analytically in world mm (so any transformed copy is exact)."""

    def __init__(self, ndim: int, seed: int, radii=(28.0, 32.0, 24.0), blobs: int = 300):
        rng = np.random.default_rng(seed)
        self.radii = np.asarray(radii[:ndim])[:, None]
        self.centres = rng.uniform(-1, 1, (blobs, ndim)) * (self.radii[:, 0] - 2)
        self.sigmas = rng.uniform(2, 4, blobs)
        self.amps = rng.uniform(-0.5, 0.5, blobs)

    def __call__(self, points: np.ndarray) -> np.ndarray:  # (ndim, N) world mm -> (N,)
        texture = np.zeros(points.shape[1])
        for c, s, a in zip(self.centres, self.sigmas, self.amps):
            texture += a * np.exp(-((points - c[:, None]) ** 2).sum(0) / (2 * s * s))
        r = np.sqrt(((points / self.radii) ** 2).sum(0))
        return (0.6 + texture) / (1 + np.exp((r - 1) * 20))


def world_points(grid: Grid) -> np.ndarray:
    ident = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")).reshape(grid.ndim, -1)
    return grid.affine[:-1, :-1] @ ident + grid.affine[:-1, -1:]


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return matrix[:-1, :-1] @ points + matrix[:-1, -1:]


def random_affine(ndim: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation ≤ 15°, scale ±10 % per axis, translation ≤ 10 mm (fixed world → moving world)."""
    angle = np.deg2rad(rng.uniform(8, 15))
    if ndim == 3:
        axis = rng.normal(size=3)
        rotation = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    else:
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    direction = rng.normal(size=ndim)
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = rotation @ np.diag(rng.uniform(0.9, 1.1, ndim))
    matrix[:ndim, ndim] = direction / np.linalg.norm(direction) * rng.uniform(5, 10)
    return matrix


def make_pair(ndim: int, seed: int, size: int, truth: np.ndarray):
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] *= 2.0
    affine[:ndim, ndim] = -(size - 1)  # centred, 2 mm voxels
    grid = Grid((size,) * ndim, affine)
    phantom = Phantom(ndim, seed)
    points = world_points(grid)
    fixed = phantom(points).reshape(grid.shape)
    moving = phantom(apply(np.linalg.inv(truth), points)).reshape(grid.shape)
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)[None, None]  # noqa: E731
    return grid, as_tensor(fixed), as_tensor(moving), points, fixed.ravel() > 0.1


@pytest.mark.parametrize("seed,similarity", [(0, "ncc"), (1, "ncc"), (2, "mi")])
def test_recovers_random_3d_affine_within_1mm(seed, similarity):
    truth = random_affine(3, np.random.default_rng(seed))
    grid, fixed, moving, points, inside = make_pair(3, seed, 48, truth)
    before = np.linalg.norm(points - apply(truth, points), axis=0)[inside].mean()
    result = affine_align(moving, grid, fixed, grid, similarity=similarity)
    error = np.linalg.norm(apply(result.matrix, points) - apply(truth, points), axis=0)[inside]
    assert before > 4.0  # the problem is not trivial
    assert error.mean() < 1.0, (before, error.mean())


def test_recovers_2d_affine_with_mutual_information():
    truth = random_affine(2, np.random.default_rng(5))
    grid, fixed, moving, points, inside = make_pair(2, 5, 64, truth)
    result = affine_align(moving * 3.0 + 0.2, grid, fixed, grid, similarity="mi")  # other intensity scale
    error = np.linalg.norm(apply(result.matrix, points) - apply(truth, points), axis=0)[inside]
    assert error.mean() < 1.0, error.mean()


def test_center_of_mass_matches_scipy_and_com_init_translates():
    rng = np.random.default_rng(0)
    data = ndimage.gaussian_filter(rng.random((20, 24, 16)), 2) * (rng.random((20, 24, 16)) > 0.3)
    affine = np.diag([1.5, 0.8, 2.0, 1.0])
    affine[:3, 3] = [4.0, -3.0, 7.0]
    grid = Grid(data.shape, affine)
    expected = apply(affine, np.array(ndimage.center_of_mass(data))[:, None])[:, 0]
    image = torch.tensor(data)[None, None]
    np.testing.assert_allclose(center_of_mass(image, grid), expected, atol=1e-6)
    shifted = Grid(data.shape, affine @ np.array([[1, 0, 0, 3], [0, 1, 0, -2], [0, 0, 1, 1], [0, 0, 0, 1.0]]))
    init = initial_transform(image, shifted, image, grid, "com")
    np.testing.assert_allclose(init[:3, 3], affine[:3, :3] @ [3, -2, 1], atol=1e-6)


def test_moments_init_finds_a_large_rotation():
    """A 60° rotation (beyond what the optimiser would find from a plain centre-of-mass start)."""
    angle = np.deg2rad(60)
    truth = np.array([[np.cos(angle), -np.sin(angle), 4.0], [np.sin(angle), np.cos(angle), -3.0], [0, 0, 1]])
    size = 64
    affine = np.diag([2.0, 2.0, 1.0])
    affine[:2, 2] = -(size - 1)
    grid = Grid((size, size), affine)
    phantom = Phantom(2, 3, radii=(36.0, 18.0))
    points = world_points(grid)
    fixed = torch.tensor(phantom(points).reshape(grid.shape), dtype=torch.float32)[None, None]
    moving = torch.tensor(phantom(apply(np.linalg.inv(truth), points)).reshape(grid.shape), dtype=torch.float32)[None, None]
    inside = fixed.numpy().ravel() > 0.1
    result = affine_align(moving, grid, fixed, grid, init="moments")
    error = np.linalg.norm(apply(result.matrix, points) - apply(truth, points), axis=0)[inside]
    assert error.mean() < 1.0, error.mean()


def test_mutual_information_on_a_point_subset_recovers_a_3d_affine():
    """Mutual information on 2000 of the 13 824 voxels of the finer level (and all 1728 of
    the coarser) still recovers the map; the subset is seeded, so two runs agree exactly."""
    truth = random_affine(3, np.random.default_rng(2))
    grid, fixed, moving, points, inside = make_pair(3, 2, 48, truth)
    result = affine_align(moving, grid, fixed, grid, similarity="mi", max_points=2000)
    error = np.linalg.norm(apply(result.matrix, points) - apply(truth, points), axis=0)[inside]
    assert error.mean() < 1.0, error.mean()
    again = affine_align(moving, grid, fixed, grid, similarity="mi", max_points=2000)
    np.testing.assert_array_equal(result.matrix, again.matrix)


def test_level_loss_uses_every_voxel_below_the_limit_and_a_subset_above():
    truth = random_affine(3, np.random.default_rng(4))
    grid, fixed, moving, points, inside = make_pair(3, 4, 24, truth)
    matrix = torch.as_tensor(truth)
    to_moving = np.linalg.inv(grid.affine) @ truth @ grid.affine  # fixed voxel -> moving voxel
    voxels = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij")).reshape(3, -1)
    coords = torch.as_tensor((to_moving[:3, :3] @ voxels + to_moving[:3, 3:]).reshape(3, 24, 24, 24))
    expected = mutual_information(sample(moving, coords), fixed)  # the whole image, computed directly
    every = _LevelLoss(fixed, grid, moving, grid, "mi", max_points=24 ** 3)(matrix)
    assert abs(float(every) - float(expected)) < 1e-5
    subset = _LevelLoss(fixed, grid, moving, grid, "mi", max_points=3000)(matrix)
    assert 1e-5 < abs(float(subset) - float(expected)) < 0.1  # another estimate of the same quantity


def test_several_starts_keep_the_one_that_fits_best():
    """A wrong start (the true map turned by a further 90°) traps the optimiser on its own;
    given with the centre-of-mass start, the better-fitting one is kept and the map found."""
    truth = random_affine(3, np.random.default_rng(0))
    grid, fixed, moving, points, inside = make_pair(3, 0, 48, truth)
    wrong = truth.copy()
    wrong[:3, :3] = truth[:3, :3] @ Rotation.from_euler("z", 90, degrees=True).as_matrix()

    def error(matrix):
        return np.linalg.norm(apply(matrix, points) - apply(truth, points), axis=0)[inside].mean()

    assert error(affine_align(moving, grid, fixed, grid, similarity="mi", init=wrong).matrix) > 5.0
    assert error(affine_align(moving, grid, fixed, grid, similarity="mi", init=[wrong, "com"]).matrix) < 1.0
    with pytest.raises(ValueError, match="at least one"):
        affine_align(moving, grid, fixed, grid, init=[])


def test_a_level_stops_once_its_loss_settles():
    """With a tolerance, the optimiser stops after ``patience`` steps without that much
    improvement; without one it runs every step (counted on a quadratic loss)."""
    target = torch.eye(4, dtype=torch.float64)
    target[:3, 3] = torch.tensor([3.0, -2.0, 1.0])
    calls = []

    def loss_of(matrix):
        calls.append(1)
        return ((matrix - target) ** 2).sum()

    def run(tolerance):
        calls.clear()
        params = _AffineParameters(3, np.eye(4), np.zeros(3), torch.device("cpu"))
        final = _optimise_level(params, loss_of, 200, 0.01, tolerance=tolerance, patience=10)
        return len(calls) - 1, final  # the last call measures the end

    steps_all, loss_all = run(0.0)
    steps_settled, loss_settled = run(1e-3)
    assert steps_all == 200 and loss_all < 1e-3
    assert 10 < steps_settled < 200 and loss_settled < 0.05  # stopped where the loss had settled
    steps_never_improving, _ = run(1e9)
    assert steps_never_improving == 11  # the first check: patience steps + 1
