"""The trainer: learning on synthetic data (2-D, 3-D), exact resume, DDP (gloo), mixed
precision, schedules, fine-tuning end to end, clear errors before training starts."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import transreg
from transreg.training import trainer as training
from transreg.cli import main as cli_main
from transreg.training.config import ConfigError, TrainConfig, load_config
from transreg.data import ShapesPairs
from transreg.training import Trainer, TrainingError
from transreg.training.precision import AmpSettings, amp_settings
from transreg.training.schedules import lr_factor
from transreg.training.state import latest_checkpoint

TINY = {"name": "transmorph_tiny", "args": {"embed_dim": 6, "depths": [1, 1, 1, 1]}}
TINY_FLAGS = ["--model", "transmorph_tiny", "--set", "model.args={embed_dim: 6, depths: [1, 1, 1, 1]}"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(out: Path, size=(32, 32), steps=4, **sections) -> TrainConfig:
    raw = {
        "model": dict(TINY),
        "data": {"train": "synthetic:shapes", "size": list(size), "batch_size": 2, "val_pairs": 2},
        "optim": {"lr": 1e-3},
        "run": {"steps": steps, "out": str(out), "log_every": 1, "val_every": 1000, "ckpt_every": 1000},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return TrainConfig.from_dict(raw)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "size, steps, batch, lr, window, min_gain",
    [((64, 64), 100, 2, 3e-3, 9, 0.04), ((32, 32, 32), 30, 2, 3e-3, 5, 0.02)],
    ids=["2d", "3d"],
)
def test_loss_falls_and_validation_dice_rises(tmp_path, size, steps, batch, lr, window, min_gain):
    cfg = config(tmp_path / "run", size=size, steps=steps,
                 data={"batch_size": batch, "val_pairs": 6 if len(size) == 2 else 4, "shared_contrast": True},
                 loss={"similarity": "ncc", "similarity_args": {"window": window}},
                 optim={"lr": lr}, run={"val_every": steps, "log_every": 25})
    final = Trainer(cfg).fit()
    steps_log = jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in steps_log] == list(range(1, steps + 1))
    losses = [r["loss"] for r in steps_log]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.02
    val = jsonl(tmp_path / "run" / "validation.jsonl")
    assert [v["step"] for v in val] == [0, steps]
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 0.02
    assert val[-1]["val_dice"] > val[0]["val_dice"] + min_gain, val
    # the final folder is a loadable transreg checkpoint with the trained weights
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    loaded = transreg.create_model(f"local-dir:{final}", pretrained=True)
    pair = ShapesPairs(size, seed=123, shared_contrast=True)[0]
    with torch.no_grad():
        flow = loaded(pair["moving"][None], pair["fixed"][None]).flow
    assert flow.abs().max() > 0.1  # trained, not the N(0, 1e-5) initial head
    assert "val" in (final / "README.md").read_text().lower()


def test_synthmorph_dice_only_loss_learns_across_contrasts(tmp_path):
    """Independent random contrasts, loss = Dice on the labels only (the SynthMorph recipe)."""
    cfg = config(tmp_path / "run", size=(64, 64), steps=150, data={"val_pairs": 6},
                 loss={"sim_weight": 0.0, "dice_weight": 1.0, "reg_weight": 0.1},
                 optim={"lr": 3e-3}, run={"val_every": 150, "log_every": 50})
    Trainer(cfg).fit()
    records = jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(r["loss"] == pytest.approx(r["dice_loss"] + 0.1 * r["regulariser"], rel=1e-4) for r in records)
    val = jsonl(tmp_path / "run" / "validation.jsonl")
    assert val[-1]["val_dice"] > val[0]["val_dice"] + 0.025, val
    assert val[-1]["val_loss"] < val[0]["val_loss"]


# --------------------------------------------------------------------------- resume


def _resume_config(out: Path) -> TrainConfig:
    # poly schedule + warm-up + accumulation + clipping + drop-path randomness: all state matters
    return config(out, steps=8, model={"args": {"embed_dim": 6, "depths": [1, 1, 1, 1], "drop_path_rate": 0.3}},
                  optim={"schedule": "poly", "warmup_steps": 2, "accumulate": 2, "clip_grad": 1.0, "name": "adamw",
                         "weight_decay": 0.01},
                  run={"ckpt_every": 3, "val_every": 4})


def test_resume_after_sigterm_gives_the_same_losses(tmp_path):
    full = Trainer(_resume_config(tmp_path / "full")).fit()
    expected = jsonl(tmp_path / "full" / "metrics.jsonl")

    def stop_at_5(step, record):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="step 5"):
        Trainer(_resume_config(tmp_path / "cut"), callbacks=[stop_at_5]).fit()
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000005"
    assert not list((tmp_path / "cut" / "checkpoints").glob(".*"))  # no temp folders left
    resumed = Trainer(_resume_config(tmp_path / "cut"), resume=True)
    assert resumed.step == 5
    resumed.fit()
    got = jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(got, expected):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    assert [v["step"] for v in jsonl(tmp_path / "cut" / "validation.jsonl")] == [0, 4, 8]
    # CPU hours go on from the first session's (learning curves against compute)
    hours = [r["cpu_hours"] for r in got]
    assert all(b > a for a, b in zip(hours, hours[1:])) and hours[0] > 0
    a, b = load_file(full / "model.safetensors"), load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_resume_from_a_copied_checkpoint_matches(tmp_path):
    """A run killed hard after step 3 (only its checkpoint survives) resumes identically."""
    Trainer(_resume_config(tmp_path / "full")).fit()
    expected = jsonl(tmp_path / "full" / "metrics.jsonl")
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    src = tmp_path / "full" / "checkpoints"
    import shutil

    shutil.copytree(src / "step_00000006", cut / "checkpoints" / "step_00000006")
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in expected[:6]))
    Trainer(_resume_config(cut), resume=True).fit()
    got = jsonl(cut / "metrics.jsonl")
    assert [r["loss"] for r in got[6:]] == pytest.approx([r["loss"] for r in expected[6:]], rel=1e-5, abs=1e-6)


def test_existing_run_needs_resume(tmp_path):
    Trainer(config(tmp_path / "r", steps=1)).fit()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config(tmp_path / "r", steps=1))


# --------------------------------------------------------------------------- failures


class _NaNAfter(ShapesPairs):
    """Shapes pairs whose moving image turns NaN from the ``after``-th read on."""

    def __init__(self, after: int, **kwargs):
        super().__init__(**kwargs)
        self.after, self.reads = after, 0

    def __getitem__(self, key):
        self.reads += 1
        item = super().__getitem__(key)
        if self.reads > self.after:
            item["moving"] = torch.full_like(item["moving"], float("nan"))
        return item


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path / "run", steps=10, run={"ckpt_every": 2})
    data = _NaNAfter(after=6, size=(32, 32), num_labels=4)  # batch 2: steps 1-3 fine, step 4 NaN
    trainer = Trainer(cfg, train_data=data, val_data=None)
    with pytest.raises(TrainingError, match=r"nan at step 4.*step_00000002"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"
    assert [r["step"] for r in jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert not (tmp_path / "run" / "final").exists()


def _poison_gradient_at(trainer: Trainer, step: int) -> str:
    """Make one parameter's gradient infinite during optimiser step ``step`` (the loss stays finite)."""
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if n.startswith("decoder."))
    param.register_hook(lambda g: g * float("inf") if trainer.step + 1 == step else g)
    return name


