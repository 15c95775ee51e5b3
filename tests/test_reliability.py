"""What a new user runs into: each case is one clear line, a non-zero exit, and no partial output.

Label maps on another grid, all-zero images, interruption (Ctrl-C / SIGTERM) of register,
evaluate and compare, reruns into the same output folder, an unwritable output folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from transreg.cli import main
from transreg.registration.io import save_image

from test_evaluation import pairs_csv  # noqa: F401  (a pairs CSV of tiny volumes)
from test_register import blob_image

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "voxelmorph1", "--device", "cpu", "--no-affine"]


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture
def pair(tmp_path) -> dict[str, Path]:
    image, labels = blob_image((20, 20, 20))
    paths = {}
    for name, data in (("moving", image), ("fixed", image[::-1].copy()), ("moving_labels", labels),
                       ("fixed_labels", labels[::-1].copy())):
        paths[name] = tmp_path / f"{name}.nii.gz"
        save_image(paths[name], data, np.diag([1.5, 1.5, 1.5, 1.0]))
    return paths


def args_for(pair, out, labels=True) -> list[str]:
    extra = ["--moving-labels", str(pair["moving_labels"]), "--fixed-labels", str(pair["fixed_labels"])] if labels else []
    return ["register", str(pair["moving"]), str(pair["fixed"]), "-o", str(out), *FAST, *extra]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".transreg")) if folder.exists() else []


def test_label_map_on_a_shifted_grid_is_refused(pair, tmp_path, capsys):
    image, labels = blob_image((20, 20, 20))
    shifted = np.diag([1.5, 1.5, 1.5, 1.0])
    shifted[0, 3] = 3.0  # same shape, grid moved by two voxels
    save_image(tmp_path / "shifted_labels.nii.gz", labels, shifted)
    out = tmp_path / "out"
    for role in ("moving", "fixed"):
        args = args_for(pair, out)
        args[args.index(str(pair[f"{role}_labels"]))] = str(tmp_path / "shifted_labels.nii.gz")
        assert main(args) == 2
        err = one_line(capsys.readouterr().err)
        assert f"{role} labels" in err and "another affine" in err and "up to 3 mm" in err
        assert not out.exists()


@pytest.mark.parametrize("role", ["moving", "fixed"])
@pytest.mark.parametrize("affine", [True, False])
def test_all_zero_image_names_the_image(pair, tmp_path, capsys, role, affine):
    save_image(pair[role], np.zeros((20, 20, 20), np.float32), np.diag([1.5, 1.5, 1.5, 1.0]))
    args = args_for(pair, tmp_path / "out")
    if affine:
        args.remove("--no-affine")
    assert main(args) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{role} image {pair[role]} has one value everywhere (0)" in err
    assert not (tmp_path / "out").exists()


def test_rerun_replaces_the_whole_set_of_outputs(pair, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("mine")  # not an output: kept
    assert main(args_for(pair, out)) == 0
    assert (out / "warped_labels.nii.gz").is_file()
    assert main(args_for(pair, out, labels=False)) == 0
    report = json.loads((out / "report.json").read_text())
    assert not (out / "warped_labels.nii.gz").exists() and "dice" not in report
    assert sorted(p.name for p in out.iterdir()) == sorted({*report["outputs"], "report.json", "notes.txt"})
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's read-only /sys")
def test_unwritable_output_folder_is_reported_before_any_work(pair, capsys):
    # /sys passes permission checks for root but refuses new folders: only a real write can tell
    assert main(args_for(pair, Path("/sys/transreg-out"))) == 2
    captured = capsys.readouterr()
    assert "cannot create output folder /sys/transreg-out" in one_line(captured.err)
    assert "[load]" not in captured.out  # nothing was registered first


def test_ctrl_c_while_writing_leaves_the_previous_outputs(pair, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(args_for(pair, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transreg.registration.overlay.save_overlay", interrupted)
    capsys.readouterr()
    assert main(args_for(pair, out, labels=False)) == 130
    assert one_line(capsys.readouterr().err) == "transreg register: interrupted"
    assert leftovers(out) == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(args_for(pair, tmp_path / "new")) == 130  # a folder made for this run is removed again
    assert not (tmp_path / "new").exists()


SIGTERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    import transreg.registration.overlay as overlay, transreg.evaluation.report as report
    from transreg.cli import main
    def killed(*args, **kwargs):  # SIGTERM arrives while the outputs are being written
        open({marker!r}, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    overlay.save_overlay = report.plot_dice_boxplot = killed
    sys.exit(main(sys.argv[1:]))
""")


def run_until_sigterm(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    marker = tmp_path / "writing"
    script = SIGTERM_SCRIPT.format(tests=str(REPO / "tests"), marker=str(marker))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert marker.exists(), done.stderr  # the signal came during the write stage
    return done


def test_sigterm_during_register_is_one_line_exit_130_and_no_temporary_folder(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = run_until_sigterm(tmp_path, args_for(pair, out))
    assert done.returncode == 130
    assert one_line(done.stderr) == "transreg register: stopped by SIGTERM"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_sigterm_during_evaluate_and_compare(pairs_csv, tmp_path, command):  # noqa: F811
    out = tmp_path / "results"
    models = ["--model", "identity"] if command == "evaluate" else ["--models", "identity", "--no-baselines"]
    done = run_until_sigterm(tmp_path, [command, *models, "--data", str(pairs_csv), "-o", str(out),
                                        "--device", "cpu", "--no-progress", "--no-warmup"])
    assert done.returncode == 130
    assert one_line(done.stderr) == f"transreg {command}: stopped by SIGTERM"
    assert not out.exists()


def test_evaluate_summary_is_titled_evaluate(pairs_csv, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "results"
    assert main(["evaluate", "--model", "identity", "--data", str(pairs_csv), "-o", str(out), "--device", "cpu",
                 "--no-progress", "--no-warmup"]) == 0
    assert (out / "summary.md").read_text().splitlines()[0] == f"# transreg evaluate — {pairs_csv.name}"


@pytest.mark.parametrize("script", ["build_data.py", "make_sample_pair.py"])
def test_data_scripts_without_the_shared_data_say_so_in_one_line(tmp_path, script):
    before = sorted(p.name for p in (REPO / "transreg/assets/sample").iterdir())
    done = subprocess.run([sys.executable, str(REPO / "evaluate" / script), "--data", str(tmp_path / "no_shared"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    err = one_line(done.stderr)
    assert str(tmp_path / "no_shared") in err and "does not exist" in err and "--data" in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (REPO / "transreg/assets/sample").iterdir()) == before


def test_help_texts_show_no_markup(capsys):
    for command in ("finetune", "train", "release"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text and ":data:" not in text and ":func:" not in text, command
