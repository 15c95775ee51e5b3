"""Registry, model families and the Swin encoder: original configs, any size, gradients."""

import pytest
import torch

import transreg
from transreg.cli import main as cli_main
from transreg.models.encoders.swin import SwinEncoder
from transreg.models.layers import relative_position_index, shifted_window_mask, window_partition, window_reverse
from transreg.zoo.registry import UnknownModelError

ORIGINAL_PARAMS = {
    ("transmorph", ()): 46_771_251,
    ("transmorph_large", ()): 108_343_907,
    ("transmorph_small", ()): 11_757_195,
    ("transmorph_tiny", ()): 244_527,
    ("transmorph_diff", ()): 46_557_414,
    ("transmorph", (("conv_skip", False),)): 46_702_131,
    ("transmorph", (("trans_skip", False),)): 41_545_779,
    ("vitvnet", ()): 31_560_079,
    ("voxelmorph1", ()): 274_387,
    ("voxelmorph2", ()): 301_411,
}

# Reduced widths so every family runs in a second on CPU; architecture unchanged.
SMALL = {
    "transmorph": dict(embed_dim=12),
    "transmorph_large": dict(embed_dim=16, depths=(1, 1, 2, 1)),
    "transmorph_small": dict(embed_dim=12),
    "transmorph_tiny": dict(),
    "transmorph_diff": dict(embed_dim=12),
    "vitvnet": dict(hidden_size=24, depth=2, num_heads=4, mlp_dim=48, head_channels=32, stem_channels=(8, 16, 16)),
    "vitvnet_micro": dict(hidden_size=24, depth=2, num_heads=4, mlp_dim=48, head_channels=32),
}


KEYPOINT_MODELS = {"affine_micro"}  # the affine is fitted to detected keypoints: no zero-initialised flow head


def small_model(name, ndim):
    args = dict(SMALL.get(name, {}))
    if name.startswith("transmorph"):
        args.update(img_size=(64,) * ndim, window_size=(2,) * ndim)
    if name.startswith("vitvnet"):
        args.update(img_size=(64,) * ndim)
    return transreg.create_model(name, ndim=ndim, **args)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,overrides", list(ORIGINAL_PARAMS), ids=lambda v: str(v))
def test_default_config_matches_original_parameter_count(name, overrides):
    model = transreg.create_model(name, ndim=3, **dict(overrides))
    assert n_params(model) == ORIGINAL_PARAMS[(name, overrides)]