def test_non_finite_gradients_stop_the_run(tmp_path):
    trainer = Trainer(config(tmp_path / "run", steps=6, run={"ckpt_every": 2}))
    name = _poison_gradient_at(trainer, 3)
    with pytest.raises(TrainingError, match=rf"non-finite gradients \({name}\) at step 3.*step_00000002"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # never applied


def test_fp16_grad_scaler_skips_a_step_with_infinite_gradients(tmp_path):
    trainer = Trainer(config(tmp_path / "run", steps=4, run={"precision": "16-mixed"}))
    _poison_gradient_at(trainer, 2)
    snapshots = []
    trainer.callbacks.append(lambda step, record: snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()}))
    trainer.fit()
    records = jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records[1]["loss_scale"] == records[0]["loss_scale"] / 2  # the scaler backed off
    assert all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])  # step 2 skipped
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1])  # step 3 applied


# --------------------------------------------------------------------------- precision, schedules


def test_precision_selection():
    assert amp_settings("32", "cpu") == AmpSettings(None, False)
    assert amp_settings("bf16-mixed", "cpu") == AmpSettings(torch.bfloat16, False)
    assert amp_settings("16-mixed", "cpu") == AmpSettings(torch.float16, True)
    assert amp_settings("16-mixed", "cuda") == AmpSettings(torch.float16, True)
    with pytest.raises(ConfigError, match="precision"):
        config(Path("x"), run={"precision": "fp8"})


