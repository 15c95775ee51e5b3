"""Recursive cascade (transreg.models.cascade): composition, weights, checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

import transreg
from transreg.models.cascade import RecursiveCascade
from transreg.spatial import warp
from transreg.zoo.checkpoint import save_pretrained

TINY = {"base": "transmorph_tiny", "base_args": {"img_size": (32, 32, 32), "window_size": (1, 1, 1)}}


def _pair(shape=(1, 1, 32, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def _scaled(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights give ~0 flows; scale the flow head so that passes move voxels."""
    with torch.no_grad():
        head = model.base.head.conv if hasattr(model, "base") else model.head.conv
        head.weight.mul_(2e3)
    return model.eval()


def test_one_pass_is_the_base_network():
    cascade = _scaled(transreg.create_model("recursive_cascade", passes=1, **TINY))
    moving, fixed = _pair()
    with torch.no_grad():
        assert torch.equal(cascade(moving, fixed).flow, cascade.base(moving, fixed).flow)


def test_two_passes_compose_the_second_flow_onto_the_first():
    """Brute force with the base: pass 2 sees the moving image warped by pass 1; the total
    displacement at x is u2(x) + u1(x + u2(x)) (u1 sampled by hand, trilinear)."""
    cascade = _scaled(transreg.create_model("recursive_cascade", passes=2, **TINY))
    moving, fixed = _pair(seed=1)
    with torch.no_grad():
        u1 = cascade.base(moving, fixed).flow
        u2 = cascade.base(warp(moving, u1), fixed).flow
        out = cascade(moving, fixed)
    assert u1.abs().max() > 0.5 and u2.abs().max() > 0.5  # both passes move voxels
    point = torch.tensor([14, 17, 15])
    step = u2[0, :, point[0], point[1], point[2]]
    where = point.double() + step.double()
    base, frac = where.floor().long(), where - where.floor()
    sampled = torch.zeros(3, dtype=torch.float64)
    for corner in range(8):
        offset = torch.tensor([(corner >> k) & 1 for k in range(3)])
        weight = torch.prod(torch.where(offset.bool(), frac, 1 - frac))
        i, j, k = (base + offset).tolist()
        sampled += weight * u1[0, :, i, j, k].double()
    expected = step.double() + sampled
    assert torch.allclose(out.flow[0, :, point[0], point[1], point[2]].double(), expected, atol=1e-4)
    assert torch.allclose(out.warped, warp(moving, out.flow))  # the moving image resampled once


def test_constant_shifts_add_up():
    """A base that always shifts by t gives passes × t (composition of translations)."""
    cascade = transreg.create_model("recursive_cascade", passes=3, **TINY)
    shift = torch.tensor([0.5, -1.0, 0.25]).view(1, 3, 1, 1, 1)
    cascade.base.predict = lambda x: (shift.expand(x.shape[0], 3, *x.shape[2:]).clone(), None)
    moving, fixed = _pair()
    flow = cascade(moving, fixed).flow
    interior = flow[:, :, 4:-4, 4:-4, 4:-4]
    assert torch.allclose(interior, (3 * shift).expand_as(interior), atol=1e-5)


def test_wrapping_shares_the_pretrained_weights_and_saves_every_argument(tmp_path):
    network = _scaled(transreg.create_model("transmorph_tiny", img_size=(32, 32, 32), window_size=(1, 1, 1)))
    network.architecture = "transmorph_tiny"
    cascade = RecursiveCascade.wrapping(network, passes=2)
    assert cascade.base is network and sum(p.numel() for p in cascade.parameters()) == sum(
        p.numel() for p in network.parameters())
    save_pretrained(cascade, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architecture"] == "recursive_cascade"
    assert config["model_args"]["base"] == "transmorph_tiny" and config["model_args"]["passes"] == 2
    assert config["model_args"]["base_args"]["embed_dim"] == 6  # defaults of the base recorded too
    loaded = transreg.create_model(str(tmp_path / "ckpt"), pretrained=True)
    moving, fixed = _pair(seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(moving, fixed).flow, cascade(moving, fixed).flow)


def test_bad_cascades_are_named():
    with pytest.raises(ValueError, match="passes must be at least 1"):
        transreg.create_model("recursive_cascade", passes=0, **TINY)
    inner = transreg.create_model("recursive_cascade", **TINY)
    with pytest.raises(ValueError, match="cannot itself be a cascade"):
        RecursiveCascade.wrapping(inner, 2)
    with pytest.raises(TypeError, match="has no .architecture"):
        RecursiveCascade.wrapping(torch.nn.Conv3d(2, 3, 1), 2)


def test_float16_weights_halve_the_file_and_load_into_float32(tmp_path):
    """save_pretrained(weights_dtype=float16): half the bytes, a float32 model after loading,
    flows within float16 rounding of the float32 checkpoint's."""
    model = _scaled(transreg.create_model("recursive_cascade", passes=2, **TINY))
    model.architecture = "recursive_cascade"
    save_pretrained(model, tmp_path / "fp32")
    save_pretrained(model, tmp_path / "fp16", weights_dtype=torch.float16)
    full, half = (tmp_path / d / "model.safetensors" for d in ("fp32", "fp16"))
    assert half.stat().st_size < 0.55 * full.stat().st_size
    a = transreg.create_model(str(tmp_path / "fp32"), pretrained=True)
    b = transreg.create_model(str(tmp_path / "fp16"), pretrained=True)
    assert all(p.dtype == torch.float32 for p in b.parameters())
    moving, fixed = _pair(seed=3)
    with torch.no_grad():
        fa, fb = a(moving, fixed).flow, b(moving, fixed).flow
    assert fa.abs().max() > 0.5 and 0 < (fa - fb).abs().max() < 0.02
    with pytest.raises(ValueError, match="floating-point dtype"):
        save_pretrained(model, tmp_path / "int", weights_dtype=torch.int8)
