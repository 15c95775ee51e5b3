"""Checkpoint folders, strict loading, and Hub publishing/loading end to end.

The Hub tests run the real ``huggingface_hub`` client against ``tests/hub_server.py`` on
127.0.0.1 (``HF_ENDPOINT``), with a temporary cache; "offline" is ``HF_HUB_OFFLINE=1``
after the server is stopped.
"""
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transreg
from transreg.zoo import registry
from transreg.zoo.factory import ensure_registered, load_checkpoint
from transreg.zoo.cards import EvalResult, read_card
from transreg.zoo.checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    ChecksumError,
    PickleCheckpointError,
    StateDictMismatchError,
    sha256_file,
)
from transreg.cli import main as cli_main
from transreg.zoo.hub import HubError, NotCachedError, VersionError
from transreg.zoo.publish import push_to_hub
from transreg.zoo.registry import PretrainedTag

from hub_server import HubServer

# huggingface_hub's legacy LFS upload passes data= to httpx2 (its own deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

TINY = dict(ndim=2, img_size=(32, 32), window_size=(1, 1))
PREP = {"modality": "T1w MRI", "spacing": [1.0, 1.0], "orientation": "RA", "size": [32, 32],
        "intensity": {"method": "minmax"}}
EVAL = EvalResult("OASIS (Learn2Reg 2021 task 3)", {"dice": 0.8, "hd95": 2.1, "folding": 0.12, "sdlogj": 0.09},
                  dataset_id="learn2reg-oasis", split="validation")


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = transreg.create_model("transmorph_tiny", **TINY)
    with torch.no_grad():  # the flow head starts at ~0: make every tensor depend on the seed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def cache_file(resolved, name="model.safetensors") -> Path:
    return Path(os.path.realpath(resolved.folder / name))


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny(0)
    folder = transreg.save_pretrained(model, tmp_path / "ck", preprocessing=PREP, card=[EVAL])
    return model, folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running test Hub; the client points at it and caches under tmp_path."""
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # the test Hub speaks LFS, not Xet
    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


def register_test_tag(monkeypatch, result, tag="test", **kw) -> PretrainedTag:
    entry = PretrainedTag(arch=result.architecture, tag=tag, hf_hub_id=result.repo_id, version=result.version,
                          revision=result.commit, sha256=kw.pop("sha256", result.sha256), **kw)
    ensure_registered()
    monkeypatch.setitem(registry._PRETRAINED, entry.name, {entry.version: entry})
    return entry


# --- the checkpoint folder --------------------------------------------------------------------

def test_save_pretrained_writes_the_documented_folder(checkpoint):
    model, folder = checkpoint
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "transmorph_tiny"
    # every constructor argument (format 2): the given ones and the defaults
    assert {k: config["model_args"][k] for k in ("ndim", "img_size", "window_size")} == {
        "ndim": 2, "img_size": [32, 32], "window_size": [1, 1]}
    assert config["model_args"]["embed_dim"] == 6 and config["model_args"]["depths"] == [2, 2, 4, 2]
    assert config["preprocessing"] == {**PREP, "spacing": [float(s) for s in PREP["spacing"]]}
    assert config["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert config["format_version"] == 2 and config["transreg_version"] == transreg.__version__
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert meta["architecture"] == "transmorph_tiny" and meta["format_version"] == "2"
        assert set(f.keys()) == set(model.state_dict())
    card = read_card(folder / "README.md")
    assert card.architecture == "transmorph_tiny" and card.evaluations == [EVAL]
    assert card.num_parameters == sum(p.numel() for p in model.parameters())
    assert card.preprocessing == PREP


def test_local_dir_roundtrip_gives_the_same_model(checkpoint):
    model, folder = checkpoint
    loaded = transreg.create_model(f"local-dir:{folder}", pretrained=True)
    assert same_weights(model, loaded) and loaded.preprocessing == PREP
    assert loaded.architecture == "transmorph_tiny" and not loaded.training
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, y).flow, loaded(x, y).flow)
    # a loaded model saves again to the same weights (preprocessing carried over)
    again = transreg.save_pretrained(loaded, folder.parent / "again")
    assert sha256_file(again / "model.safetensors") == sha256_file(folder / "model.safetensors")
    assert json.loads((again / "config.json").read_text())["preprocessing"] == PREP


def test_save_pretrained_refuses_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match="build it with transreg.create_model"):
        transreg.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(CheckpointError, match="unknown preprocessing keys.*'voxel_size'"):
        transreg.save_pretrained(tiny(0), tmp_path / "y", preprocessing={"voxel_size": 1})
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing half-written


def test_architecture_mismatch_is_one_clear_error(checkpoint):
    _, folder = checkpoint
    with pytest.raises(ArchitectureMismatchError, match="holds a 'transmorph_tiny' checkpoint, not 'transmorph'"):
        load_checkpoint(folder, expected_architecture="transmorph")
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "transmorph_small"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchitectureMismatchError, match="says 'transmorph_small'.*saved from 'transmorph_tiny'"):
        load_checkpoint(folder)


def _rewrite_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata=meta)
    config = json.loads((folder / "config.json").read_text())  # a consistent folder: the sha256 follows
    config["weights_sha256"] = sha256_file(path)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_and_unexpected_keys_are_named(checkpoint):
    _, folder = checkpoint
    key = "encoder.patch_embed.proj.bias"
    _rewrite_weights(folder, lambda s: (s.pop(key), s.__setitem__("extra.bias", torch.zeros(3))))
    with pytest.raises(StateDictMismatchError) as err:
        load_checkpoint(folder)
    assert f"missing keys: {key}" in str(err.value) and "unexpected keys: extra.bias" in str(err.value)


def test_shape_mismatch_from_overrides_is_named(checkpoint):
    _, folder = checkpoint
    with pytest.raises(StateDictMismatchError, match=r"shape mismatches: encoder.patch_embed.proj.weight \(6, 2"):
        transreg.create_model(f"local-dir:{folder}", pretrained=True, embed_dim=12)


def test_a_flipped_byte_in_the_weights_is_detected(checkpoint):
    """Format 2 records the weights' sha256 in config.json and checks it on every load."""
    _, folder = checkpoint
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # a tensor value, not the header: safetensors itself would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"recorded in .*config.json"):
        load_checkpoint(folder)