def test_bf16_mixed_trains_on_cpu(tmp_path):
    trainer = Trainer(config(tmp_path / "run", steps=3, run={"precision": "bf16-mixed"}))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = []

    def watch_autocast(module, inputs, output):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    trainer.model.encoder.register_forward_hook(watch_autocast)
    trainer.fit()
    assert seen and all(seen[:3])
    losses = [r["loss"] for r in jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_fp16_mixed_uses_a_grad_scaler(tmp_path):
    trainer = Trainer(config(tmp_path / "run", steps=2, run={"precision": "16-mixed"}))
    assert trainer.scaler.is_enabled()
    trainer.fit()
    records = jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all("loss_scale" in r for r in records)
    state = torch.load(latest_checkpoint(tmp_path / "run") / "training_state.pt", weights_only=True)
    assert state["scaler"]["scale"] == records[-1]["loss_scale"]
    assert not Trainer(config(tmp_path / "r32", steps=1)).scaler.is_enabled()


@pytest.mark.parametrize("schedule", ["constant", "poly", "cosine"])
def test_lr_schedules(schedule):
    total, warmup, power, floor = 20, 4, 0.9, 0.1
    got = [lr_factor(s, total, schedule, warmup, floor, power) for s in range(total)]
    assert got[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    for s in range(warmup, total):
        p = (s - warmup) / (total - warmup)
        shape = {"constant": None, "poly": (1 - p) ** power, "cosine": 0.5 * (1 + math.cos(math.pi * p))}[schedule]
        assert got[s] == pytest.approx(1.0 if shape is None else floor + (1 - floor) * shape)


def test_grad_checkpointing_gives_the_same_losses(tmp_path, monkeypatch):
    import transreg.models.layers.checkpointing as checkpointing

    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(checkpointing, "checkpoint", counting_checkpoint)
    allocator_policy = []
    monkeypatch.setattr(training, "return_freed_memory", lambda: allocator_policy.append(1))
    Trainer(config(tmp_path / "a", steps=2)).fit()
    assert not calls and not allocator_policy
    Trainer(config(tmp_path / "b", steps=2, model={"grad_checkpointing": True})).fit()
    assert calls  # the encoder and decoder recomputed their blocks in backward
    assert allocator_policy  # memory-lean training on CPU returns freed blocks to the kernel
    la = [r["loss"] for r in jsonl(tmp_path / "a" / "metrics.jsonl")]
    lb = [r["loss"] for r in jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert la == pytest.approx(lb, rel=1e-5)


# --------------------------------------------------------------------------- DDP


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from safetensors.torch import save_file
    from transreg.training.config import TrainConfig
    from transreg.training import Trainer
    torch.set_num_threads(1)
    out = sys.argv[1]
    cfg = TrainConfig.from_dict({
        "model": {"name": "transmorph_tiny", "args": {"embed_dim": 6, "depths": [1, 1, 1, 1]}},
        "data": {"train": "synthetic:shapes", "size": [32, 32], "batch_size": 1, "val_pairs": 1},
        "optim": {"lr": 1e-3, "accumulate": 2},
        "run": {"steps": 3, "out": out, "ckpt_every": 2, "device": "cpu"}})
    trainer = Trainer(cfg)
    rank, world = trainer.dist.rank, trainer.dist.world
    trainer.fit()
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, f"{out}/rank{rank}_of_{world}.safetensors")
    """
)


def test_torchrun_two_processes_gloo_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(out / "rank0_of_2.safetensors"), load_file(out / "rank1_of_2.safetensors")
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    init = transreg.create_model("transmorph_tiny", ndim=2, embed_dim=6, depths=[1, 1, 1, 1]).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in init if k in w0)  # it did train
    records = jsonl(out / "metrics.jsonl")  # rank 0 logs alone: one record per step
    assert [r["step"] for r in records] == [1, 2, 3]
    final = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(final[k], w0[k]) for k in w0)


# --------------------------------------------------------------------------- CLI, fine-tuning


def _write_nifti_pairs(folder: Path, n: int, size=(32, 32), labels: bool = True) -> None:
    (folder / "images").mkdir(parents=True)
    if labels:
        (folder / "labels").mkdir()
    data = ShapesPairs(size, num_labels=4, seed=7, shared_contrast=True)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(n):
        item = data[i]
        nib.save(nib.Nifti1Image(item["fixed"][0].numpy(), affine), folder / "images" / f"s{i}.nii.gz")
        if labels:
            lab = item["fixed_labels"][0].numpy().astype(np.int16)
            nib.save(nib.Nifti1Image(lab, affine), folder / "labels" / f"s{i}.nii.gz")


def test_cli_train_then_finetune_on_nifti_pairs(tmp_path, capsys):
    run = tmp_path / "pre"
    assert cli_main(["train", *TINY_FLAGS, "--data", "synthetic:shapes", "--size", "32", "32", "--steps", "2",
                     "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "steps/s" in err and "ETA" in err and "loss" in err and "lr" in err
    saved = TrainConfig.from_dict(__import__("yaml").safe_load((run / "config.yaml").read_text()))
    assert saved.run.steps == 2 and saved.data.size == [32, 32] and saved.model.args["embed_dim"] == 6

    data = tmp_path / "nifti"
    _write_nifti_pairs(data, 5)
    out = tmp_path / "ft"
    code = cli_main(["finetune", "--from", str(run / "final"), "--data", str(data), "-o", str(out),
                     "--freeze-encoder", "--steps", "3", "--set", "data.val_split=0.4", "--set", "run.val_every=3"])
    assert code == 0, capsys.readouterr().err
    cfg = TrainConfig.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert cfg.optim.lr == pytest.approx(1e-5) and cfg.model.freeze_encoder and cfg.data.size == [32, 32]
    val = jsonl(out / "validation.jsonl")
    assert [v["step"] for v in val] == [0, 3] and 0.0 < val[0]["val_dice"] <= 1.0
    before, after = load_file(run / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    enc = [k for k in before if k.startswith("encoder.")]
    dec = [k for k in before if not k.startswith("encoder.")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)  # frozen
    assert any(not torch.equal(before[k], after[k]) for k in dec)  # trained
    model = transreg.create_model(f"local-dir:{out / 'final'}", pretrained=True)
    assert model.preprocessing["size"] == [32, 32]


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda d: d.mkdir(), [], "no NIfTI images"),
        (lambda d: (d.mkdir(), (d / "a.nii.gz").write_bytes(b"not a nifti"), (d / "b.nii.gz").write_bytes(b"x")),
         [], "not a readable NIfTI"),
        ("mismatch", [], "does not match its image"),
        (lambda d: _write_nifti_pairs(d, 3), ["--set", "model.bogus=1"], "unknown config key"),
        (lambda d: _write_nifti_pairs(d, 3), ["--set", "model.args={embed_dm: 6}"], "do not fit 'transmorph_tiny'"),
        (lambda d: _write_nifti_pairs(d, 3), ["--set", "model.args={embed_dim: 6, depths: [1, 1, 1, 1], ndim: 3}"],
         "is 3-D but the training data is 2-D"),
    ],
    ids=["empty", "unreadable", "label-mismatch", "unknown-key", "bad-model-args", "ndim"],
)
def test_bad_input_fails_before_training(tmp_path, capsys, make, extra, message):
    data = tmp_path / "data"
    if make == "mismatch":
        _write_nifti_pairs(data, 3)
        nib.save(nib.Nifti1Image(np.zeros((30, 32), np.int16), np.eye(4)), data / "labels" / "s1.nii.gz")
    else:
        make(data)
    out = tmp_path / "run"
    args = ["train", *TINY_FLAGS, "--data", str(data), "--steps", "2", "--out", str(out), *extra]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_resume_reuses_the_saved_config(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", *TINY_FLAGS, "--data", "synthetic:shapes", "--size", "32", "32", "--out", str(run)]
    assert cli_main([*base, "--steps", "2", "--set", "run.ckpt_every=1"]) == 0
    assert cli_main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert [r["step"] for r in jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert cli_main([*base, "--steps", "2"]) == 2  # an existing run is never overwritten
    assert "--resume" in capsys.readouterr().err


RECIPES = sorted((Path(__file__).parent.parent / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    assert cfg.optim.lr > 0 and cfg.run.steps > 0


def test_shapes_recipe_runs(tmp_path):
    recipe = Path(__file__).parent.parent / "train" / "configs" / "transmorph_tiny_shapes2d.yaml"
    assert cli_main(["train", str(recipe), "--steps", "2", "--size", "32", "32", "--out", str(tmp_path / "r")]) == 0
    cfg = load_config(tmp_path / "r" / "config.yaml")
    assert cfg.optim.schedule == "cosine" and cfg.run.steps == 2 and cfg.data.size == [32, 32]


def test_cascade_passes_wraps_the_pretrained_network_and_trains_it(tmp_path):
    """model.cascade_passes: the pretrained network applied twice; the run's checkpoint is
    a recursive_cascade whose shared base started from the pretrained weights."""
    Trainer(config(tmp_path / "pre", steps=2)).fit()
    pretrained = load_file(tmp_path / "pre" / "final" / "model.safetensors")
    cfg = config(tmp_path / "cascade", steps=3, model={"pretrained": str(tmp_path / "pre" / "final"),
                                                        "cascade_passes": 2, "freeze_encoder": True})
    trainer = Trainer(cfg)
    assert trainer.model.passes == 2 and trainer.model.architecture == "recursive_cascade"
    assert all(torch.equal(pretrained[k], v) for k, v in
               ((k.removeprefix("base."), v) for k, v in trainer.model.state_dict().items()))
    final = trainer.fit()
    trained = load_file(final / "model.safetensors")
    assert set(trained) == {f"base.{k}" for k in pretrained}
    assert all(torch.equal(trained[f"base.{k}"], pretrained[k]) for k in pretrained if k.startswith("encoder."))
    assert any(not torch.equal(trained[f"base.{k}"], pretrained[k]) for k in pretrained if not k.startswith("encoder."))
    loaded = transreg.create_model(str(final), pretrained=True)
    assert loaded.passes == 2 and loaded.init_args["base"] == "transmorph_tiny"
    with pytest.raises(ConfigError, match="cascade of 2 passes"):
        Trainer(config(tmp_path / "again", steps=1, model={"pretrained": str(final), "cascade_passes": 3}))
