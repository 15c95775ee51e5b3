"""The zoo index, resolution by name and version, ``transreg release`` and the whole publish →
download → register → offline → tamper flow against the loopback Hub (tests/hub_server.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard as HubModelCard

import transreg
from transreg.cli import main
from transreg.registration.io import save_image
from transreg.zoo import index as zoo_index
from transreg.zoo import registry
from transreg.zoo.cards import EvalResult, check_hub_metadata, read_card
from transreg.zoo.checkpoint import sha256_file
from transreg.zoo.index import ZooIndexError, load_index, write_index
from transreg.zoo.registry import PretrainedTag
from transreg.zoo.release import PACKAGE_DIR, SOURCE_ROOT, ReleaseError, plan_release
from transreg.zoo.sources import DeprecatedNameWarning

from test_hub import hub  # noqa: F401  (the loopback Hub fixture)
from test_register import blob_image

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

TINY3 = dict(ndim=3, img_size=(32, 32, 32), window_size=(1, 1, 1))
PREP = {"modality": "T1w MRI", "spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "size": [32, 32, 32],
        "intensity": {"method": "minmax"}}
EVAL = EvalResult("blobs (test)", {"dice": 0.5, "hd95": 3.0, "folding": 0.1, "sdlogj": 0.05}, dataset_id="blobs")
RECIPE = "train/configs/zoo_v1.yaml"


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def tiny_folder(folder: Path, seed: int, version: str) -> Path:
    """A small 3-D checkpoint with a card stamped as ``transmorph_tiny.blobs@version``."""
    torch.manual_seed(seed)
    model = transreg.create_model("transmorph_tiny", **TINY3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    card = transreg.zoo.cards.card_from_config({"architecture": "transmorph_tiny", "preprocessing": PREP}, [EVAL],
                                               name="transmorph_tiny.blobs", version=version,
                                               hf_hub_id="org/tiny-blobs", recipe=RECIPE)
    return transreg.save_pretrained(model, folder, preprocessing=PREP, card=card)


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A source tree in tmp_path: the packaged zoo index plus two versions of an unshipped
    ``transmorph_tiny.blobs`` (release folders), the recipe, and a registry holding only it."""
    root = tmp_path / "src"
    (root / "train/configs").mkdir(parents=True)
    data = json.loads(zoo_index.PACKAGED_INDEX.read_text())
    for recipe in {RECIPE, *(e["recipe"] for e in data["entries"] if e.get("recipe"))}:
        shutil.copyfile(SOURCE_ROOT / recipe, root / recipe)
    for seed, version in ((0, "v1.0.0"), (1, "v1.1.0")):
        tiny_folder(root / "releases" / version, seed, version)
    data["entries"] += [{"name": "transmorph_tiny.blobs", "version": v, "hf_hub_id": "org/tiny-blobs",
                         "commit": None, "sha256": sha256_file(root / "releases" / v / "model.safetensors"),
                         "folder": f"releases/{v}", "recipe": RECIPE} for v in ("v1.0.0", "v1.1.0")]
    path = tmp_path / "index.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("TRANSREG_ZOO_INDEX", str(path))
    use_index(monkeypatch, path)
    return root, path


def use_index(monkeypatch, path: Path) -> zoo_index.ZooIndex:
    """Make the registry hold exactly the entries and aliases of the index file ``path``."""
    monkeypatch.setattr(registry, "_PRETRAINED", {})
    monkeypatch.setattr(registry, "_ALIASES", {})
    index = load_index(path)
    index.register()
    monkeypatch.setattr(zoo_index, "INDEX", index)
    return index


def blob_pair(folder: Path) -> list[str]:
    folder.mkdir(exist_ok=True)
    moving, _ = blob_image((40, 40, 40), seed=0)
    fixed, _ = blob_image((40, 40, 40), seed=1, shift=(0.1, 0, 0))
    save_image(folder / "moving.nii.gz", moving, np.eye(4))
    save_image(folder / "fixed.nii.gz", fixed, np.eye(4))
    return [str(folder / "moving.nii.gz"), str(folder / "fixed.nii.gz")]


# --- the packaged index --------------------------------------------------------------------------

