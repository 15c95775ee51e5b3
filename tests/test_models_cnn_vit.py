"""ViT-V-Net and VoxelMorph families: encoders' feature_info, any size, attention, position
embedding resizing, configuration errors. (Original parameter counts: tests/test_core.py;
equality with the original code: tests/test_convert.py.)"""
import math

import pytest
import torch
import torch.nn.functional as F

import transreg
from transreg.models.decoders import VxmDecoder
from transreg.models.encoders import UNetEncoder, ViTEncoder
from transreg.models.encoders.vit import ViTBlock
from transreg.models.base import InputError

# ViT-V-Net with the original layout but narrow, so a forward pass takes well under a second.
SMALL_VIT = dict(hidden_size=24, depth=2, num_heads=4, mlp_dim=48, head_channels=32, stem_channels=(8, 16, 16),
                 decoder_channels=(32, 16, 16, 8, 8))


def small_vitvnet(ndim, img_size=None, **kw):
    return transreg.create_model("vitvnet", ndim=ndim, img_size=img_size or (64,) * ndim, **{**SMALL_VIT, **kw})


@pytest.mark.parametrize("ndim", [2, 3])
def test_encoders_feature_info_describes_their_outputs(ndim):
    size = (64,) * ndim
    x = torch.rand(2, 2, *size)
    encoders = [
        UNetEncoder(ndim, 2, (8, 16, 16, 32)),
        ViTEncoder(ndim, 2, size, (8, 16, 16), extra_pools=2, patch_size=8, hidden_size=24, depth=1,
                   num_heads=4, mlp_dim=48),
    ]
    for encoder in encoders:
        with torch.no_grad():
            features = encoder(x)
        assert len(features) == len(encoder.feature_info)
        for f, info in zip(features, encoder.feature_info):
            assert f.shape == (2, info["num_chs"], *(s // info["reduction"] for s in size))
    # the ViT stem: full, 1/2, 1/4 resolution, then two pooled maps; the tokens at 1/32
    assert [i["reduction"] for i in encoders[1].feature_info] == [1, 2, 4, 8, 16, 32]
    assert [i["reduction"] for i in encoders[0].feature_info] == [2, 4, 8, 16]


def test_default_configurations():
    with torch.device("meta"):  # shapes only
        vit = transreg.create_model("vitvnet")
    assert vit.size_divisor == 32
    assert tuple(vit.encoder.pos_embed.shape) == (1, 252, 5, 6, 7)  # 160×192×224 / 32
    assert len(vit.encoder.blocks) == 12 and vit.encoder.blocks[0].attn.num_heads == 12
    assert vit.skip_channels == [32, 32, 32, 32, 16]
    vxm = transreg.create_model("voxelmorph1")
    assert vxm.size_divisor == 16
    assert [b[0].out_channels for b in vxm.encoder.blocks] == [8, 32, 32, 32]
    assert [b[0].out_channels for b in (*vxm.decoder.up, *vxm.decoder.extras)] == [32, 32, 32, 32, 32, 8, 8]


@pytest.mark.parametrize("ndim,size", [(2, (37, 41)), (3, (21, 19, 23))])
@pytest.mark.parametrize("name", ["vitvnet", "voxelmorph1", "voxelmorph2"])
def test_train_step_at_an_odd_size_reaches_every_parameter(name, ndim, size):
    torch.manual_seed(0)
    model = small_vitvnet(ndim) if name == "vitvnet" else transreg.create_model(name, ndim=ndim)
    model.train()
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = model(moving, fixed)
    assert out.flow.shape == (2, ndim, *size) and out.warped.shape == (2, 1, *size)
    assert out.flow.abs().max() < 1e-2  # flow head initialised N(0, 1e-5)
    loss = (out.warped - fixed).pow(2).mean() + 1e3 * out.flow.pow(2).mean()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient for {dead[:5]}"


def test_vit_block_attention_is_global_multi_head_attention():
    torch.manual_seed(0)
    dim, heads, n = 16, 4, 10
    block = ViTBlock(dim, heads, mlp_dim=32).eval()
    x = torch.randn(3, n, dim)
    # brute force: softmax(q kᵀ / √d) v per head, then the output projection and the MLP
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, eps=1e-6)
    q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).split(dim, dim=-1)
    split = lambda t: t.view(3, n, heads, dim // heads).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    attn = (weights @ split(v)).transpose(1, 2).reshape(3, n, dim)
    y = x + attn @ block.attn.proj.weight.T + block.attn.proj.bias
    h = F.layer_norm(y, (dim,), block.norm2.weight, block.norm2.bias, eps=1e-6)
    expected = y + F.gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_position_embedding_is_resized_to_the_input_grid(ndim):
    torch.manual_seed(0)
    trained = small_vitvnet(ndim, img_size=(64,) * ndim).eval()
    with torch.no_grad():
        trained.encoder.pos_embed.normal_()
    size = (96, 32, 64)[:ndim]
    grid = tuple(s // 32 for s in size)
    # the same weights at the new size, with the embedding resized by hand
    target = small_vitvnet(ndim, img_size=size).eval()
    state = dict(trained.state_dict())
    mode = "bilinear" if ndim == 2 else "trilinear"
    state["encoder.pos_embed"] = F.interpolate(state["encoder.pos_embed"], size=grid, mode=mode, align_corners=False)
    target.load_state_dict(state)
    x = torch.rand(1, 2, *size)
    with torch.no_grad():
        tokens = trained.encoder(x)[-1]
        torch.testing.assert_close(tokens, target.encoder(x)[-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trained.predict(x)[0], target.predict(x)[0], atol=1e-6, rtol=1e-4)
        # and the embedding is used: without it the tokens change
        trained.encoder.pos_embed.zero_()
        assert (trained.encoder(x)[-1] - tokens).abs().max() > 0.1


def test_vitvnet_single_token_batchnorm_gives_clear_error():
    model = small_vitvnet(2).train()
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(InputError, match="batch of 2 or more"):
        model(x, x)
    model.eval()
    assert model(x, x).flow.shape == (1, 2, 32, 32)  # eval uses running statistics: fine


def test_configuration_errors_name_the_problem():
    with pytest.raises(ValueError, match="decoder blocks upsample by 16"):
        transreg.create_model("vitvnet", decoder_channels=(96, 48, 32, 16))
    with pytest.raises(ValueError, match="smaller than one patch"):
        transreg.create_model("vitvnet", ndim=2, img_size=(16, 64))
    with pytest.raises(ValueError, match="more widths"):
        VxmDecoder(3, 32, [2, 16, 32, 32], [32, 32, 32, 32])


@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_conv_act_units_are_he_initialised_so_a_deep_stack_keeps_its_scale(slope):
    """VoxelMorph's and ViT-V-Net's unnormalised units: weights N(0, 2 / ((1 + slope²) fan_in)),
    zero bias; through 8 units the activations keep their scale (PyTorch's default
    initialisation shrinks them by about 2× per unit, i.e. ~200× here)."""
    from transreg.models.layers import ConvAct

    torch.manual_seed(0)
    units = torch.nn.Sequential(*(ConvAct(3, 2 if i == 0 else 32, 32, slope=slope) for i in range(8)))
    conv = units[3][0]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / ((1 + slope**2) * fan_in)), rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0
    x = torch.randn(1, 2, 24, 24, 24)
    with torch.no_grad():
        y = units(x)
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    assert 0.3 < rms(y) / rms(x) < 3.0
