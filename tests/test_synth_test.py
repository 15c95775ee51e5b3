"""evaluate/synth_test.py: the test-image synthesis no training draws from."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
import synth_test  # noqa: E402


def test_partial_volume_is_the_separable_quarter_half_quarter_filter():
    x = torch.rand(9, 10, 11)
    expected = x.numpy()
    for axis in range(3):
        expected = ndimage.correlate1d(expected, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
    assert np.allclose(synth_test.partial_volume(x).numpy(), expected, atol=1e-6)


def test_bias_field_is_smooth_and_bounded():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    field = synth_test.bias_field((30, 32, 28), affine, torch.Generator().manual_seed(0))
    log = field.log()
    assert float(log.abs().max()) <= np.log1p(synth_test.BIAS) + 1e-5
    assert float(log.abs().max()) > 0.5 * np.log1p(synth_test.BIAS)  # scaled to the bound
    assert float((log[1:] - log[:-1]).abs().max()) < 0.02  # smooth: small steps between voxels


def test_t2like_mirrors_the_brain_classes_and_keeps_the_background_dark():
    class Priors:
        class_of = {0: 0}
        num_classes = 3

        def draw_means(self, gen):
            return torch.tensor([0.03, 0.7, 0.2])

    t1 = synth_test.class_means(Priors(), "t1", torch.Generator())
    t2 = synth_test.class_means(Priors(), "t2like", torch.Generator())
    assert torch.allclose(t1, torch.tensor([0.03, 0.7, 0.2]))
    assert torch.allclose(t2, torch.tensor([0.02, 0.3, 0.8]))