def test_packaged_index_matches_the_shipped_checkpoints_and_their_cards():
    index = load_index(zoo_index.PACKAGED_INDEX)
    assert index.default == zoo_index.DEFAULT_CHECKPOINT and index.default in {e.name for e in index.entries}
    for entry in index.entries:
        # shipped in the package, or an older version waiting in its release folder for `transreg release`
        folder = PACKAGE_DIR / entry.local_path if entry.local_path else SOURCE_ROOT / entry.extra["folder"]
        weights = folder / "model.safetensors"
        assert sha256_file(weights) == entry.sha256 and weights.stat().st_size == entry.extra["size"]
        source = entry.versioned_name if entry.local_path else f"local-dir:{folder}"
        model = transreg.create_model(source, pretrained=True)
        assert entry.extra["parameters"] == sum(p.numel() for p in model.parameters())
        text = (folder / "README.md").read_text()
        check_hub_metadata(text, require_metrics=True)  # huggingface_hub's model-card validation
        hub_card = HubModelCard(text).data  # the index's metrics are the card's, read by huggingface_hub
        from_card = {(r.dataset_name, r.metric_type): r.metric_value for r in hub_card.eval_results}
        from_index = {(ev["dataset"], k): v for ev in entry.extra["evaluations"] for k, v in ev["metrics"].items()}
        assert from_index == from_card
        assert (SOURCE_ROOT / entry.extra["recipe"]).is_file()
    assert plan_release(index)  # every entry is releasable as it stands


def test_list_pretrained_shows_version_parameters_dice_size_and_source(capsys):
    assert main(["list", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "version", "parameters", "Dice", "size", "from"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.split()[0] in registry.list_pretrained()}
    for entry in zoo_index.PRETRAINED:
        row = rows[entry.name]
        dice = entry.extra["evaluations"][0]["metrics"]["dice"]
        assert row[1:7] == [entry.version, f"{entry.extra['parameters']:,}", f"{dice:.3f}",
                            f"{entry.extra['size'] / 1e6:.1f}", "MB", "package"], row


def test_broken_index_files_are_one_clear_error(tmp_path):
    good = json.loads(zoo_index.PACKAGED_INDEX.read_text())
    cases = {
        "twice": {**good, "entries": good["entries"] + good["entries"][:1]},
        "alias": {**good, "aliases": {"old.tag": {"target": "nothing.here"}}},
        "default": {**good, "default": "voxelmorph2.other"},
        "sha": {**good, "entries": [{**good["entries"][0], "sha256": "xyz"}]},
    }
    expected = {"twice": "listed twice", "alias": "alias 'old.tag'", "default": "default 'voxelmorph2.other'",
                "sha": "sha256 'xyz' is not a 64-hex sha256"}
    for case, data in cases.items():
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ZooIndexError, match=expected[case]):
            load_index(path)


# --- release ------------------------------------------------------------------------------------

