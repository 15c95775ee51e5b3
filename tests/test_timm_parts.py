"""transreg's copies of timm's Mlp, DropPath and trunc_normal_ behave exactly as timm's:
same parameter names and values for the same seed, same outputs, same random draws."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm.layers
import torch

from transreg.models.layers.timm_parts import DropPath, Mlp, trunc_normal_


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_has_timms_parameters_and_outputs(seed):
    torch.manual_seed(seed)
    ours = Mlp(8, 16, act_layer=torch.nn.GELU, drop=0.2).train()
    torch.manual_seed(seed)
    theirs = timm.layers.Mlp(8, 16, act_layer=torch.nn.GELU, drop=0.2).train()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(2, 5, 8)
    torch.manual_seed(7)
    y_ours = ours(x)
    torch.manual_seed(7)
    assert torch.equal(y_ours, theirs(x))


def test_drop_path_draws_as_timm_and_is_identity_in_eval():
    x = torch.randn(16, 3, 4, 4)
    torch.manual_seed(5)
    ours = DropPath(0.3).train()(x)
    torch.manual_seed(5)
    assert torch.equal(ours, timm.layers.DropPath(0.3).train()(x))
    assert not torch.equal(ours, x)  # some samples were dropped or scaled
    assert torch.equal(DropPath(0.3).eval()(x), x)


@pytest.mark.parametrize("std, a, b", [(0.02, -2.0, 2.0), (2.0, -1.0, 1.0)])
def test_trunc_normal_draws_as_timm(std, a, b):
    ours, theirs = torch.empty(200, 7), torch.empty(200, 7)
    torch.manual_seed(3)
    trunc_normal_(ours, std=std, a=a, b=b)
    torch.manual_seed(3)
    timm.layers.trunc_normal_(theirs, std=std, a=a, b=b)
    assert torch.equal(ours, theirs)
    assert ours.min() >= a and ours.max() <= b


def test_building_a_model_imports_no_timm():
    code = ("import sys, transreg; transreg.create_model('transmorph_tiny', ndim=2); "
            "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
