"""`transreg demo` and the zoo's default checkpoint (DEFAULT_CHECKPOINT), without network.

The sample pair is registered on a coarse grid (6 mm) so each run takes seconds.
"""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import transreg
from transreg.zoo import index as zoo
from transreg.zoo import registry
from transreg.zoo.checkpoint import CheckpointError, save_pretrained, sha256_file
from transreg.cli import main as cli_main
from transreg.registration.defaults import DEFAULT_MODEL, default_model, sample_pair
from transreg.registration.pipeline import register
from transreg.registration.result import OUTPUT_FILES

SHIFT = 1.5  # voxels along the first model-grid axis: what the test checkpoint predicts everywhere


def _labels_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the non-zero labels present in either map (independent of transreg.metrics)."""
    scores = []
    for value in np.union1d(np.unique(a), np.unique(b)):
        if value == 0:
            continue
        x, y = a == value, b == value
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


@pytest.fixture
def default_checkpoint(tmp_path, monkeypatch):
    """A tiny VoxelMorph checkpoint (6 mm grid) that predicts a constant shift, registered as
    the unpublished zoo tag voxelmorph1.zoo_test (revision None, shipped copy in tmp) and
    made the zoo's default."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = transreg.create_model("voxelmorph1", ndim=3, enc_channels=(4, 8, 8, 8), dec_channels=(8, 8, 8, 8, 8, 4, 4))
    with torch.no_grad():
        model.head.conv.weight.zero_()
        model.head.conv.bias.copy_(torch.tensor([SHIFT, 0.0, 0.0]))
    folder = save_pretrained(model, tmp_path / "ckpt", preprocessing={"spacing": [6.0, 6.0, 6.0], "orientation": "RAS",
                                                                     "intensity": "percentile"})
    tag = registry.PretrainedTag(arch="voxelmorph1", tag="zoo_test", hf_hub_id="transreg-test/not-pushed",
                                 version="v0.0.1", revision=None, sha256=sha256_file(folder / "model.safetensors"),
                                 local_path=str(folder))
    monkeypatch.setitem(registry._PRETRAINED, tag.name, {tag.version: tag})
    monkeypatch.setattr(zoo, "DEFAULT_CHECKPOINT", tag.name)
    return tag, folder


def test_demo_with_the_untrained_fallback(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(zoo, "DEFAULT_CHECKPOINT", None)  # as before a trained default ships
    assert default_model() == DEFAULT_MODEL == "transmorph_tiny"
    out = tmp_path / "demo"
    assert cli_main(["demo", "-o", str(out), "--spacing", "6", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == DEFAULT_MODEL and report["model"]["trained"] is False
    assert "UNTRAINED" in printed and f"{report['dice']['mean']:.3f} final" in printed
    # the reported Dice is the Dice of the written warped labels against the fixed labels
    warped = np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj)
    fixed = np.asarray(nib.load(sample_pair()["fixed_labels"]).dataobj)
    assert report["dice"]["mean"] == pytest.approx(_labels_dice(warped, fixed), abs=1e-3)
    assert report["dice"]["mean"] > report["dice_before"] + 0.1  # the affine stage aligned the pair


def test_zoo_default_checkpoint_is_used_without_model(default_checkpoint):
    tag, folder = default_checkpoint
    assert default_model() == tag.name
    pair = sample_pair()
    kwargs = dict(moving_labels=pair["moving_labels"], affine=False, device="cpu")
    by_default = register(pair["moving"], pair["fixed"], **kwargs)
    explicit = register(pair["moving"], pair["fixed"], model=f"local-dir:{folder}", **kwargs)
    info = by_default.report["model"]
    assert info["name"] == tag.name and info["trained"] is True
    assert info["sha256"] == tag.sha256 and info["commit"] is None and info["version"] == "v0.0.1"
    assert tuple(by_default.report["preprocessing"]["spacing"]) == (6.0, 6.0, 6.0)
    assert torch.equal(by_default.transform.coords, explicit.transform.coords)
    # the shipped weights were loaded: the deformable stage moved voxels by SHIFT model voxels (6 mm each)
    untrained = register(pair["moving"], pair["fixed"], model=DEFAULT_MODEL, spacing=6.0, **kwargs)
    moved_mm = np.abs(by_default.transform.displacement_world() - untrained.transform.displacement_world())
    assert np.median(moved_mm.max(axis=0)) == pytest.approx(SHIFT * 6.0, abs=0.5)


def test_demo_uses_the_zoo_default(default_checkpoint, tmp_path, capsys):
    tag, _ = default_checkpoint
    out = tmp_path / "demo"
    assert cli_main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == tag.name and report["model"]["trained"] is True
    assert "UNTRAINED" not in printed and tag.name in printed


def test_zoo_default_is_a_shipped_checkpoint():
    assert zoo.DEFAULT_CHECKPOINT is not None, "zoo v1 ships a trained default checkpoint"
    assert zoo.DEFAULT_CHECKPOINT in [t.name for t in zoo.PRETRAINED]
    assert default_model() == zoo.DEFAULT_CHECKPOINT in transreg.list_models(pretrained=True)


@pytest.mark.parametrize("name", [t.name for t in zoo.PRETRAINED if t.name != zoo.DEFAULT_AFFINE_CHECKPOINT])
def test_shipped_checkpoint_beats_the_affine_stage_offline(name, tmp_path, monkeypatch):
    """Every zoo v1 checkpoint ships inside the package: with the Hub offline and an empty
    cache it loads, its weights match the pinned sha256, and it registers the sample pair
    (test subjects, never trained on) better than the affine stage alone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    tag = registry.pretrained_entry(name)
    shipped = Path(transreg.__file__).parent / tag.local_path
    assert sha256_file(shipped / "model.safetensors") == tag.sha256
    pair = sample_pair()
    fixed_labels = np.asarray(nib.load(pair["fixed_labels"]).dataobj)
    kwargs = dict(moving_labels=pair["moving_labels"], device="cpu")
    affine = register(pair["moving"], pair["fixed"], affine_only=True, **kwargs)
    full = register(pair["moving"], pair["fixed"], model=name, **kwargs)
    info = full.report["model"]
    assert info["name"] == tag.name and info["trained"] is True and info["sha256"] == tag.sha256
    affine_dice = _labels_dice(affine.warped_labels.data, fixed_labels)
    full_dice = _labels_dice(full.warped_labels.data, fixed_labels)
    assert full_dice > affine_dice + 0.03, (affine_dice, full_dice)
    assert full.report["folding_percent"] < 1.0


def test_unpublished_tag_needs_its_shipped_copy(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs local_path \\(the copy shipped in the package\\) or a release folder"):
        registry.PretrainedTag(arch="voxelmorph1", tag="x", hf_hub_id="a/b", version="v1.0.0", revision=None,
                               sha256="0" * 64)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tag = registry.PretrainedTag(arch="voxelmorph1", tag="gone", hf_hub_id="a/b", version="v1.0.0", revision=None,
                                 sha256="0" * 64, local_path=str(tmp_path / "missing"))
    monkeypatch.setitem(registry._PRETRAINED, tag.name, {tag.version: tag})
    with pytest.raises(CheckpointError, match="not on the Hub yet"):
        transreg.create_model(tag.name, pretrained=True)
