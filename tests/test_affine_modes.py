"""`transreg register --affine MODE`, the affine model a deformable checkpoint names, and
the checkpoint plumbing they need."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import transreg
from transreg.cli import main
from transreg.registration.affine_stage import AFFINE_MODES, DEFAULT_AFFINE_MODE, affine_mode
from transreg.registration.defaults import sample_pair
from transreg.zoo.checkpoint import CheckpointError, _sniff_pickle, read_config, save_pretrained
from transreg.zoo.factory import build_architecture, create_model, load_checkpoint

AFFINE_PREPROCESSING = {"spacing": [6.0, 6.0, 6.0], "size": [24, 24, 24], "orientation": "RAS",
                        "intensity": {"method": "minmax"}}


def test_mode_names_and_aliases() -> None:
    assert AFFINE_MODES == ("learned", "classic", "learned+classic", "none")
    assert affine_mode(True) == affine_mode(None) == DEFAULT_AFFINE_MODE
    assert affine_mode(False) == "none"
    assert affine_mode(True, ndim=2) == "classic"  # the zoo's affine network is 3-D
    with pytest.raises(ValueError, match="unknown affine mode 'rigid'; use one of learned, classic"):
        affine_mode("rigid")


def test_contradicting_flags_give_one_error_line(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["register", "--sample", "-o", str(out), "--no-affine", "--affine", "learned"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-affine and --affine learned" in err
    assert main(["register", "--sample", "-o", str(out), "--affine-only", "--affine", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "leaves nothing to do" in err
    assert not out.exists() or not any(out.iterdir())


def test_no_affine_is_the_none_mode(tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["register", "--sample", "-o", str(out), "--no-affine", "--model", "transmorph_tiny",
                 "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["affine"]["mode"] == "none" and not report["affine"]["enabled"]
    assert report["dice_affine"] == report["dice_before"]


@pytest.fixture()
def affine_checkpoint(tmp_path):
    """An (untrained) affine network saved with the input space the learned stage needs."""
    return save_pretrained(build_architecture("affine_regression_micro"), tmp_path / "affine", preprocessing=AFFINE_PREPROCESSING)


def test_deformable_checkpoint_names_its_affine_model(tmp_path, affine_checkpoint) -> None:
    deformable = build_architecture("transmorph_tiny")
    deformable.affine_model = f"local-dir:{affine_checkpoint}"
    folder = save_pretrained(deformable, tmp_path / "deformable")
    assert read_config(folder)["affine_model"] == f"local-dir:{affine_checkpoint}"
    assert load_checkpoint(folder).affine_model == f"local-dir:{affine_checkpoint}"
    paths = sample_pair()
    result = transreg.register(paths["moving"], paths["fixed"], model=str(folder), affine="learned",
                               moving_labels=paths["moving_labels"], fixed_labels=paths["fixed_labels"],
                               device="cpu")
    assert result.report["affine"]["mode"] == "learned"
    assert result.report["affine"]["model"]["name"] == f"local-dir:{affine_checkpoint}"
    # an untrained network predicts the identity: the stage is the centre-of-mass translation
    matrix = np.asarray(result.report["affine"]["world_matrix_fixed_to_moving_ras_mm"])
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=1e-4)
    assert np.linalg.norm(matrix[:3, 3]) > 1.0


def test_checkpoints_without_an_affine_model_still_load(tmp_path) -> None:
    folder = save_pretrained(build_architecture("voxelmorph1"), tmp_path / "plain")
    assert "affine_model" not in json.loads((folder / "config.json").read_text())
    assert load_checkpoint(folder).affine_model is None
    assert create_model("voxelmorph2.synth_brain", pretrained=True).affine_model is None  # format 1 (zoo v1)


def test_an_affine_model_that_is_not_a_name_is_one_error(tmp_path) -> None:
    folder = save_pretrained(build_architecture("voxelmorph1"), tmp_path / "plain")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "affine_model": 3}))
    with pytest.raises(CheckpointError, match="affine_model must be a model name"):
        read_config(folder)


def test_safetensors_whose_header_length_looks_like_a_pickle_mark(tmp_path) -> None:
    """A 1152-byte safetensors header starts ``80 04``, as a protocol-4 pickle does."""
    fake = tmp_path / "model.safetensors"
    fake.write_bytes((1152).to_bytes(8, "little") + b"{" + b" " * 1151)
    assert _sniff_pickle(fake) is None
    real = tmp_path / "pickled.safetensors"
    real.write_bytes(pickle.dumps({"weights": [1.0] * 10}, protocol=4))
    assert _sniff_pickle(real) == "pickle"