def test_transmorph_default_is_the_original_configuration():
    model = transreg.create_model("transmorph")
    assert model.ndim == 3
    block = model.encoder.stages[0].blocks[0]
    assert block.window == (5, 6, 7)
    assert block.attn.relative_position_bias_table.shape == (9 * 11 * 13, 4)
    assert [s.blocks[1].shifted for s in model.encoder.stages] == [True] * 4
    assert [f["num_chs"] for f in model.encoder.feature_info] == [96, 192, 384, 768]
    assert [f["reduction"] for f in model.encoder.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("ndim,size", [(2, (37, 41)), (3, (37, 41, 29))])
@pytest.mark.parametrize("name", transreg.list_models())
def test_every_model_registers_any_size(name, ndim, size):
    torch.manual_seed(0)
    model = small_model(name, ndim).eval()
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = model(moving, fixed)
    assert out.flow.shape == (2, ndim, *size)
    assert out.warped.shape == (2, 1, *size)
    assert torch.isfinite(out.flow).all() and torch.isfinite(out.warped).all()
    if name in KEYPOINT_MODELS:  # random keypoints until trained; same image → identity: test_learned_affine.py
        return
    # the flow heads start near zero: warped ≈ moving
    assert out.flow.abs().max() < 0.05
    assert (out.warped - moving).abs().max() < 0.05


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", transreg.list_models())
def test_gradients_reach_every_parameter(name, ndim):
    torch.manual_seed(0)
    model = small_model(name, ndim).train()
    # two tokens at stride 32 at least: ViT-V-Net's BatchNorm cannot train on one
    size = (48, 40) if ndim == 2 else (40, 32, 32)
    moving, fixed = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    out = model(moving, fixed)
    loss = (out.warped - fixed).pow(2).mean() + out.flow.pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for: {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", transreg.list_models())
def test_state_dict_holds_no_grids_or_rebuilt_buffers(name):
    model = small_model(name, 3)
    buffers = set(model.state_dict()) - {n for n, _ in model.named_parameters()}
    norm_stats = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm state is real state
    assert all(b.endswith(norm_stats) for b in buffers), f"rebuilt buffers saved: {sorted(buffers)[:5]}"
    assert not any("grid" in k or "index" in k or "mask" in k for k in model.state_dict())


def test_transmorph_ablations_run():
    for args in (dict(conv_skip=False), dict(trans_skip=False), dict(rel_pos_bias=False),
                 dict(pos_embed="learned"), dict(pos_embed="sinusoidal")):
        model = transreg.create_model("transmorph", embed_dim=12, img_size=(64, 64, 64), window_size=(2, 2, 2), **args)
        out = model.eval()(torch.rand(1, 1, 40, 48, 36), torch.rand(1, 1, 40, 48, 36))
        assert out.flow.shape == (1, 3, 40, 48, 36)
    assert transreg.create_model("transmorph", embed_dim=12, rel_pos_bias=False).encoder.stages[0].blocks[0].attn.relative_position_bias_table is None


def test_diffeomorphic_model_integrates_its_velocity():
    from transreg.spatial import integrate, resize_flow

    torch.manual_seed(0)
    model = small_model("transmorph_diff", 3).eval()
    moving, fixed = torch.rand(1, 1, 33, 30, 35), torch.rand(1, 1, 33, 30, 35)
    with torch.no_grad():
        for p in model.head.mean.parameters():
            p.mul_(1e4)  # make the velocity large enough to matter
        out = model(moving, fixed)
        padded = torch.nn.functional.pad(torch.cat([moving, fixed], 1), (0, 29, 0, 2, 0, 31))  # → 64×32×64
        flow, velocity = model.predict(padded)
        expected = resize_flow(integrate(velocity, 7), (64, 32, 64))
    assert velocity.shape == (1, 3, 32, 16, 32)
    assert out.flow.abs().max() > 0.1
    assert torch.allclose(flow, expected, atol=1e-6)
    assert torch.equal(out.flow, flow[..., :33, :30, :35])
    assert torch.equal(out.velocity, velocity[..., :17, :15, :18])


def test_learned_position_embedding_is_resized_to_the_input():
    enc = SwinEncoder(ndim=2, in_ch=2, img_size=(64, 64), embed_dim=12, depths=(1, 1), num_heads=(2, 2),
                      window_size=(4, 4), pos_embed="learned")
    assert enc.absolute_pos_embed.shape == (1, 12, 16, 16)
    feats = enc(torch.rand(1, 2, 96, 40))
    assert [f.shape for f in feats] == [(1, 12, 24, 10), (1, 24, 12, 5)]


def test_window_is_clipped_to_small_feature_maps():
    enc = SwinEncoder(ndim=3, in_ch=2, img_size=(64,) * 3, embed_dim=12, depths=(2, 2), num_heads=(2, 2),
                      window_size=(5, 6, 7))
    feats = enc(torch.rand(1, 2, 16, 24, 40))  # 4×6×10 tokens: windows clipped on the first axis
    assert feats[0].shape == (1, 12, 4, 6, 10) and torch.isfinite(feats[1]).all()


def test_window_partition_roundtrip_and_relative_index():
    x = torch.rand(2, 6, 8, 4, 5)
    windows = window_partition(x, (3, 4, 2))
    assert windows.shape == (2 * 2 * 2 * 2, 24, 5)
    assert torch.equal(window_reverse(windows, (3, 4, 2), (6, 8, 4)), x)
    index = relative_position_index((2, 3), table_window=(3, 4))
    coords = [(i, j) for i in range(2) for j in range(3)]
    for a, (ia, ja) in enumerate(coords):
        for b, (ib, jb) in enumerate(coords):
            assert index[a, b] == (ia - ib + 2) * 7 + (ja - jb + 3)


def test_shift_mask_separates_rolled_regions():
    mask = shifted_window_mask((4, 4), (2, 2), (1, 1))
    assert mask.shape == (4, 4, 4)
    assert torch.count_nonzero(mask[0]) == 0  # the first window holds one region
    assert (mask[-1] != 0).any()  # the last window mixes the rolled-in borders


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="transmorph_tiny"):
        transreg.create_model("transmorph_tiy")


def test_list_models_patterns():
    assert set(transreg.list_models("transmorph*")) >= {"transmorph", "transmorph_diff", "transmorph_tiny"}
    assert transreg.list_models("vox*") == ["voxelmorph1", "voxelmorph2"]
    assert "vitvnet" in transreg.list_models()


def test_overrides_and_recorded_arguments():
    model = transreg.create_model("transmorph_small", ndim=2, embed_dim=24)
    assert model.ndim == 2 and model.encoder.feature_info[0]["num_chs"] == 24
    assert model.architecture == "transmorph_small"
    # every constructor argument is recorded, the entrypoint's and the class's defaults included
    assert model.init_args["ndim"] == 2 and model.init_args["embed_dim"] == 24
    assert tuple(model.init_args["num_heads"]) == (4, 4, 4, 4) and model.init_args["window_size"] is None
    assert model.init_args["drop_path_rate"] == 0.3


def test_wrong_input_dimensions_give_clear_error():
    from transreg.models import InputError

    model = small_model("transmorph_tiny", 3)
    with pytest.raises(InputError, match="3 spatial dims"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(InputError, match="same shape"):
        model(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 30))


def test_cli_list_prints_every_architecture_with_parameters(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    for name in transreg.list_models():
        line = next(l for l in out.splitlines() if l.split()[0] == name)
        count = int(line.split()[-1].replace(",", ""))
        assert count == n_params(transreg.create_model(name))
    assert f"{46_771_251:,}" in out
