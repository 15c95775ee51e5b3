"""transreg.spatial against independent computations (scipy, analytic fields)."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from transreg.spatial import affine_to_flow, compose, integrate, jacobian_determinant, resize_flow, warp


def _smooth_field(shape, amplitude, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(ndim)])
    field *= amplitude / np.abs(field).max()
    return torch.from_numpy(field[None].astype(np.float32))


@pytest.mark.parametrize("shape", [(17, 23), (9, 12, 11)])
@pytest.mark.parametrize("padding,scipy_mode", [("zeros", "grid-constant"), ("border", "nearest")])
def test_warp_matches_scipy_map_coordinates(shape, padding, scipy_mode):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float64)
    flow = torch.from_numpy(rng.uniform(-3, 3, size=(1, len(shape), *shape)).astype(np.float32))
    ours = warp(torch.from_numpy(image[None, None]).float(), flow, padding=padding)[0, 0].double().numpy()
    coords = np.indices(shape).astype(np.float64) + flow[0].double().numpy()
    ref = ndimage.map_coordinates(image, coords, order=1, mode=scipy_mode, cval=0.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_warp_nearest_keeps_integer_labels():
    labels = torch.randint(0, 40, (1, 1, 10, 11, 12), dtype=torch.int64)
    flow = _smooth_field((10, 11, 12), 2.0, seed=1)
    out = warp(labels, flow, mode="nearest", padding="border")
    assert out.dtype == torch.int64
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    coords = np.indices((10, 11, 12)) + flow[0].numpy()
    ref = ndimage.map_coordinates(labels[0, 0].numpy(), coords, order=0, mode="nearest")
    # rounding of exact .5 positions may differ; nearly all voxels agree
    assert (out[0, 0].numpy() == ref).mean() > 0.99


def test_warp_with_zero_flow_is_identity_and_other_source_size():
    image = torch.rand(2, 3, 8, 9)
    assert torch.allclose(warp(image, torch.zeros(2, 2, 8, 9)), image, atol=1e-6)
    # a source of another size is sampled at the same voxel indices
    big = torch.rand(1, 1, 20, 20)
    out = warp(big, torch.full((1, 2, 5, 5), 3.0))
    assert torch.allclose(out, big[:, :, 3:8, 3:8], atol=1e-6)


def test_integrate_smooth_velocity_is_diffeomorphic_and_invertible():
    shape = (24, 24, 24)
    velocity = _smooth_field(shape, amplitude=6.0, seed=2, sigma=4.0)
    phi = integrate(velocity, steps=7, padding="border")
    phi_inv = integrate(-velocity, steps=7, padding="border")
    assert (jacobian_determinant(phi) > 0).all()
    roundtrip = compose(phi, phi_inv)  # warp by phi, then by phi^-1
    interior = (slice(None), slice(None), *(slice(4, -4),) * 3)
    assert roundtrip[interior].abs().max() < 0.1 * phi.abs().max()
    assert roundtrip[interior].abs().mean() < 0.01 * phi.abs().max()


def test_compose_equals_sequential_warps():
    shape = (20, 22)
    a = _smooth_field(shape, 2.0, seed=3)
    b = _smooth_field(shape, 2.0, seed=4)
    image = torch.from_numpy(ndimage.gaussian_filter(np.random.default_rng(5).random(shape), 2)[None, None]).float()
    once = warp(image, compose(a, b, padding="border"), padding="border")
    twice = warp(warp(image, a, padding="border"), b, padding="border")
    assert (once - twice)[..., 3:-3, 3:-3].abs().max() < 5e-3


def test_jacobian_of_affine_field_is_its_determinant():
    matrix = torch.tensor([[[1.1, 0.2, 0.0, 1.0], [0.0, 0.9, 0.1, -2.0], [0.05, 0.0, 1.2, 0.5]]])
    flow = affine_to_flow(matrix, (10, 11, 12))
    det = jacobian_determinant(flow)
    assert torch.allclose(det, torch.linalg.det(matrix[0, :, :3]).expand_as(det[0]), atol=1e-5)
    assert jacobian_determinant(torch.zeros(1, 2, 5, 6)).eq(1).all()


def test_resize_flow_rescales_vectors():
    flow = torch.ones(1, 3, 8, 8, 8) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1)
    up = resize_flow(flow, (16, 8, 24))
    assert up.shape == (1, 3, 16, 8, 24)
    assert torch.allclose(up[0, :, 0, 0, 0], torch.tensor([2.0, 2.0, 9.0]))
    kept = resize_flow(flow, (16, 16, 16), rescale=False)
    assert torch.allclose(kept, torch.ones_like(kept) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1))


@pytest.mark.parametrize("bad", [torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(3, 4)])
def test_bad_flow_shapes_raise_clear_error(bad):
    with pytest.raises(ValueError, match="flow must have shape"):
        warp(torch.zeros(1, 1, 4, 4, 4), bad)


def test_bfloat16_flow_is_sampled_at_float32_positions():
    """Under bf16 autocast the head's flow is bfloat16: positions beyond voxel 128 must
    not round to whole voxels (bf16 has 8 significant bits)."""
    shape = (300, 20)
    image = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))[None, None]
    flow = _smooth_field(shape, 2.5, seed=4).bfloat16()
    exact = flow.float()
    expected = ndimage.map_coordinates(image[0, 0].numpy().astype(np.float64),
                                       np.indices(shape) + exact[0].numpy(), order=1, mode="grid-constant")
    np.testing.assert_allclose(warp(image, flow)[0, 0].numpy(), expected, atol=1e-4)
    warped_bf16 = warp(image.bfloat16(), flow)
    assert warped_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(warped_bf16, warp(image, exact).bfloat16())
    velocity = flow * 0.5
    flow_bf16 = integrate(velocity)
    assert flow_bf16.dtype == torch.float32
    torch.testing.assert_close(flow_bf16, integrate(velocity.float()), rtol=0, atol=0)


def test_jacobian_determinant_equals_the_determinant_of_the_jacobian_matrix():
    for ndim in (2, 3):
        flow = torch.randn(2, ndim, *([9] * ndim))
        grads = torch.gradient(flow, dim=list(range(2, ndim + 2)))
        jac = torch.stack(grads, dim=1) + torch.eye(ndim).view(1, ndim, ndim, *([1] * ndim))
        expected = torch.linalg.det(jac.movedim(1, -1).movedim(1, -1))
        torch.testing.assert_close(jacobian_determinant(flow), expected, rtol=1e-4, atol=1e-4)


def test_voxel_grid_is_numpy_indices():
    import numpy as np

    from transreg.spatial import voxel_grid

    grid = voxel_grid((3, 4, 5), torch.float64)
    assert grid.dtype == torch.float64 and grid.shape == (3, 3, 4, 5)
    np.testing.assert_array_equal(grid.numpy(), np.indices((3, 4, 5)))
