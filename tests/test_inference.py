"""Fast-path pieces: predict(precision=...), bf16 accuracy, concat-free convolution,
slab-wise up-blocks, 4-D window attention, decoder gradient checkpointing."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

import transreg
from transreg.models.decoders import FlowHead, UpBlock, VxmDecoder
from transreg.registration.inference import count_flops, predict
from transreg.models.layers import (
    BatchNormAct, InstanceNormAct, WindowAttention, channels_last, conv_concat, linear_mode, shifted_window_mask, slabs,
)
from transreg.spatial import warp


def _label_map(shape: tuple[int, ...], n_labels: int, seed: int) -> torch.Tensor:
    """Blobby label map: argmax of smoothed noise fields, (1, 1, *shape) int64."""
    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.standard_normal(shape), 4.0) for _ in range(n_labels)])
    return torch.from_numpy(fields.argmax(0))[None, None]


def _mean_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    scores = []
    for label in torch.unique(b).tolist():
        x, y = a == label, b == label
        scores.append(2.0 * (x & y).sum().item() / (x.sum() + y.sum()).item())
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def pair_and_model():
    torch.manual_seed(0)
    shape = (64, 64, 64)
    moving_labels, fixed_labels = _label_map(shape, 6, 1), _label_map(shape, 6, 2)
    intensities = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    moving, fixed = intensities[moving_labels], intensities[fixed_labels]
    model = transreg.create_model("transmorph", embed_dim=12, num_heads=(2, 2, 2, 2), img_size=shape)
    with torch.no_grad():  # a deformation of a few voxels instead of the ~1e-4 of the initialisation
        model.head.conv.weight.mul_(2e4)
    return model, moving, fixed, moving_labels, fixed_labels


def test_bf16_inference_changes_dice_by_less_than_0_005(pair_and_model):
    model, moving, fixed, moving_labels, fixed_labels = pair_and_model
    out32, out16 = predict(model, moving, fixed, "fp32"), predict(model, moving, fixed, "bf16")
    assert out16.flow.dtype == torch.float32 and out16.warped.dtype == torch.float32
    assert 1.0 < out32.flow.std().item() < 10.0  # a real deformation
    difference = (out32.flow - out16.flow).abs()
    assert difference.max() > 0  # bf16 was in effect
    assert difference.mean() < 0.05 * out32.flow.abs().mean()
    warped32 = warp(moving_labels, out32.flow, mode="nearest")
    assert (warped32 != moving_labels).float().mean() > 0.05  # the flow moves the labels
    dice32 = _mean_dice(warped32, fixed_labels)
    dice16 = _mean_dice(warp(moving_labels, out16.flow, mode="nearest"), fixed_labels)
    assert abs(dice32 - dice16) < 0.005


def test_predict_fp32_equals_the_plain_call_and_restores_the_mode(pair_and_model):
    model, moving, fixed, *_ = pair_and_model
    model.train()
    out = predict(model, moving, fixed)
    assert model.training
    model.eval()
    with torch.no_grad():
        reference = model(moving, fixed)
    torch.testing.assert_close(out.flow, reference.flow, rtol=0, atol=0)
    torch.testing.assert_close(out.warped, reference.warped, rtol=0, atol=0)
    assert out.flow.is_contiguous()


def test_predict_rejects_an_unknown_precision(pair_and_model):
    model, moving, fixed, *_ = pair_and_model
    with pytest.raises(ValueError, match="precision must be one of"):
        predict(model, moving, fixed, "fp16")


@pytest.mark.parametrize("ndim", [2, 3])
def test_conv_concat_equals_conv_of_the_concatenation(ndim):
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(7, 5, 3, padding=1)
    parts = [torch.randn(2, c, *[9] * ndim) for c in (4, 3)]
    expected = conv(torch.cat(parts, 1))
    torch.testing.assert_close(conv_concat(conv, parts), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference calls oneDNN directly
        torch.testing.assert_close(conv_concat(conv, [channels_last(p) for p in parts]), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv_concat(conv, parts), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="parts have 4 channels in all, the convolution takes 7"):
        conv_concat(conv, parts[:1])


@pytest.mark.parametrize("batch", [1, 2])
def test_shifted_window_attention_matches_a_brute_force_softmax(batch):
    torch.manual_seed(0)
    window, spatial, heads, dim = (2, 3), (4, 6), 2, 8
    attn = WindowAttention(dim, window, heads).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    mask = shifted_window_mask(spatial, window, (1, 1))  # (nW, N, N)
    n_win, n = mask.shape[0], math.prod(window)
    x = torch.randn(batch * n_win, n, dim)
    with torch.no_grad():
        out = attn(x, window, mask)
        q, k, v = attn.qkv(x).view(batch * n_win, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
        logits = logits + attn._bias(window, x.device) + mask.repeat(batch, 1, 1)[:, None]
        expected = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(batch * n_win, n, dim))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_decoder_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = transreg.create_model("transmorph", ndim=2, embed_dim=6, num_heads=(2, 2, 2, 2), img_size=(64, 64))
    moving, fixed = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        out = model(moving, fixed)
        (out.flow.square().mean() + F.mse_loss(out.warped, fixed)).backward()
        return [p.grad.clone() for p in model.decoder.parameters()]

    model.train()
    for stage in model.encoder.stages:
        for block in stage.blocks:
            block.drop_path = torch.nn.Identity()
    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.decoder.grad_checkpointing
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _saved_bytes_and_grads(model, moving, fixed, precision="fp32"):
    """Bytes autograd saves in the forward pass (distinct storages, the parameters not
    counted) and the gradients of the parameters and of ``moving``, for a flow + image loss."""
    storages = {}
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in parameters:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad()
    moving = moving.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), transreg.registration.inference.autocast("cpu", precision):
        out = model(moving, fixed)
        loss = out.flow.float().square().mean() + F.mse_loss(out.warped.float(), fixed)
    loss.backward()
    return sum(storages.values()), [p.grad.clone() for p in model.parameters()] + [moving.grad]


@pytest.mark.parametrize("arch, kwargs, slab_bytes", [
    ("voxelmorph2", {}, None), ("voxelmorph2", {}, 2**12), ("vitvnet", {"img_size": (64, 48)}, None)])
def test_checkpointing_gives_the_same_gradients_from_less_memory(arch, kwargs, slab_bytes, monkeypatch):
    """Gradient checkpointing of the CNN-decoder models: the same gradients (parameters and
    input) while the forward pass keeps less than 40 % of the bytes. VoxelMorph's
    full-resolution part is recomputed whole or slab by slab; ViT-V-Net's stem levels,
    transformer blocks and up-blocks (dropout replayed from the saved RNG state)."""
    torch.manual_seed(0)
    model = transreg.create_model(arch, ndim=2, **kwargs).train()
    torch.nn.init.normal_(model.head.conv.weight, std=0.1)  # flows of a few voxels: the warp's gradient matters
    moving, fixed = torch.rand(1, 1, 64, 48), torch.rand(1, 1, 64, 48)
    torch.manual_seed(1)
    plain_bytes, plain = _saved_bytes_and_grads(model, moving, fixed)
    model.set_grad_checkpointing(True)
    assert model.decoder.grad_checkpointing
    if slab_bytes is not None:
        monkeypatch.setattr(slabs, "SLAB_BYTES", slab_bytes)
        assert slabs.slab_count(2 * 32 * 64 * 48 * 4) > 3  # the upsampled last level: 32 channels, fp32
    torch.manual_seed(1)
    checkpointed_bytes, checkpointed = _saved_bytes_and_grads(model, moving, fixed)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert checkpointed_bytes < 0.4 * plain_bytes, checkpointed_bytes / plain_bytes


def test_voxelmorph_checkpointing_recomputes_under_the_forward_autocast(monkeypatch):
    """Under bf16 autocast the slabs are recomputed in bf16 as in the forward pass: the
    gradients equal the plain bf16 step's to bf16 rounding, not to fp32's distance."""
    torch.manual_seed(0)
    model = transreg.create_model("voxelmorph2", ndim=2).train()
    torch.nn.init.normal_(model.head.conv.weight, std=0.1)
    moving, fixed = torch.rand(1, 1, 48, 32), torch.rand(1, 1, 48, 32)
    _, fp32 = _saved_bytes_and_grads(model, moving, fixed)
    _, plain = _saved_bytes_and_grads(model, moving, fixed, "bf16")
    model.set_grad_checkpointing(True)
    monkeypatch.setattr(slabs, "SLAB_BYTES", 2**12)
    _, checkpointed = _saved_bytes_and_grads(model, moving, fixed, "bf16")
    head_weight = len(list(model.parameters())) - 2
    bf16_vs_fp32 = (plain[head_weight] - fp32[head_weight]).abs().max()
    assert bf16_vs_fp32 > 0  # bf16 changes the gradient ...
    torch.testing.assert_close(checkpointed[head_weight], plain[head_weight], rtol=0, atol=0.1 * bf16_vs_fp32.item())


@pytest.mark.parametrize("ndim, shape", [(2, (9, 8)), (3, (7, 6, 5))])
@pytest.mark.parametrize("slabs", [1, 2, 3, 9])
def test_up_block_in_slabs_equals_the_whole_map(ndim, shape, slabs):
    torch.manual_seed(0)
    block = UpBlock(ndim, 8, 4, 3).eval()
    x, skip = torch.randn(1, 8, *shape), torch.randn(1, 3, *[2 * s for s in shape])
    conv = block.conv1[0]
    with torch.no_grad():
        whole = conv(torch.cat([F.interpolate(x, scale_factor=2.0, mode=linear_mode(ndim)), skip], 1))
        torch.testing.assert_close(block._up_conv_in_slabs(conv, x, skip, slabs), whole, rtol=1e-5, atol=1e-5)


def _vxm_decoder_with_cat(decoder: VxmDecoder, x: torch.Tensor, skips: list[torch.Tensor], head) -> torch.Tensor:
    """VoxelMorph's decoder as published: upsample, concatenate, convolve (whole maps)."""
    for unit, skip in zip(decoder.up, reversed(skips)):
        x = torch.cat([F.interpolate(unit(x), scale_factor=2.0, mode="nearest"), skip], 1)
    for unit in decoder.extras:
        x = unit(x)
    return head(x)


