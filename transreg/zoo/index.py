"""The zoo index: every published (or to-be-published) checkpoint version, by ``arch.tag``.

The index is data, ``transreg/zoo/index.json`` (``TRANSREG_ZOO_INDEX`` names another
file, e.g. an organisation's private zoo). Per ``arch.tag`` and version it records the
Hub repo, the version, the commit its version tag points to (``null`` until ``transreg
release`` has published it; such a version loads only from its shipped copy), the sha256
and size of ``model.safetensors``, the parameter count, the card's metrics, the recipe it
was trained with and where its files are: ``shipped`` (a copy inside the package, relative
to the ``transreg`` folder) or ``folder`` (relative to the source tree, for versions too
large to ship). ``aliases`` map renamed or retired tags to their successor (loading an
alias warns). ``default`` names the checkpoint ``transreg register`` uses without
``--model``. Every ``arch.tag`` has a card ``zoo_cards/<arch.tag>.md`` (a test checks
both directions).

Importing this module registers the entries and aliases (see
:func:`transreg.zoo.factory.ensure_registered`); ``transreg release`` rewrites the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import PretrainedTag, register_alias, register_pretrained, split_model_name

__all__ = ["ZooIndex", "Alias", "ZooIndexError", "index_path", "load_index", "write_index", "entry_record",
           "PRETRAINED", "DEFAULT_CHECKPOINT", "DEFAULT_AFFINE_CHECKPOINT", "INDEX"]

INDEX_ENV = "TRANSREG_ZOO_INDEX"
PACKAGED_INDEX = Path(__file__).with_name("index.json")
#: the package folder (shipped copies are relative to it) and the source tree holding it
#: (recipes and unshipped release folders are relative to that)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_ROOT = PACKAGE_DIR.parent
FORMAT = 1
#: the keys of an entry besides those of :class:`PretrainedTag` (kept in ``PretrainedTag.extra``)
EXTRA_KEYS = ("size", "parameters", "evaluations", "recipe", "folder")


class ZooIndexError(ValueError):
    """A zoo index file that cannot be read or contradicts itself."""


@dataclass(frozen=True)
class Alias:
    """A renamed or retired ``arch.tag``: ``target`` is the name to use, ``reason`` says why."""

    name: str
    target: str
    reason: str


@dataclass
class ZooIndex:
    """The parsed index file: entries (one per ``arch.tag`` and version), aliases, the
    default deformable checkpoint and the default affine checkpoint (the learned affine
    stage's network)."""

    entries: list[PretrainedTag]
    aliases: dict[str, Alias] = field(default_factory=dict)
    default: str | None = None
    path: Path | None = None
    default_affine: str | None = None

    def register(self) -> None:
        """Register every entry and alias with :mod:`transreg.zoo.registry`."""
        for entry in self.entries:
            register_pretrained(entry)
        for alias in self.aliases.values():
            register_alias(alias.name, alias.target, alias.reason)


def index_path() -> Path:
    """The index file in use: ``$TRANSREG_ZOO_INDEX`` or the packaged ``index.json``."""
    return Path(os.environ[INDEX_ENV]) if os.environ.get(INDEX_ENV) else PACKAGED_INDEX


def _entry(record: dict[str, Any], where: str) -> PretrainedTag:
    name = record.get("name")
    arch, tag, version = split_model_name(str(name))
    if not isinstance(name, str) or tag is None or version is not None:
        raise ZooIndexError(f"{where}: entry name {name!r} is not ARCH.TAG")
    unknown = set(record) - {"name", "hf_hub_id", "version", "commit", "sha256", "shipped", *EXTRA_KEYS}
    if unknown:
        raise ZooIndexError(f"{where}: entry {name} has unknown keys {sorted(unknown)}")
    try:
        return PretrainedTag(arch=arch, tag=tag, hf_hub_id=record["hf_hub_id"], version=record["version"],
                             revision=record.get("commit"), sha256=record["sha256"],
                             local_path=record.get("shipped"),
                             extra={k: record[k] for k in EXTRA_KEYS if record.get(k) is not None})
    except KeyError as err:
        raise ZooIndexError(f"{where}: entry {name} has no {err.args[0]!r}") from None
    except ValueError as err:
        raise ZooIndexError(f"{where}: {err}") from None


def load_index(path: str | os.PathLike[str] | None = None) -> ZooIndex:
    """Read and check an index file (default: :func:`index_path`)."""
    path = Path(path) if path is not None else index_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ZooIndexError(f"zoo index {path} cannot be read: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ZooIndexError(f"zoo index {path}: expected a JSON object with \"format\": {FORMAT}")
    entries = [_entry(r, str(path)) for r in data.get("entries", [])]
    seen: set[str] = set()
    for e in entries:
        if e.versioned_name in seen:
            raise ZooIndexError(f"zoo index {path}: {e.versioned_name} is listed twice")
        seen.add(e.versioned_name)
    names = {e.name for e in entries}
    aliases = {}
    for old, spec in (data.get("aliases") or {}).items():
        if not isinstance(spec, dict) or spec.get("target") not in names or old in names:
            raise ZooIndexError(f"zoo index {path}: alias {old!r} must map to an entry's arch.tag "
                              f"({{\"target\": ..., \"reason\": ...}}) and must not be an entry itself")
        aliases[old] = Alias(old, spec["target"], str(spec.get("reason") or "renamed"))
    default, default_affine = data.get("default"), data.get("default_affine")
    for key, value in (("default", default), ("default_affine", default_affine)):
        if value is not None and value not in names:
            raise ZooIndexError(f"zoo index {path}: {key} {value!r} is not an entry")
    return ZooIndex(entries, aliases, default, path, default_affine)


def entry_record(entry: PretrainedTag) -> dict[str, Any]:
    """The JSON object of one entry (keys in a fixed order)."""
    record: dict[str, Any] = {"name": entry.name, "version": entry.version, "hf_hub_id": entry.hf_hub_id,
                              "commit": entry.revision, "sha256": entry.sha256}
    if entry.local_path:
        record["shipped"] = entry.local_path
    record.update({k: entry.extra[k] for k in EXTRA_KEYS if k in entry.extra})
    return record


def write_index(index: ZooIndex, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``index`` atomically (a temporary file renamed over the old one)."""
    path = Path(path) if path is not None else (index.path or index_path())
    data = {
        "format": FORMAT,
        "default": index.default,
        "default_affine": index.default_affine,
        "entries": [entry_record(e) for e in index.entries],
        "aliases": {a.name: {"target": a.target, "reason": a.reason} for a in index.aliases.values()},
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


INDEX: ZooIndex = load_index()
INDEX.register()
#: every entry of the index in use
PRETRAINED: tuple[PretrainedTag, ...] = tuple(INDEX.entries)
#: the default checkpoint (``arch.tag`` of an entry, shipped in the package) or None
DEFAULT_CHECKPOINT: str | None = INDEX.default
#: the learned affine stage's default network (``arch.tag`` of an entry) or None
DEFAULT_AFFINE_CHECKPOINT: str | None = INDEX.default_affine
