"""The shipped affine checkpoint (affine_micro.synth_brain) on the shipped sample pair
(SynthSeg test subjects 10 → 11, 2 mm, skull-stripped, synthetic T1): it recovers a known
affine and never makes a rotated pair worse than it was unregistered."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import transreg
from transreg.registration.defaults import sample_pair
from transreg.registration.io import Image, load_image
from transreg.zoo.index import DEFAULT_AFFINE_CHECKPOINT


def _moved(image: Image, world: np.ndarray) -> Image:
    """The same voxels with the header moved by the world map ``world`` (the head moves)."""
    return Image(image.data, world @ image.affine, image.name)


def _known_affine(degrees: float, axis, scale: float, shift) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis) / np.linalg.norm(axis)).as_matrix() * scale
    out[:3, 3] = shift
    return out


def test_the_zoo_names_a_shipped_affine_checkpoint() -> None:
    model = transreg.create_model(DEFAULT_AFFINE_CHECKPOINT, pretrained=True)
    assert model.architecture == "affine_micro"
    assert model.preprocessing["spacing"] == [6.0, 6.0, 6.0] and model.preprocessing["orientation"] == "RAS"


@pytest.mark.parametrize("degrees, axis, scale, shift", [(20.0, (1, 0.3, 0), 1.08, (12.0, -15.0, 6.0)),
                                                        (-25.0, (0.2, 0.4, 1), 0.93, (-20.0, 8.0, 25.0))])
def test_learned_stage_recovers_a_known_affine(degrees, axis, scale, shift) -> None:
    """Moving = the fixed image moved by a known world affine T: the stage's world map
    fixed → moving must be T (mean error over the brain's voxels, mm)."""
    fixed = load_image(sample_pair()["fixed"])
    truth = _known_affine(degrees, axis, scale, shift)
    centre = fixed.affine[:3, :3] @ ((np.asarray(fixed.shape) - 1) / 2) + fixed.affine[:3, 3]
    truth[:3, 3] += centre - truth[:3, :3] @ centre  # about the image centre, then the shift
    result = transreg.register(_moved(fixed, truth), fixed, affine="learned", affine_only=True, device="cpu")
    world = np.asarray(result.report["affine"]["world_matrix_fixed_to_moving_ras_mm"])
    voxels = np.argwhere(fixed.data > np.percentile(fixed.data, 60)).T
    points = fixed.affine[:3, :3] @ voxels + fixed.affine[:3, 3:]
    error = np.linalg.norm(world[:3, :3] @ points + world[:3, 3:] - (truth[:3, :3] @ points + truth[:3, 3:]), axis=0)
    start = np.linalg.norm(points - (truth[:3, :3] @ points + truth[:3, 3:]), axis=0)
    assert start.mean() > 15.0  # the known affine moves the brain a lot
    assert error.mean() < 1.0, (error.mean(), start.mean())  # measured 0.14 and 0.16 mm


def test_rotated_pair_is_never_made_worse() -> None:
    """The sample pair with its moving image rotated by 30°: Dice after each learned mode
    (all labels) beats the unregistered, unrotated pair's by far (measured: 0.034 before,
    0.473 learned, 0.459 learned+classic)."""
    paths = sample_pair()
    moving, labels = load_image(paths["moving"]), load_image(paths["moving_labels"], labels=True)
    centre = moving.affine[:3, :3] @ ((np.asarray(moving.shape) - 1) / 2) + moving.affine[:3, 3]
    turn = _known_affine(30.0, (0.3, -1.0, 0.5), 1.0, (0.0, 0.0, 0.0))
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    reports = {mode: transreg.register(_moved(moving, turn), paths["fixed"], affine=mode, affine_only=True,
                                       moving_labels=_moved(labels, turn), fixed_labels=paths["fixed_labels"],
                                       device="cpu").report for mode in ("learned", "learned+classic")}
    unregistered = transreg.register(paths["moving"], paths["fixed"], affine="learned", affine_only=True,
                                     moving_labels=paths["moving_labels"], fixed_labels=paths["fixed_labels"],
                                     device="cpu").report["dice_before"]
    for mode, report in reports.items():
        assert report["affine"]["mode"] == mode
        assert report["dice_affine"] > unregistered + 0.3, (mode, report["dice_affine"], unregistered)