def test_release_dry_run_lists_and_changes_nothing(hub, zoo, capsys):
    root, path = zoo
    before = path.read_bytes()
    assert main(["release", "--dry-run", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    n = len(json.loads(path.read_text())["entries"])  # the packaged entries + the two test versions
    assert out.count("[dry run]") == n and f"{n} of {n} entries would be pushed" in out
    assert "transmorph_tiny.blobs@v1.1.0: push to org/tiny-blobs, tag v1.1.0" in out and "recipe.yaml" in out
    assert path.read_bytes() == before and hub.state.repos == {} and hub.requests == []


def test_release_then_register_by_version_offline_and_tampered(hub, zoo, tmp_path, monkeypatch, capsys):
    root, path = zoo
    n = len(json.loads(path.read_text())["entries"])
    assert main(["release", "--root", str(root)]) == 0
    assert f"released {n} of {n} entries" in capsys.readouterr().out
    index = load_index(path)
    for entry in index.entries:  # the index records what the Hub holds
        repo = hub.state.repos[entry.hf_hub_id]
        assert repo.tags[entry.version] == entry.revision
        files = repo.commits[entry.revision]
        assert set(files) >= {"config.json", "model.safetensors", "README.md", "recipe.yaml"}
        assert files["model.safetensors"].sha256 == entry.sha256
        assert files["recipe.yaml"].data == (SOURCE_ROOT / entry.extra["recipe"]).read_bytes()
        check_hub_metadata(files["README.md"].data.decode(), require_metrics=True)
        folder = PACKAGE_DIR / entry.local_path if entry.local_path else root / entry.extra["folder"]
        assert entry.extra["size"] == (folder / "model.safetensors").stat().st_size
        assert entry.extra["evaluations"][0]["metrics"] == read_card(folder / "README.md").evaluations[0].metrics
    # a second release pushes nothing; a changed published folder is refused before any push
    n_requests = len(hub.requests)
    assert main(["release", "--root", str(root)]) == 0
    assert f"released 0 of {n}" in capsys.readouterr().out and len(hub.requests) == n_requests
    shutil.copyfile(root / "releases/v1.1.0/model.safetensors", root / "releases/v1.0.0/model.safetensors")
    assert main(["release", "--root", str(root)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "transmorph_tiny.blobs@v1.0.0 was published at commit" in err and "never changes" in err
    tiny_folder(root / "releases/v1.0.0", 0, "v1.0.0")  # same weights again
    # an unpublished index entry whose version exists on the Hub: refused, the tag stays
    data = json.loads(path.read_text())
    data["entries"][-1]["commit"] = None
    path.write_text(json.dumps(data))
    tag_before = hub.state.repos["org/tiny-blobs"].tags["v1.1.0"]
    assert main(["release", "--root", str(root)]) == 2
    assert "already has version v1.1.0" in one_line(capsys.readouterr().err)
    assert hub.state.repos["org/tiny-blobs"].tags["v1.1.0"] == tag_before
    write_index(index, path)

    # an empty cache: register downloads v1.0.0 (not the newest) at its commit and verifies it
    use_index(monkeypatch, path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh_cache"))
    old = next(e for e in index.entries if e.versioned_name == "transmorph_tiny.blobs@v1.0.0")
    inputs = blob_pair(tmp_path / "pair")
    args = ["register", *inputs, "--model", old.versioned_name, "--no-affine", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "out1")]) == 0
    report = json.loads((tmp_path / "out1/report.json").read_text())["model"]
    assert report["version"] == "v1.0.0" and report["commit"] == old.revision and report["sha256"] == old.sha256
    assert report["sha256"] == sha256_file(root / "releases/v1.0.0/model.safetensors")
    assert ("GET", f"/org/tiny-blobs/resolve/{old.revision}/model.safetensors") in hub.requests
    capsys.readouterr()
    assert main(["list", "--pretrained"]) == 0
    where = {tuple(line.split()[:2]): line.split()[6] for line in capsys.readouterr().out.splitlines()[1:]
             if line.startswith(("transmorph_tiny.blobs", "transmorph_micro"))}
    assert where == {("transmorph_tiny.blobs", "v1.0.0"): "cache", ("transmorph_tiny.blobs", "v1.1.0"): "Hub",
                     ("transmorph_micro.synth_brain", "v1.0.0"): "package",
                     ("transmorph_micro_cascade.synth_brain", "v1.0.0"): "package"}

    # offline, from the cache: no request at all
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_requests = len(hub.requests)
    assert main([*args, "-o", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2/report.json").read_text())["model"]["sha256"] == old.sha256
    assert len(hub.requests) == n_requests
    # offline, not cached: one line naming the version, the repo and `transreg pull`
    capsys.readouterr()
    new_args = [a if a != old.versioned_name else "transmorph_tiny.blobs" for a in args]
    assert main([*new_args, "-o", str(tmp_path / "out3")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "transmorph_tiny.blobs@v1.1.0" in err and "org/tiny-blobs" in err and "offline" in err
    assert "`transreg pull transmorph_tiny.blobs@v1.1.0`" in err and not (tmp_path / "out3").exists()
    # a tampered cached file is refused, with the command that repairs it
    blob = Path(os.path.realpath(next((tmp_path / "fresh_cache").rglob("model.safetensors"))))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert main([*args, "-o", str(tmp_path / "out4")]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"expected {old.sha256} (pinned by registry tag transmorph_tiny.blobs)" in err
    assert "transreg pull transmorph_tiny.blobs@v1.0.0 --force" in err and not (tmp_path / "out4").exists()


# --- shipped copies, aliases ----------------------------------------------------------------------

def test_shipped_copy_is_used_only_when_it_is_the_pinned_file(hub, zoo, tmp_path, monkeypatch, capsys):
    root, path = zoo
    assert main(["release", "--root", str(root)]) == 0
    index = load_index(path)
    v1 = next(e for e in index.entries if e.versioned_name == "transmorph_tiny.blobs@v1.1.0")
    shipped = tmp_path / "shipped"
    shutil.copytree(root / "releases/v1.1.0", shipped)
    pinned = PretrainedTag(**{**v1.__dict__, "tag": "shipped", "local_path": str(shipped)})
    unpublished = PretrainedTag(**{**pinned.__dict__, "tag": "unpublished", "revision": None})
    for entry in (pinned, unpublished):
        registry.register_pretrained(entry)
    n_requests = len(hub.requests)
    loaded = transreg.create_model(pinned.name, pretrained=True)
    assert loaded.pretrained_source.folder == shipped and len(hub.requests) == n_requests  # no download
    data = bytearray((shipped / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (shipped / "model.safetensors").write_bytes(bytes(data))  # the shipped copy is corrupted:
    loaded = transreg.create_model(pinned.name, pretrained=True)  # the pinned commit is downloaded
    assert loaded.pretrained_source.folder != shipped and loaded.pretrained_source.sha256 == v1.sha256
    assert ("GET", f"/org/tiny-blobs/resolve/{v1.revision}/model.safetensors") in hub.requests
    capsys.readouterr()
    assert main(["pull", unpublished.name, "--force"]) == 2  # not on the Hub, shipped copy corrupted
    err = one_line(capsys.readouterr().err)
    assert "not on the Hub yet" in err and "is corrupted" in err and "reinstall transreg" in err
    assert "missing" not in err
    shipped.joinpath("model.safetensors").unlink()
    assert main(["pull", unpublished.name]) == 2
    assert "is missing" in one_line(capsys.readouterr().err)
    shutil.copyfile(root / "releases/v1.1.0/model.safetensors", shipped / "model.safetensors")
    assert main(["pull", unpublished.name, "--force"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "nothing to download" in err and "is intact" in err


def test_aliases_of_renamed_tags_load_with_a_deprecation_warning(zoo, monkeypatch, tmp_path, capsys):
    root, path = zoo
    data = json.loads(path.read_text())
    data["aliases"] = {"transmorph_tiny.old_blobs": {"target": "transmorph_tiny.blobs",
                                                     "reason": "renamed in zoo v2"}}
    path.write_text(json.dumps(data))
    use_index(monkeypatch, path)
    shipped = PretrainedTag(**{**registry.pretrained_entry("transmorph_tiny.blobs@v1.0.0").__dict__,
                               "local_path": str(root / "releases/v1.0.0")})
    monkeypatch.setitem(registry._PRETRAINED, "transmorph_tiny.blobs", {"v1.0.0": shipped})
    with pytest.warns(DeprecatedNameWarning, match="transmorph_tiny.old_blobs is deprecated \\(renamed in zoo v2\\): "
                                                   "loading transmorph_tiny.blobs@v1.0.0"):
        model = transreg.create_model("transmorph_tiny.old_blobs@v1.0.0", pretrained=True)
    assert model.pretrained_source.sha256 == shipped.sha256
    assert main(["info", "transmorph_tiny.old_blobs"]) == 0
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith("transreg: warning: transmorph_tiny.old_blobs is deprecated")
    assert "architecture:  transmorph_tiny" in captured.out
    assert main(["list", "--pretrained"]) == 0
    assert "transmorph_tiny.old_blobs → transmorph_tiny.blobs (deprecated alias: renamed in zoo v2)" in \
        capsys.readouterr().out


def test_release_refuses_cards_that_fail_hub_validation(zoo, tmp_path):
    root, path = zoo
    card = root / "releases/v1.1.0/README.md"
    card.write_text(card.read_text().replace("      type: image-registration\n", "", 1))  # no task type
    with pytest.raises(ReleaseError, match="transmorph_tiny.blobs@v1.1.0: .*Hub metadata is invalid"):
        plan_release(load_index(path), root)
    tiny_folder(root / "releases/v1.1.0", 1, "v1.1.0")
    card.write_text(card.read_text().replace("version: v1.1.0", "version: v1.2.0"))
    with pytest.raises(ReleaseError, match="the card says version 'v1.2.0', the index 'v1.1.0'"):
        plan_release(load_index(path), root)


def test_package_checkpoint_ships_weights_config_and_one_card(tmp_path):
    from transreg.zoo.release import package_checkpoint

    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.json").write_text('{"architecture": "x"}')
    (staged / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "src" / "zoo_cards").mkdir(parents=True)
    target = package_checkpoint(staged, "x.tag", "# card\n", package_dir=tmp_path / "pkg", source_root=tmp_path / "src")
    assert target == tmp_path / "pkg" / "assets" / "zoo" / "x.tag"
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert (target / "config.json").read_text() == '{"architecture": "x"}'
    assert (target / "README.md").read_text() == (tmp_path / "src" / "zoo_cards" / "x.tag.md").read_text() == "# card\n"
    unshipped = package_checkpoint(staged, "x.tag", "# card 2\n", package_dir=tmp_path / "pkg",
                                   source_root=tmp_path / "src", folder=tmp_path / "src" / "releases" / "v2")
    assert unshipped == tmp_path / "src" / "releases" / "v2"
    assert (unshipped / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "src" / "zoo_cards" / "x.tag.md").read_text() == "# card 2\n"


def test_shipping_a_new_version_moves_the_old_one_to_its_release_folder(tmp_path):
    """The package holds one copy per name: v1.1.0 shipped moves v1.0.0's files, unchanged,
    to train/releases/NAME/v1.0.0; the written index lists both, each loadable from its folder."""
    from transreg.zoo.release import ship_version

    package, source = tmp_path / "pkg", tmp_path / "src"
    (source / "zoo_cards").mkdir(parents=True)
    index = zoo_index.ZooIndex(entries=[], path=tmp_path / "index.json")
    staged = {v: tiny_folder(tmp_path / "staged" / v, seed, v) for seed, v in ((0, "v1.0.0"), (1, "v1.1.0"))}
    card = {v: (staged[v] / "README.md").read_text() for v in staged}
    old = ship_version(staged["v1.0.0"], "transmorph_tiny.blobs", "v1.0.0", "org/tiny-blobs", card["v1.0.0"], RECIPE,
                       index, package_dir=package, source_root=source)
    assert old.local_path == "assets/zoo/transmorph_tiny.blobs"
    new = ship_version(staged["v1.1.0"], "transmorph_tiny.blobs", "v1.1.0", "org/tiny-blobs", card["v1.1.0"], RECIPE,
                       index, package_dir=package, source_root=source)
    written = load_index(tmp_path / "index.json")
    by_version = {e.version: e for e in written.entries}
    assert set(by_version) == {"v1.0.0", "v1.1.0"}
    moved = by_version["v1.0.0"]
    assert moved.local_path is None and moved.extra["folder"] == "train/releases/transmorph_tiny.blobs/v1.0.0"
    assert moved.sha256 == old.sha256 == sha256_file(source / moved.extra["folder"] / "model.safetensors")
    assert by_version["v1.1.0"].local_path == new.local_path == "assets/zoo/transmorph_tiny.blobs"
    assert sha256_file(package / new.local_path / "model.safetensors") == new.sha256 != old.sha256
    assert by_version["v1.1.0"].extra["parameters"] == by_version["v1.0.0"].extra["parameters"] > 0
    assert (source / "zoo_cards" / "transmorph_tiny.blobs.md").read_text() == card["v1.1.0"]
    for folder, seed in ((source / moved.extra["folder"], 0), (package / new.local_path, 1)):
        loaded = transreg.create_model(f"local-dir:{folder}", pretrained=True)
        expected = tiny_folder(tmp_path / f"again{seed}", seed, "v1.0.0")
        reference = transreg.create_model(f"local-dir:{expected}", pretrained=True)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