def test_pickle_where_safetensors_is_expected_is_refused_without_unpickling(checkpoint, monkeypatch):
    model, folder = checkpoint

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    torch.save(model.state_dict(), folder / "model.safetensors")
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(PickleCheckpointError, match="is a torch.save zip archive, not safetensors"):
        transreg.create_model(f"local-dir:{folder}", pretrained=True)
    (folder / "model.safetensors").write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    with pytest.raises(PickleCheckpointError, match="is a pickle, not safetensors"):
        load_checkpoint(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PickleCheckpointError, match=r"holds pickle weights \(pytorch_model.bin\)"):
        load_checkpoint(folder)


def test_newer_format_and_broken_config_are_refused(checkpoint):
    _, folder = checkpoint
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99.*upgrade transreg"):
        load_checkpoint(folder)
    del config["model_args"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lacks \['model_args'\]"):
        load_checkpoint(folder)


def test_cli_prints_a_loading_error_as_one_line(checkpoint, capsys):
    model, folder = checkpoint
    torch.save(model.state_dict(), folder / "model.safetensors")
    assert cli_main(["info", f"local-dir:{folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("transreg info: error:") and "not safetensors" in err


def test_info_on_a_local_checkpoint(checkpoint, capsys):
    model, folder = checkpoint
    assert cli_main(["info", f"local-dir:{folder}"]) == 0
    out = capsys.readouterr().out
    assert "architecture:  transmorph_tiny" in out
    assert f"parameters:    {sum(p.numel() for p in model.parameters()):,}" in out
    assert "spacing:     1 × 1 mm" in out and "size:        32 × 32 voxels" in out and "T1w MRI" in out
    assert "OASIS (Learn2Reg 2021 task 3) (validation): Dice 0.8, HD95 (mm) 2.1, folding (%) 0.12, SDlogJ 0.09" in out
    assert "version:       unversioned" in out


# --- the Hub, end to end ----------------------------------------------------------------------

def test_push_two_versions_then_load_by_tag_sha_branch_and_offline(hub, tmp_path, monkeypatch):
    m0, m1 = tiny(0), tiny(1)
    assert not same_weights(m0, m1)
    r0 = push_to_hub(transreg.save_pretrained(m0, tmp_path / "v0", card=EVAL), "org/tiny", version="v1.0.0")
    r1 = push_to_hub(transreg.save_pretrained(m1, tmp_path / "v1", card=EVAL), "org/tiny", version="v1.1.0")
    repo = hub.state.repos["org/tiny"]
    assert repo.tags == {"v1.0.0": r0.commit, "v1.1.0": r1.commit} and repo.branches["main"] == r1.commit
    # weights went through LFS (batch + upload), the small files inline in the commit
    stored = repo.commits[r1.commit]
    assert stored["model.safetensors"].lfs and not stored["config.json"].lfs and not stored["README.md"].lfs
    assert stored["model.safetensors"].sha256 == r1.sha256 == sha256_file(tmp_path / "v1" / "model.safetensors")
    assert ("POST", "/org/tiny.git/info/lfs/objects/batch") in hub.requests
    # the published card is stamped with the version and the repo
    card_on_hub = stored["README.md"].data.decode()
    assert "version: v1.1.0" in card_on_hub and "hf_hub_id: org/tiny" in card_on_hub

    for ref, model, result in (("v1.0.0", m0, r0), ("v1.1.0", m1, r1), (r0.commit, m0, r0), (r1.commit, m1, r1)):
        loaded = transreg.create_model(f"hf-hub:org/tiny@{ref}", pretrained=True)
        assert same_weights(loaded, model), ref
        assert loaded.pretrained_source.commit == result.commit
        assert loaded.pretrained_source.sha256 == result.sha256
        assert loaded.pretrained_source.verified_by == "Hub LFS sha256"
    assert same_weights(transreg.create_model("hf-hub:org/tiny", pretrained=True), m1)  # main

    hub.stop()
    # network gone but not declared offline: served from the cache
    assert same_weights(transreg.create_model("hf-hub:org/tiny@v1.0.0", pretrained=True), m0)
    with pytest.raises(NotCachedError, match=r"org/tiny@v2.0.0: the Hub \(http://127.0.0.1:\d+\) cannot be reached"):
        transreg.create_model("hf-hub:org/tiny@v2.0.0", pretrained=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_requests = len(hub.requests)
    offline = transreg.create_model("hf-hub:org/tiny@v1.0.0", pretrained=True)
    assert same_weights(offline, m0) and offline.pretrained_source.commit == r0.commit
    assert same_weights(transreg.create_model(f"hf-hub:org/tiny@{r1.commit}", pretrained=True), m1)
    with pytest.raises(NotCachedError) as err:
        transreg.create_model("hf-hub:org/tiny@v2.0.0", pretrained=True)
    msg = str(err.value)
    assert "org/tiny@v2.0.0" in msg and "offline" in msg and "not in the local cache" in msg
    assert len(hub.requests) == n_requests


def test_versions_are_validated_and_never_moved(hub, tmp_path):
    first = push_to_hub(transreg.save_pretrained(tiny(0), tmp_path / "a"), "org/fixed", "v1.0.0")
    before = len(hub.requests)
    for bad in ("1.0.0", "v1.0", "v1.0.0-rc1", "v01.0.0"):
        with pytest.raises(VersionError, match="vMAJOR.MINOR.PATCH"):
            push_to_hub(tmp_path / "a", "org/fixed", bad)
    assert len(hub.requests) == before  # refused before any request
    with pytest.raises(VersionError, match=r"already has version v1.0.0 \(commit [0-9a-f]{40}\).*e.g. v1.0.1"):
        push_to_hub(transreg.save_pretrained(tiny(1), tmp_path / "b"), "org/fixed", "v1.0.0")
    repo = hub.state.repos["org/fixed"]
    assert repo.tags == {"v1.0.0": first.commit} and repo.branches["main"] == first.commit
    with pytest.raises(HubError, match="must be ORG/NAME"):
        push_to_hub(tmp_path / "a", "no-org", "v1.0.1")
    with pytest.raises(HubError, match="has no revision 'v9.9.9'"):
        transreg.create_model("hf-hub:org/fixed@v9.9.9", pretrained=True)
    with pytest.raises(HubError, match="repo org/missing does not exist"):
        transreg.create_model("hf-hub:org/missing@v1.0.0", pretrained=True)


def test_corrupted_cache_is_detected_and_pull_force_repairs_it(hub, tmp_path, monkeypatch, capsys):
    model = tiny(0)
    result = push_to_hub(transreg.save_pretrained(model, tmp_path / "ck"), "org/tiny", "v1.0.0")
    entry = register_test_tag(monkeypatch, result)
    resolved = transreg.create_model("hf-hub:org/tiny@v1.0.0", pretrained=True).pretrained_source
    blob = cache_file(resolved)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # still a valid safetensors file: only the checksum can tell
    blob.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=f"expected {result.sha256} \\(published by the Hub for org/tiny@v1.0.0\\)"):
        transreg.create_model("hf-hub:org/tiny@v1.0.0", pretrained=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and on every load from the cache, offline too
    with pytest.raises(ChecksumError, match=f"pinned by registry tag {entry.name}"):
        transreg.create_model(entry.name, pretrained=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert cli_main(["pull", entry.name, "--force"]) == 0
    assert f"sha256 {result.sha256} (verified: registry tag {entry.name})" in capsys.readouterr().out
    assert same_weights(transreg.create_model(entry.name, pretrained=True), model)


def test_registry_tag_pins_revision_and_sha256(hub, tmp_path, monkeypatch, capsys):
    model = tiny(0)
    r0 = push_to_hub(transreg.save_pretrained(model, tmp_path / "a", preprocessing=PREP, card=EVAL),
                     "org/tiny", "v1.0.0")
    push_to_hub(transreg.save_pretrained(tiny(1), tmp_path / "b"), "org/tiny", "v1.1.0")  # main moves on
    entry = register_test_tag(monkeypatch, r0)
    assert transreg.list_models("transmorph_tiny.*", pretrained=True) == [entry.name]
    loaded = transreg.create_model(entry.name, pretrained=True)
    assert same_weights(loaded, model) and loaded.pretrained_source.commit == r0.commit
    assert loaded.pretrained_source.verified_by == f"registry tag {entry.name}"
    # without pretrained=True the tag gives the bare architecture
    assert not same_weights(transreg.create_model(entry.name, **TINY), model)

    assert cli_main(["info", entry.name]) == 0
    out = capsys.readouterr().out
    assert "architecture:  transmorph_tiny" in out and f"version:       v1.0.0 (commit {r0.commit})" in out
    assert f"parameters:    {sum(p.numel() for p in model.parameters()):,}" in out
    assert "Dice 0.8" in out and "SDlogJ 0.09" in out and "T1w MRI" in out and "32 × 32 voxels" in out
    assert cli_main(["list", "--pretrained"]) == 0
    listed = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed[entry.name] == ["v1.0.0", "hf-hub:org/tiny@v1.0.0", f"({r0.commit[:12]})"]

    bad = register_test_tag(monkeypatch, r0, tag="badpin", sha256="1" * 64)
    with pytest.raises(ChecksumError, match=f"expected 1{{64}} \\(pinned by registry tag {bad.name}\\)"):
        transreg.create_model(bad.name, pretrained=True)


def test_bundled_copy_is_used_before_any_download(tmp_path, monkeypatch, checkpoint):
    model, folder = checkpoint
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any download would fail
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    fake = type("R", (), dict(architecture="transmorph_tiny", repo_id="org/tiny", version="v1.0.0",
                              commit="a" * 40, sha256=sha256_file(folder / "model.safetensors")))
    entry = register_test_tag(monkeypatch, fake, tag="bundled", local_path=str(folder))
    loaded = transreg.create_model(entry.name, pretrained=True)
    assert same_weights(loaded, model) and loaded.pretrained_source.folder == folder
    bad = register_test_tag(monkeypatch, fake, tag="bundledbad", local_path=str(folder), sha256="2" * 64)
    with pytest.raises(ChecksumError, match=f"pinned by registry tag {bad.name}"):
        transreg.create_model(bad.name, pretrained=True)


def test_cli_push_pull_info(hub, checkpoint, tmp_path, capsys):
    model, folder = checkpoint
    args = ["push", str(folder), "--repo-id", "org/cli", "--version", "v1.1.0", "--tag", "transmorph_tiny.demo"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    commit = hub.state.repos["org/cli"].tags["v1.1.0"]
    sha = sha256_file(folder / "model.safetensors")
    assert f"as v1.1.0 (commit {commit})" in out
    assert (f"PretrainedTag(arch='transmorph_tiny', tag='demo', hf_hub_id='org/cli', version='v1.1.0', "
            f"revision='{commit}', sha256='{sha}')") in out

    assert cli_main(args) == 2  # the version exists: refused, one line
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already has version v1.1.0" in err

    out_dir = tmp_path / "pulled"
    assert cli_main(["pull", "hf-hub:org/cli@v1.1.0", "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"commit {commit}" in out and f"sha256 {sha} (verified: Hub LFS sha256)" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not (out_dir / "model.safetensors").is_symlink()
    assert same_weights(transreg.create_model(f"local-dir:{out_dir}", pretrained=True), model)

    assert cli_main(["info", f"local-dir:{out_dir}"]) == 0
    out = capsys.readouterr().out
    assert "version:       v1.1.0" in out and "architecture:  transmorph_tiny" in out and "Dice 0.8" in out
    assert cli_main(["info", "hf-hub:org/cli@v1.1.0"]) == 0
    assert f"version:       v1.1.0 (commit {commit})" in capsys.readouterr().out
