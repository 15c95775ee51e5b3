"""Batch registration (`transreg register --pairs / --atlas`): same outputs as the single-pair
command, failing pairs reported, --resume after a real kill, two torchrun processes."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import transreg
from transreg.cli import main
from transreg.registration.io import save_image
from transreg.registration.result import OUTPUT_FILES

AFFINE = np.array([[2.0, 0.1, 0.0, -20.0], [-0.1, 2.0, 0.0, -24.0], [0.0, 0.0, 2.0, -18.0], [0, 0, 0, 1]])
REPO = Path(__file__).resolve().parent.parent


def _blob(seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (20, 24, 18)
    texture = ndimage.gaussian_filter(rng.random(shape), 1.5)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) - shift for n in shape], indexing="ij")
    mask = sum(a**2 for a in axes) < 0.5
    return (mask * (50 + 100 * texture)).astype(np.float32), (mask * (1 + (axes[0] > 0))).astype(np.int16)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four small image pairs with label maps, and a checkpoint folder (fixed weights)."""
    root = tmp_path_factory.mktemp("batch")
    for i in range(4):
        for role, shift in (("m", 0.15 * (i % 3)), ("f", 0.0)):
            image, labels = _blob(10 * i + (role == "f"), shift)
            save_image(root / f"{role}{i}.nii.gz", image, AFFINE)
            save_image(root / f"{role}{i}_seg.nii.gz", labels, AFFINE)
    transreg.save_pretrained(transreg.create_model("voxelmorph1", ndim=3), root / "ckpt",
                             preprocessing={"spacing": [2.0, 2.0, 2.0]})
    return root