@pytest.mark.parametrize("ndim, shape", [(2, (12, 8)), (3, (12, 8, 4))])
@pytest.mark.parametrize("slab_bytes", [None, 2**8, 2**10])
def test_vxm_decoder_without_cat_and_in_slabs_equals_the_published_one(ndim, shape, slab_bytes, monkeypatch):
    torch.manual_seed(0)
    decoder = VxmDecoder(ndim, 5, [2, 4], [6, 5, 4, 3, 3]).eval()
    head = FlowHead(ndim, 3)
    torch.nn.init.normal_(head.conv.weight, std=0.1)
    skips = [torch.randn(1, 2, *shape), torch.randn(1, 4, *[s // 2 for s in shape])]
    x = torch.randn(1, 5, *[s // 4 for s in shape])
    with torch.no_grad():
        expected = _vxm_decoder_with_cat(decoder, x, skips, head)
        if slab_bytes is not None:  # 2**8: a slab per fine row; 2**10: a few rows per slab
            monkeypatch.setattr(slabs, "SLAB_BYTES", slab_bytes)
            assert slabs.slabs_for(5 * math.prod(shape) * 4) > 1  # the upsampled last level: 5 channels, fp32
        torch.testing.assert_close(decoder(x, skips, head=head), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(decoder(x, skips), _vxm_decoder_with_cat(decoder, x, skips, torch.nn.Identity()),
                                   rtol=1e-5, atol=1e-6)


def test_inference_in_slabs_equals_the_plain_forward(pair_and_model, monkeypatch):
    model, moving, fixed, *_ = pair_and_model
    model.eval()
    with torch.no_grad():
        plain = model(moving, fixed).flow
    monkeypatch.setattr(slabs, "SLAB_BYTES", 2**16)  # every up-block in several slabs
    torch.testing.assert_close(predict(model, moving, fixed).flow, plain, rtol=1e-4, atol=1e-4)  # flow ~3 voxels


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("channels_last_input", [True, False])
def test_instance_norm_act_equals_instance_norm_then_leaky_relu(ndim, channels_last_input):
    """Against a float64 reference, with badly scaled data (mean ≫ std): the in-place
    channels-last path of inference, the autograd path and the contiguous-layout path;
    the output keeps the input's memory format and `inplace=False` leaves the input alone."""
    torch.manual_seed(0)
    shape = (2, 5, *(9, 12, 7)[:ndim])
    x = torch.randn(shape) * torch.tensor([0.1, 1, 3, 0.5, 2]).view(1, 5, *[1] * ndim) + torch.arange(5.0).view(
        1, 5, *[1] * ndim) * 3
    x = channels_last(x) if channels_last_input else x.contiguous()
    reference = F.leaky_relu(F.instance_norm(x.double(), eps=1e-5), 0.01).float()
    with torch.no_grad():
        kept = x.clone()
        out = InstanceNormAct(5, slope=0.01)(x)
        assert torch.equal(x, kept)
        torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-5)
        if channels_last_input:
            assert out.is_contiguous(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)
        inplace = InstanceNormAct(5, slope=0.01, inplace=True)(kept)
        torch.testing.assert_close(inplace, reference, atol=2e-5, rtol=1e-5)
        if channels_last_input:
            assert inplace.data_ptr() == kept.data_ptr()  # really in place: no layout copy
    if channels_last_input:  # bf16 (inference under autocast): the mean is held in bf16 (2^-8 of |mean| = 18 std
        # for channel 3 here), so up to ~0.07 in normalised units; torch's bf16 F.instance_norm errs by 0.055 here
        with torch.no_grad():
            low = InstanceNormAct(5, slope=0.01, inplace=True)(x.bfloat16())
        assert low.dtype == torch.bfloat16
        reference_low = F.leaky_relu(F.instance_norm(x.bfloat16().double(), eps=1e-5), 0.01).float()
        torch.testing.assert_close(low.float(), reference_low, atol=7e-2, rtol=2e-2)
    xg = x.clone().requires_grad_(True)
    y = InstanceNormAct(5, slope=0.01, inplace=True)(xg)
    torch.testing.assert_close(y, reference, atol=2e-5, rtol=1e-5)
    y.square().sum().backward()
    xd = x.double().requires_grad_(True)
    F.leaky_relu(F.instance_norm(xd, eps=1e-5), 0.01).square().sum().backward()
    torch.testing.assert_close(xg.grad, xd.grad.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_batch_norm_act_equals_batch_norm_then_relu(ndim):
    """Inference (running statistics, in place or not, channels-last or not) and training
    (batch statistics, running-statistics update) against nn.BatchNorm + ReLU."""
    torch.manual_seed(0)
    reference = (torch.nn.BatchNorm2d if ndim == 2 else torch.nn.BatchNorm3d)(6)
    fused = BatchNormAct(6, inplace=True)
    with torch.no_grad():
        for bn in (reference, fused):
            bn.weight.copy_(torch.linspace(0.5, 2, 6))
            bn.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(3, 6, *(10, 9, 8)[:ndim]) * 2 + 1
    y_ref = F.relu(reference(x))
    y = fused(x.clone().requires_grad_(True))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(fused.running_mean, reference.running_mean)
    torch.testing.assert_close(fused.running_var, reference.running_var)
    reference.eval(), fused.eval()
    for layout in (lambda t: t.contiguous(), channels_last):
        x = layout(torch.randn(2, 6, *(10, 9, 8)[:ndim]))
        with torch.no_grad():
            y_ref = F.relu(reference(x))
            kept = x.clone()
            y = fused(kept)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
        assert y.data_ptr() == kept.data_ptr()  # in place: no second map
    with pytest.raises(ValueError, match="expects"):
        fused(torch.randn(2, 6))


def test_count_flops_includes_the_direct_onednn_convolutions():
    """In float32 CPU inference conv_concat calls oneDNN directly; the count is still
    2 · in · out · 27 · voxels, as with autograd on (the ordinary convolution op)."""
    conv = torch.nn.Conv3d(5, 4, 3, padding=1, bias=False)
    parts = [torch.randn(1, 3, 6, 7, 8), torch.randn(1, 2, 6, 7, 8)]
    expected = 2 * 5 * 4 * 27 * 6 * 7 * 8
    assert count_flops(lambda: conv_concat(conv, parts)) == expected
    with torch.inference_mode():
        assert count_flops(lambda: conv_concat(conv, parts)) == expected


FREED_BLOCKS_SCRIPT = """
import os, sys, torch
from transreg.cpu_tuning import return_freed_memory
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
assert return_freed_memory()
big = torch.ones(4 * 2**20); del big  # a freed 16 MiB block: glibc would raise its mmap threshold
start = resident()
blocks = [torch.ones(2**21) for _ in range(10)]  # 10 x 8 MiB, touched
del blocks
print((resident() - start) / 2**20)
"""


def test_return_freed_memory_gives_freed_blocks_back():
    """After the policy, 80 MiB of freed 8 MiB blocks leave the process (glibc's default
    keeps about 48 MiB of them resident in the heap after a larger block was freed)."""
    out = subprocess.run([sys.executable, "-c", FREED_BLOCKS_SCRIPT], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 8.0


def test_decoder_behind_a_frozen_encoder_is_still_checkpointed(monkeypatch):
    """Fine-tuning with a frozen encoder: the decoder's input needs no gradient, its weights
    do; with checkpointing on, its up-blocks are recomputed (not silently kept) and give
    the same weight gradients. Neither encoder nor decoder recomputes under no_grad."""
    import transreg.models.layers.checkpointing as checkpointing

    owners = []

    def recording_checkpoint(fn, *args, **kwargs):
        owners.append(type(getattr(fn, "__self__", fn)).__name__)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "checkpoint", recording_checkpoint)
    torch.manual_seed(0)
    model = transreg.create_model("transmorph_tiny", ndim=2, embed_dim=6, depths=(1, 1, 1, 1)).train()
    model.encoder.requires_grad_(False)
    torch.nn.init.normal_(model.head.conv.weight, std=0.1)  # the decoder's gradients well above rounding
    moving, fixed = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)  # no gradient wanted, as in training

    def decoder_gradients():
        torch.manual_seed(1)  # the same stochastic depth in both passes
        model.zero_grad()
        out = model(moving, fixed)
        (out.flow.square().mean() + F.mse_loss(out.warped, fixed)).backward()
        return [p.grad.clone() for p in model.decoder.parameters()]

    plain = decoder_gradients()
    assert not owners
    model.set_grad_checkpointing(True)
    checkpointed = decoder_gradients()
    assert owners.count("UpBlock") == len(model.decoder.blocks)
    assert owners.count("SwinBlock") == 4
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    owners.clear()
    with torch.no_grad():
        model(moving, fixed)
    assert not owners
