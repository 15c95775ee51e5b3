"""Training as a new user meets it: leftovers of a killed run, the thread default, the draft card."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transreg.cli import main
from transreg.training import Trainer, threads
from transreg.training.config import ConfigError, TrainConfig
from transreg.training.state import latest_checkpoint
from transreg.zoo.cards import public_source, read_card

TINY = {"name": "transmorph_tiny", "args": {"embed_dim": 6, "depths": [1, 1, 1, 1]}}
TINY_FLAGS = ["--model", "transmorph_tiny", "--set", "model.args={embed_dim: 6, depths: [1, 1, 1, 1]}"]


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def config(out: Path, steps: int = 2, **run) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": dict(TINY), "data": {"train": "synthetic:shapes", "size": [32, 32], "batch_size": 2, "val_pairs": 2},
        "optim": {"lr": 1e-3}, "run": {"steps": steps, "out": str(out), "threads": 1, **run}})


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # exited and reaped: no process has this id now


def test_resume_removes_the_temporary_folders_of_a_killed_run(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(config(run, steps=2, ckpt_every=1)).fit()
    ckpts = run / "checkpoints"
    pid = dead_pid()
    stale = [ckpts / f".step_00000003.tmp{pid}", run / f".final.tmp{pid}"]
    for folder in stale:  # what a run killed while writing a checkpoint leaves
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    alive = ckpts / f".step_00000004.tmp{os.getppid()}"  # another process is still writing this one
    alive.mkdir()
    capsys.readouterr()
    resumed = Trainer(config(run, steps=3, ckpt_every=1), resume=True)
    assert resumed.step == 2 and latest_checkpoint(run).name == "step_00000002"
    assert not any(p.exists() for p in stale) and alive.is_dir()
    err = capsys.readouterr().err
    assert all(f"removed {p}" in err for p in stale)


def test_thread_default_follows_the_idle_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    for load, expected in ((0.2, 8), (2.6, 5), (7.9, 1), (30.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.choose_threads(0) == expected, load
    assert threads.choose_threads(3) == 3  # as given, whatever the load
    with pytest.raises(ConfigError, match="run.threads must be >= 0"):
        TrainConfig.from_dict({"run": {"threads": -1}})


def test_threads_flag_sets_the_training_threads(tmp_path, capsys):
    torch.set_num_threads(2)
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--data", "synthetic:shapes", "--size", "32", "32", "--steps", "1",
                 "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == 1
    assert "threads: 1" in (out / "config.yaml").read_text()


def test_public_source_keeps_no_absolute_path():
    assert public_source("/home/alice/scans/brains") == "brains"
    assert public_source("synthetic:labels:/home/alice/labels") == "synthetic:labels:labels"
    assert public_source("local-dir:/home/alice/runs/pre") == "local-dir:pre"
    for kept in ("synthetic:shapes", "hf-hub:org/name@v1.0.0", "transmorph_micro.synth_brain", "data/pairs.csv"):
        assert public_source(kept) == kept


def test_finetune_draft_card_has_no_absolute_path_and_names_the_recipe(tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["train", *TINY_FLAGS, "--data", "synthetic:shapes", "--size", "32", "32", "--steps", "1",
                 "--threads", "1", "--out", str(pre)]) == 0
    recipe = tmp_path / "recipes" / "my_recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("data:\n  train: synthetic:shapes\n  size: [32, 32]\n  val_pairs: 2\n"
                      "run:\n  steps: 2\n  val_every: 2\n  threads: 1\n")
    out = tmp_path / "ft"
    assert main(["finetune", "--from", str(pre / "final"), "--recipe", str(recipe), "-o", str(out)]) == 0
    text = (out / "final" / "README.md").read_text()
    assert str(tmp_path) not in text  # no user's folder in what a push would publish
    card = read_card(out / "final" / "README.md")
    assert card.recipe == "my_recipe.yaml"
    assert card.evaluations and all(str(tmp_path) not in ev.dataset for ev in card.evaluations)
    capsys.readouterr()
    assert main(["info", f"local-dir:{out / 'final'}"]) == 0
    assert "recipe:        my_recipe.yaml" in capsys.readouterr().out