def _pairs_csv(path: Path, data: Path, n: int, labels: bool = True) -> Path:
    """``n`` rows cycling over the four pairs, named p00, p01, ..."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["moving", "fixed", "moving_labels", "fixed_labels", "name"])
        for k in range(n):
            i = k % 4
            writer.writerow([data / f"m{i}.nii.gz", data / f"f{i}.nii.gz", data / f"m{i}_seg.nii.gz" if labels else "",
                             data / f"f{i}_seg.nii.gz" if labels else "", f"p{k:02d}"])
    return path


def _summary(out: Path) -> list[dict]:
    with (out / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def _complete(folder: Path) -> bool:
    report = json.loads((folder / "report.json").read_text())
    return all((folder / name).is_file() for name in report["outputs"])


def test_batch_outputs_equal_the_single_pair_command(data, tmp_path):
    csv_path = _pairs_csv(tmp_path / "pairs.csv", data, 3)
    out = tmp_path / "batch"
    assert main(["register", "--pairs", str(csv_path), "-o", str(out), "--model", str(data / "ckpt"),
                 "--device", "cpu", "--no-progress"]) == 0
    rows = _summary(out)
    assert [r["name"] for r in rows] == ["p00", "p01", "p02"] and {r["status"] for r in rows} == {"ok"}
    for k in range(3):
        single = tmp_path / f"single{k}"
        assert main(["register", str(data / f"m{k}.nii.gz"), str(data / f"f{k}.nii.gz"), "--moving-labels",
                     str(data / f"m{k}_seg.nii.gz"), "--fixed-labels", str(data / f"f{k}_seg.nii.gz"),
                     "-o", str(single), "--model", str(data / "ckpt"), "--device", "cpu"]) == 0
        batch = out / f"p{k:02d}"
        assert sorted(p.name for p in batch.iterdir()) == sorted(p.name for p in single.iterdir()) == sorted(OUTPUT_FILES)
        for name in OUTPUT_FILES:
            if name.endswith(".nii.gz"):
                a, b = nib.load(str(batch / name)), nib.load(str(single / name))
                assert a.header.binaryblock == b.header.binaryblock, name
                assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), name
            elif name == "report.json":
                a, b = (json.loads((folder / name).read_text()) for folder in (batch, single))
                assert a.pop("runtime_s").keys() == b.pop("runtime_s").keys()
                assert a == b
                assert rows[k]["dice"] == str(a["dice"]["mean"]) and rows[k]["folding_percent"] == str(a["folding_percent"])
            else:
                assert (batch / name).read_bytes() == (single / name).read_bytes(), name


def test_atlas_mode_reports_failing_pairs_and_goes_on(data, tmp_path, capsys):
    movings = tmp_path / "movings"
    movings.mkdir()
    for i in range(3):
        (movings / f"s{i}.nii.gz").write_bytes((data / f"m{i}.nii.gz").read_bytes())
    image, _ = _blob(5, 0.1)
    image[3, 4, 5] = np.nan
    save_image(movings / "nan.nii.gz", image, AFFINE)
    (movings / "broken.nii.gz").write_bytes(b"not a nifti file")
    (movings / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    status = main(["register", "--atlas", str(data / "f0.nii.gz"), str(movings), str(tmp_path / "missing.nii.gz"),
                   "--fixed-labels", str(data / "f0_seg.nii.gz"), "-o", str(out), "--model", str(data / "ckpt"),
                   "--no-affine", "--device", "cpu", "--no-progress"])
    assert status == 1  # some pairs failed, the others were written
    rows = {r["name"]: r for r in _summary(out)}
    assert list(rows) == ["broken", "nan", "s0", "s1", "s2", "missing"]  # folder sorted, then the file given
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {"s0", "s1", "s2"}
    assert "not a readable NIfTI" in rows["broken"]["error"]
    assert "1 NaN or infinite voxel" in rows["nan"]["error"]
    assert "file not found" in rows["missing"]["error"]
    assert all(r["fixed_labels"] == str(data / "f0_seg.nii.gz") for r in rows.values())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["s0", "s1", "s2"]
    assert all(_complete(out / name) for name in ("s0", "s1", "s2"))
    assert "[failed] nan:" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--pairs", "{tmp}/none.csv"], "pairs CSV not found"),
    (["--pairs", "{tmp}/bad.csv"], "missing column(s) fixed"),
    (["--pairs", "{tmp}/dup.csv"], "two pairs would write to the output folder 'a_to_b'"),
    (["--pairs", "{tmp}/dup.csv", "{tmp}/x.nii.gz"], "--pairs takes its images"),
    (["--atlas", "{tmp}/x.nii.gz", "{tmp}/empty"], "holds no NIfTI files"),
    (["--atlas", "{tmp}/x.nii.gz", "{tmp}/x.nii.gz", "--model", "no_such_model"], "no_such_model"),
])
def test_bad_batch_input_one_line_and_no_output(tmp_path, capsys, args, message):
    (tmp_path / "bad.csv").write_text("moving,fixd\na.nii.gz,b.nii.gz\n")
    (tmp_path / "dup.csv").write_text("moving,fixed\na.nii.gz,b.nii.gz\nx/a.nii.gz,y/b.nii.gz\n")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert main(["register", *[a.format(tmp=tmp_path) for a in args], "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("transreg register: error:") and message in err and "\n" not in err
    assert not out.exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "transreg", "register", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_resume_after_a_kill_finishes_the_rest_once(data, tmp_path):
    csv_path = _pairs_csv(tmp_path / "pairs.csv", data, 20, labels=False)
    out = tmp_path / "out"
    common = ["--pairs", str(csv_path), "-o", str(out), "--model", str(data / "ckpt"), "--no-affine",
              "--device", "cpu", "--workers", "1", "--no-progress"]
    run = subprocess.Popen(_cli(*common), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while sum((out / f"p{k:02d}").is_dir() for k in range(20)) < 10:  # kill once pair 10 is written
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    run.stderr.close()
    time.sleep(1.0)  # the writer process dies with the batch process (PR_SET_PDEATHSIG); let it go

    # no half-written folder: every pair folder is complete
    done = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert 10 <= len(done) < 20
    assert all(_complete(out / name) for name in done)
    before = {name: (out / name / "report.json").stat() for name in done}

    resumed = subprocess.run(_cli(*common, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    rows = _summary(out)
    assert [r["name"] for r in rows] == [f"p{k:02d}" for k in range(20)]
    assert {r["name"] for r in rows if r["status"] == "skipped"} == set(done)  # not registered again
    assert {r["name"] for r in rows if r["status"] == "ok"} == {f"p{k:02d}" for k in range(20)} - set(done)
    for name, stat in before.items():  # untouched: the same file, never rewritten
        now = (out / name / "report.json").stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert all(_complete(out / f"p{k:02d}") for k in range(20))
    assert not (out / ".partial").exists() or not any((out / ".partial").iterdir())


def test_torchrun_two_processes_write_each_pair_once(data, tmp_path):
    csv_path = _pairs_csv(tmp_path / "pairs.csv", data, 6)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "transreg", "register", "--pairs", str(csv_path), "-o", str(out), "--model", str(data / "ckpt"),
               "--no-affine", "--workers", "0", "--no-progress"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2: 3 pairs" in done.stdout and "rank 1/2: 3 pairs" in done.stdout
    rows = _summary(out)  # merged by rank 0: one row per pair each rank registered
    assert [r["name"] for r in rows] == [f"p{k:02d}" for k in range(6)]  # each pair once, by one rank
    assert all(r["status"] == "ok" and r["rank"] == str(k % 2) for k, r in enumerate(rows))
    assert done.stdout.count("registered 6, skipped 0, failed 0") == 1
    assert sorted(p.name for p in out.iterdir()) == [f"p{k:02d}" for k in range(6)] + ["summary.csv"]
    assert all(_complete(out / f"p{k:02d}") for k in range(6))


def test_resume_redoes_an_incomplete_folder_and_replaces_it(data, tmp_path):
    csv_path = _pairs_csv(tmp_path / "pairs.csv", data, 2, labels=False)
    out = tmp_path / "out"
    common = ["register", "--pairs", str(csv_path), "-o", str(out), "--model", str(data / "ckpt"), "--no-affine",
              "--device", "cpu", "--workers", "0", "--no-progress"]
    assert main(common) == 0
    (out / "p01" / "warped.nii.gz").unlink()  # e.g. a folder someone emptied by hand: not complete any more
    kept = (out / "p00" / "report.json").stat()
    assert main([*common, "--resume"]) == 0
    assert [(r["name"], r["status"]) for r in _summary(out)] == [("p00", "skipped"), ("p01", "ok")]
    assert (out / "p00" / "report.json").stat().st_mtime_ns == kept.st_mtime_ns
    assert _complete(out / "p01") and (out / "p01" / "warped.nii.gz").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["p00", "p01", "summary.csv"]
