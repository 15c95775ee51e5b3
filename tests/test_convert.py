"""Converting checkpoints of the original TransMorph / ViT-V-Net / VoxelMorph code.

Equality with the original networks is checked on fixtures made by the original code:
five networks kept small in the repository (``tests/fixtures/official``: weights, the
input pair, the original outputs at every second voxel), and the six of
``../shared/fixtures/official`` (or ``$TRANSREG_FIXTURES/official``) in full where it
exists. Four small ones are copies of ../shared's, made by
``tests/fixtures/make_official_small.py``; ViT-V-Net's (``vitvnet_mini``, narrower than
../shared's 17 MB ``vitvnet_small``) was made with the original code by
``tests/fixtures/make_official_vitvnet_mini.py``. The remaining
tests build checkpoints in the original VoxelMorph layout by hand and compare with a
functional re-statement of the original forward pass.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import transreg
from transreg.cli import main as cli_main
from transreg.zoo.convert import KINDS, ConversionError, convert, from_original

REPO = Path(__file__).resolve().parents[1]
SMALL = Path(__file__).resolve().parent / "fixtures" / "official"
FIXTURES = Path(os.environ.get("TRANSREG_FIXTURES", REPO.parent / "shared" / "fixtures")) / "official"
SHARED_KINDS = {  # the full fixtures of ../shared
    "transmorph_tiny": "transmorph",
    "transmorph_e12": "transmorph",
    "transmorph_diff_e12": "transmorph_diff",
    "vitvnet_small": "vitvnet",
    "voxelmorph1": "voxelmorph1",
    "voxelmorph2": "voxelmorph2",
}
FIXTURE_KINDS = {**SHARED_KINDS, "vitvnet_mini": "vitvnet"}  # vitvnet_mini: in the repository only
IN_REPO = sorted(p.name for p in SMALL.iterdir() if p.is_dir())


@dataclass
class Original:
    """One original network: its checkpoint in the original layout, its config, the input
    pair and its outputs (``flow`` in voxels, ``warped``) at every ``step``-th voxel."""

    checkpoint: Path
    official: Path
    moving: torch.Tensor
    fixed: torch.Tensor
    flow: torch.Tensor
    warped: torch.Tensor
    step: int


def _from_repo(name: str, tmp: Path) -> Original:
    folder = SMALL / name
    expected = np.load(folder / "expected.npz")
    state = load_file(str(folder / "weights.safetensors"))
    inputs = np.load(SMALL / "inputs.npz")
    size = inputs["moving"].shape[2:]
    identity = torch.stack(torch.meshgrid(*[torch.arange(float(s)) for s in size], indexing="ij"))[None]
    for key in expected["grid_keys"]:  # the original modules' identity-grid buffer, rebuilt exactly
        state[str(key)] = identity.clone()
    checkpoint = tmp / f"{name}.pth.tar"
    torch.save({"epoch": 0, "state_dict": state, "best_dsc": 0.0}, checkpoint)
    return Original(checkpoint, folder / "official.json", torch.from_numpy(inputs["moving"]),
                    torch.from_numpy(inputs["fixed"]), torch.from_numpy(expected["flow"]),
                    torch.from_numpy(expected["warped"]), 2)


def _from_shared(name: str) -> Original:
    folder = FIXTURES / name
    if not folder.is_dir():
        pytest.skip(f"the full fixtures of the original implementations are not at {FIXTURES} (set "
                    f"TRANSREG_FIXTURES to the folder holding official/); in the repository: {', '.join(IN_REPO)}")
    ref = load_file(str(folder / "reference.safetensors"))
    return Original(folder / "checkpoint.pth.tar", folder / "official.json", ref["moving"], ref["fixed"],
                    reference_flow(ref), ref["warped"], 1)


def original(name: str, tmp: Path, full: bool = False) -> Original:
    """The repository's small copy where there is one (unless ``full``), else ../shared's."""
    return _from_repo(name, tmp) if name in IN_REPO and not full else _from_shared(name)


def reference_flow(ref: dict) -> torch.Tensor:
    """The original displacement in voxels.

    TransMorph-diff keeps ``disp`` in grid_sample's [-1, 1] units (same axis order) and
    its ``flow`` is ``disp`` plus the identity map; ``disp · (size − 1) / 2`` is the
    displacement in voxels. The other networks' ``flow`` already is.
    """
    if "disp" not in ref:
        return ref["flow"]
    size = ref["disp"].shape[2:]
    half = torch.tensor([(s - 1) / 2 for s in size]).view(1, 3, 1, 1, 1)
    identity = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij"))[None]
    torch.testing.assert_close(ref["flow"], ref["disp"] + identity, atol=1e-5, rtol=0)  # the convention above
    return ref["disp"] * half


def _check_equal(name: str, fx: Original) -> None:
    model = from_original(FIXTURE_KINDS[name], fx.checkpoint, fx.official)
    assert not model.training and model.architecture == FIXTURE_KINDS[name]
    official = json.loads(fx.official.read_text())
    assert sum(p.numel() for p in model.parameters()) == official["params"]
    with torch.no_grad():
        out = model(fx.moving, fx.fixed)
    s = fx.step
    assert fx.flow.abs().max() > 1.0  # the fixture's displacements are a few voxels, not ~0
    assert (out.flow[..., ::s, ::s, ::s] - fx.flow).abs().max() <= 1e-4
    assert (out.warped[..., ::s, ::s, ::s] - fx.warped).abs().max() <= 1e-4


@pytest.mark.parametrize("name", IN_REPO)
def test_converted_model_reproduces_the_original(name, tmp_path):
    """Runs on every clean clone: the small fixtures in tests/fixtures/official."""
    _check_equal(name, original(name, tmp_path))


def test_every_original_network_has_a_small_fixture():
    """Every kind ``transreg convert --from`` takes is checked on a clean clone."""
    assert sorted({FIXTURE_KINDS[name] for name in IN_REPO}) == sorted(KINDS)


@pytest.mark.parametrize("name", list(SHARED_KINDS))
def test_converted_model_reproduces_the_original_full_fixtures(name, tmp_path):
    """Every network, every voxel, where the full fixtures of ../shared exist."""
    _check_equal(name, original(name, tmp_path, full=True))


def test_cli_converts_to_a_folder_that_create_model_loads(tmp_path, capsys):
    fx = original("voxelmorph2", tmp_path)
    out = tmp_path / "voxelmorph2_converted"
    args = ["convert", "--from", "voxelmorph2", str(fx.checkpoint), "--config", str(fx.official), "-o", str(out)]
    assert cli_main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "converted with `transreg convert --from voxelmorph2`" in (out / "README.md").read_text()
    model = transreg.create_model(f"local-dir:{out}", pretrained=True)
    with torch.no_grad():
        result = model(fx.moving, fx.fixed)
    assert (result.flow[..., ::2, ::2, ::2] - fx.flow).abs().max() <= 1e-4
    # a second run does not silently replace the folder
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite"]) == 0


def test_config_that_does_not_match_the_weights_names_the_shapes(tmp_path):
    tiny = original("transmorph_tiny", tmp_path)
    with pytest.raises(ConversionError, match=r"shape mismatches \(the config does not match the weights\): "
                       r"encoder\.patch_embed\.proj\.weight: checkpoint \(6, 2, 4, 4, 4\) vs model \(12, 2, 4, 4, 4\)"):
        from_original("transmorph", tiny.checkpoint, SMALL / "transmorph_e12.official.json")


def test_checkpoint_of_another_original_network_is_named(tmp_path):
    fx = original("transmorph_diff_e12", tmp_path)
    config = json.loads(fx.official.read_text())["config"]
    with pytest.raises(ConversionError, match="holds an original transmorph_diff network .* use --from transmorph_diff"):
        from_original("transmorph", fx.checkpoint, config)


# ------------------------------------------------------------------ hand-made VoxelMorph checkpoints


def original_vxm_state(enc, dec, ndim=3, seed=0):
    """A random state dict with the keys and shapes of the original VxmDense (incl. its grid buffer)."""
    g = torch.Generator().manual_seed(seed)
    k = (3,) * ndim
    state, prev = {}, 2
    conv = lambda name, cin, cout: state.update({  # noqa: E731
        f"{name}.weight": torch.randn(cout, cin, *k, generator=g) * (2 / (cin * 3**ndim)) ** 0.5,
        f"{name}.bias": torch.randn(cout, generator=g) * 0.1})
    for i, c in enumerate(enc):
        conv(f"unet_model.downarm.{i}.main", prev, c)
        prev = c
    history = list(reversed(enc))
    for i, c in enumerate(dec[: len(enc)]):
        conv(f"unet_model.uparm.{i}.main", prev + (history[i] if i > 0 else 0), c)
        prev = c
    prev += 2
    for i, c in enumerate(dec[len(enc):]):
        conv(f"unet_model.extras.{i}.main", prev, c)
        prev = c
    conv("flow", prev, ndim)
    state["transformer.grid"] = torch.zeros(1, ndim, *(16,) * ndim)
    return state


def original_vxm_flow(state, x, levels, extras):
    """The original VxmDense forward pass (U-Net → flow conv), restated with torch.nn.functional."""
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    layer = lambda name, h, stride=1: F.leaky_relu(  # noqa: E731
        conv(h, state[f"{name}.weight"], state[f"{name}.bias"], stride=stride, padding=1), 0.2)
    history = [x]
    for i in range(levels):
        history.append(layer(f"unet_model.downarm.{i}.main", history[-1], stride=2))
    h = history.pop()
    for i in range(levels):
        h = F.interpolate(layer(f"unet_model.uparm.{i}.main", h), scale_factor=2, mode="nearest")
        h = torch.cat([h, history.pop()], dim=1)
    for i in range(extras):
        h = layer(f"unet_model.extras.{i}.main", h)
    return conv(h, state["flow.weight"], state["flow.bias"], padding=1)


VXM1 = ((8, 32, 32, 32), (32, 32, 32, 32, 32, 8, 8))


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxelmorph_checkpoint_converts_exactly(tmp_path, ndim):
    state = original_vxm_state(*VXM1, ndim=ndim)
    torch.save({"epoch": 3, "state_dict": state, "best_dsc": 0.7}, tmp_path / "vxm.pth.tar")
    model = from_original("voxelmorph1", tmp_path / "vxm.pth.tar", {"inshape": [16] * ndim})
    assert model.ndim == ndim
    torch.testing.assert_close(model.encoder.blocks[1][0].weight, state["unet_model.downarm.1.main.weight"])
    torch.testing.assert_close(model.decoder.extras[2][0].bias, state["unet_model.extras.2.main.bias"])
    x = torch.rand(2, 2, *(16,) * ndim)
    with torch.no_grad():
        flow, _ = model.predict(x)
        torch.testing.assert_close(flow, original_vxm_flow(state, x, 4, 3), atol=1e-5, rtol=1e-5)


def test_bare_state_dict_and_data_parallel_prefix_are_accepted(tmp_path):
    state = original_vxm_state(*VXM1)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "bare.pth")
    model = from_original("voxelmorph1", tmp_path / "bare.pth", {"inshape": [16, 16, 16]})
    torch.testing.assert_close(model.head.conv.weight, state["flow.weight"])


def test_corrupted_checkpoint_gives_one_clear_error(tmp_path):
    torch.save({"state_dict": original_vxm_state(*VXM1)}, tmp_path / "good.pth.tar")
    data = (tmp_path / "good.pth.tar").read_bytes()
    (tmp_path / "truncated.pth.tar").write_bytes(data[: len(data) // 2])
    for seed in range(20):  # garbage fails in many ways inside torch.load; each must read the same
        noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        (tmp_path / f"noise{seed}.pth.tar").write_bytes(noise.numpy().tobytes())
    for name in ["truncated.pth.tar", *(f"noise{seed}.pth.tar" for seed in range(20))]:
        with pytest.raises(ConversionError, match=f"{name} is corrupted or not a PyTorch checkpoint"):
            from_original("voxelmorph1", tmp_path / name, {"inshape": [16, 16, 16]})
    with pytest.raises(ConversionError, match="does not exist"):
        from_original("voxelmorph1", tmp_path / "missing.pth.tar", {})


class _Custom:  # an object that safe loading must refuse
    pass


def test_checkpoint_with_arbitrary_objects_is_not_unpickled(tmp_path):
    torch.save({"state_dict": original_vxm_state(*VXM1), "extra": _Custom()}, tmp_path / "unsafe.pth.tar")
    with pytest.raises(ConversionError, match=r"holds Python objects \(.*_Custom\) that safe loading"):
        from_original("voxelmorph1", tmp_path / "unsafe.pth.tar", {})


def test_other_architecture_wrong_variant_and_unmatched_keys_are_named(tmp_path):
    state = original_vxm_state(*VXM1)
    torch.save(state, tmp_path / "vxm1.pth")
    with pytest.raises(ConversionError, match="holds an original voxelmorph network .*use --from voxelmorph1 or voxelmorph2"):
        from_original("transmorph", tmp_path / "vxm1.pth", {})
    # VoxelMorph-1 weights as VoxelMorph-2: the config (default widths) does not match
    with pytest.raises(ConversionError, match=r"encoder\.blocks\.0\.0\.weight: checkpoint \(8, 2, 3, 3, 3\) vs model \(16"):
        from_original("voxelmorph2", tmp_path / "vxm1.pth", {"inshape": [16, 16, 16]})
    broken = {k: v for k, v in state.items() if k != "flow.bias"}
    broken["unet_model.attention.weight"] = torch.zeros(3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ConversionError) as err:
        from_original("voxelmorph1", tmp_path / "broken.pth", {"inshape": [16, 16, 16]})
    message = str(err.value)
    assert "checkpoint keys without a transreg counterpart: unet_model.attention.weight" in message
    assert "transreg keys missing from the checkpoint: head.conv.bias" in message
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match="not one of the original"):
        from_original("voxelmorph1", tmp_path / "other.pth", {})


def test_config_errors_name_the_key(tmp_path):
    torch.save(original_vxm_state(*VXM1), tmp_path / "vxm1.pth")
    with pytest.raises(ConversionError, match="unknown config keys for voxelmorph1: inshap"):
        from_original("voxelmorph1", tmp_path / "vxm1.pth", {"inshap": [16, 16, 16]})
    with pytest.raises(ConversionError, match="'pat_merg_rf' = 2 is not supported"):
        from_original("transmorph", tmp_path / "vxm1.pth", {"pat_merg_rf": 2})
    official = {"official_class": "models.py:VxmDense_2", "config": {"inshape": [16, 16, 16]}}
    (tmp_path / "official.json").write_text(json.dumps(official))
    with pytest.raises(ConversionError, match="original class VxmDense_2 \\(voxelmorph2\\), not voxelmorph1"):
        from_original("voxelmorph1", tmp_path / "vxm1.pth", tmp_path / "official.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConversionError, match="bad.json is not valid JSON"):
        from_original("voxelmorph1", tmp_path / "vxm1.pth", tmp_path / "bad.json")
    with pytest.raises(ConversionError, match="unknown original network 'swin'"):
        from_original("swin", tmp_path / "vxm1.pth", {})


def test_failed_conversion_writes_nothing(tmp_path, capsys):
    torch.save(original_vxm_state(*VXM1), tmp_path / "vxm1.pth")
    out = tmp_path / "out"
    code = cli_main(["convert", "--from", "voxelmorph2", str(tmp_path / "vxm1.pth"), "--config",
                     str(tmp_path / "missing.json"), "-o", str(out)])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.strip().count("\n") == 0  # one line
    # and a successful one round-trips through the checkpoint folder
    folder = convert("voxelmorph1", tmp_path / "vxm1.pth", {"inshape": [16, 16, 16]}, out)
    loaded = transreg.create_model(f"local-dir:{folder}", pretrained=True)
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x)[0], original_vxm_flow(torch.load(tmp_path / "vxm1.pth"), x, 4, 3),
                                   atol=1e-5, rtol=1e-5)


def test_learned_absolute_position_embedding_keeps_its_stored_grid(tmp_path):
    fx = original("transmorph_tiny", tmp_path)
    config = json.loads(fx.official.read_text())["config"]
    state = torch.load(fx.checkpoint, weights_only=True)["state_dict"]
    # the original's TransMorph-Lrn table: (1, C, 224/4, 224/4, 224/4) whatever the training size
    table = torch.randn(1, config["embed_dim"], 56, 56, 56, generator=torch.Generator().manual_seed(0)) * 0.02
    state["transformer.absolute_pos_embed"] = table
    torch.save({"state_dict": state}, tmp_path / "lrn.pth.tar")
    model = from_original("transmorph", tmp_path / "lrn.pth.tar", {**config, "ape": True})
    assert model.init_args["pos_embed"] == "learned" and tuple(model.init_args["img_size"]) == (224, 224, 224)
    torch.testing.assert_close(model.encoder.absolute_pos_embed, table)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        with_table = model(x, x).flow
        model.encoder.absolute_pos_embed.zero_()
        assert (model(x, x).flow - with_table).abs().max() > 1e-4  # the table is used
