"""The CPU tuning switch: with it off, every path is PyTorch's and glibc's default, and
the registration results do not change."""
from __future__ import annotations

import subprocess
import sys

import torch

import transreg
from transreg import cpu_tuning
from transreg.registration.inference import predict


def test_the_switch_turns_the_onednn_path_off(monkeypatch):
    calls = []
    real = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or real(*a))
    model = transreg.create_model("voxelmorph2", ndim=2)
    x = torch.rand(1, 1, 32, 32)
    predict(model, x, x.flip(3))
    assert calls, "float32 CPU inference calls oneDNN directly when the tuning is on"
    calls.clear()
    with cpu_tuning.disabled():
        assert not cpu_tuning.enabled()
        predict(model, x, x.flip(3))
    assert not calls and cpu_tuning.enabled()


def test_results_are_the_same_with_the_tuning_off():
    """Every architecture family, fp32 inference: the flows with the tuning on and off
    agree to float32 rounding (oneDNN vs PyTorch's own kernel choice)."""
    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    for name in ("transmorph_tiny", "vitvnet_micro", "voxelmorph2"):
        model = transreg.create_model(name, **({} if name == "voxelmorph2" else {"img_size": (32, 32, 32)}))
        on = predict(model, moving, fixed).flow
        with cpu_tuning.disabled():
            off = predict(model, moving, fixed).flow
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)


def test_environment_variable_turns_everything_off():
    code = ("from transreg import cpu_tuning as t; "
            "print(t.enabled(), t.return_freed_memory(), t.retain_freed_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"TRANSREG_CPU_TUNING": "0", "PATH": ""})
    assert out.stdout.split() == ["False", "False", "False"]
