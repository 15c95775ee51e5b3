"""Checkpoint format 2 (every constructor argument, typed preprocessing, weights sha256)
and format 1 (the shipped zoo v1) loading exactly as transreg 0.1 built it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import transreg
from transreg.models import transmorph as transmorph_module
from transreg.zoo import registry
from transreg.zoo.checkpoint import CheckpointError, read_config
from transreg.zoo.factory import load_checkpoint
from transreg.zoo.index import PRETRAINED

FIXTURE = Path(__file__).parent / "fixtures" / "zoo_v1_flows.npz"
#: the zoo v1 checkpoints (format 1) whose flows transreg 0.1 recorded in the fixture
ZOO_V1 = [e for e in PRETRAINED if e.version == "v1.0.0" and e.arch in np.load(FIXTURE).files]


def _smooth_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """The input pair the fixture was made with (transreg 0.1, before the package layout changed)."""
    g = torch.Generator().manual_seed(0)

    def smooth(shape: tuple[int, ...]) -> torch.Tensor:
        x = torch.rand(1, 1, *[s // 4 for s in shape], generator=g)
        return torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=True)

    return smooth((96, 112, 96)), smooth((96, 112, 96))


def test_the_fixture_covers_the_three_zoo_v1_checkpoints():
    assert sorted(e.arch for e in ZOO_V1) == ["transmorph_micro", "vitvnet_micro", "voxelmorph2"]


@pytest.mark.parametrize("entry", ZOO_V1, ids=lambda e: e.name)
def test_format1_zoo_checkpoints_give_the_flows_of_transreg_0_1(entry):
    """The shipped v1 checkpoints (format 1) give the flows that transreg 0.1's code gave
    (subsampled every 4th voxel, stored in tests/fixtures by that code)."""
    folder = Path(transreg.__file__).parent / entry.local_path
    assert json.loads((folder / "config.json").read_text())["format_version"] == 1
    model = transreg.create_model(entry.name, pretrained=True)
    moving, fixed = _smooth_pair()
    with torch.no_grad():
        flow = model(moving, fixed).flow[0, :, ::4, ::4, ::4].numpy()
    expected = np.load(FIXTURE)[entry.arch]
    np.testing.assert_allclose(flow, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("entry", ZOO_V1, ids=lambda e: e.name)
def test_format1_resaved_as_format2_is_bit_identical(entry, tmp_path):
    v1 = transreg.create_model(entry.name, pretrained=True)
    transreg.save_pretrained(v1, tmp_path / "v2")
    config = read_config(tmp_path / "v2")
    assert config["format_version"] == 2
    assert config["preprocessing"]["intensity"] == {"method": "percentile", "lower": 0.5, "upper": 99.5}
    v2 = load_checkpoint(tmp_path / "v2")
    for (k1, a), (k2, b) in zip(v1.state_dict().items(), v2.state_dict().items()):
        assert k1 == k2 and torch.equal(a, b)
    moving, fixed = _smooth_pair()
    with torch.no_grad():
        assert torch.equal(v1(moving, fixed).flow, v2(moving, fixed).flow)


def test_format2_stores_every_argument_so_a_changed_default_changes_nothing(tmp_path, monkeypatch):
    model = transreg.create_model("transmorph_micro", ndim=2)
    transreg.save_pretrained(model, tmp_path / "ckpt", preprocessing={"spacing": [2.0, 2.0], "intensity": "minmax"})
    stored = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert stored["model_args"]["embed_dim"] == 12 and stored["model_args"]["depths"] == [1, 1, 2, 1]
    assert stored["model_args"]["img_size"] == [96, 112] and stored["model_args"]["mlp_ratio"] == 4.0
    assert stored["preprocessing"]["intensity"] == {"method": "minmax"}
    assert len(stored["weights_sha256"]) == 64
    # a later transreg widens transmorph_micro's default: the checkpoint must not notice
    widened = dict(transmorph_module._MICRO, embed_dim=24, reg_head_chan=16)
    monkeypatch.setattr(transmorph_module, "_MICRO", widened)
    assert transreg.create_model("transmorph_micro", ndim=2).init_args["embed_dim"] == 24
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.init_args["embed_dim"] == 12
    x = torch.rand(1, 1, 96, 112)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, x.flip(2)).flow, loaded(x, x.flip(2)).flow)


def test_format1_with_changed_defaults_would_differ(tmp_path, monkeypatch):
    """The reason for format 2: a format-1 config (only the non-default arguments) builds
    whatever today's defaults say, so a widened default breaks it (named, not silent)."""
    model = transreg.create_model("transmorph_micro", ndim=2)
    transreg.save_pretrained(model, tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(format_version=1, model_args={"ndim": 2})
    del config["weights_sha256"]
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(transmorph_module, "_MICRO", dict(transmorph_module._MICRO, embed_dim=24))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("prose, error", [
    ("z-score per volume", "unknown intensity method"),
    ({"method": "percentile", "lower": 99, "upper": 1}, "lower < upper"),
    ({"method": "minmax", "level": 3}, "takes no level"),
])
def test_bad_preprocessing_records_are_named(tmp_path, prose, error):
    model = transreg.create_model("transmorph_micro", ndim=2)
    with pytest.raises(CheckpointError, match=error):
        transreg.save_pretrained(model, tmp_path / "ckpt", preprocessing={"intensity": prose})


def test_registry_module_imports_nothing_of_the_package():
    source = Path(registry.__file__).read_text()
    assert "from ." not in source and "import transreg" not in source and "import torch" not in source
