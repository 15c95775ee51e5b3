"""The one source resolver: every way of naming a model, decided in one place."""
from __future__ import annotations

import pytest

from transreg.zoo.registry import UnknownModelError
from transreg.zoo.sources import SourceError
from transreg.zoo.factory import resolve_source
from transreg.zoo.index import PRETRAINED


def test_architecture_names():
    source = resolve_source("transmorph_tiny")
    assert source.kind == "architecture" and source.arch == "transmorph_tiny" and not source.is_checkpoint


def test_zoo_tags_with_and_without_version():
    entry = PRETRAINED[0]
    newest = resolve_source(entry.name)
    assert newest.kind == "registry" and newest.tag == entry and newest.repo_id == entry.hf_hub_id
    pinned = resolve_source(f"{entry.name}@{entry.version}")
    assert pinned.tag == entry and pinned.arch == entry.arch
    with pytest.raises(UnknownModelError, match=f"has no version v9.9.9; registered versions: {entry.version}"):
        resolve_source(f"{entry.name}@v9.9.9")
    with pytest.raises(SourceError, match="a version belongs to a trained checkpoint"):
        resolve_source(f"{entry.arch}@v1.0.0")


def test_hub_and_local_sources(tmp_path):
    hub = resolve_source("hf-hub:org/name@v1.0.0")
    assert (hub.kind, hub.repo_id, hub.revision) == ("hf-hub", "org/name", "v1.0.0")
    assert resolve_source("hf-hub:org/name").revision == "main"
    with pytest.raises(SourceError, match="expected hf-hub:ORG/NAME"):
        resolve_source("hf-hub:noslash")
    # a folder, given as a path or as local-dir:, is one source
    for spec in (str(tmp_path), f"local-dir:{tmp_path}", tmp_path):
        source = resolve_source(spec)
        assert source.kind == "local-dir" and source.path.resolve() == tmp_path.resolve()
    with pytest.raises(SourceError, match="does not exist .*hf-hub:"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="local-dir: needs a folder"):
        resolve_source("local-dir:")


def test_unknown_names_get_suggestions():
    with pytest.raises(UnknownModelError, match="Did you mean: transmorph_tiny"):
        resolve_source("transmorph_tinyy")
