"""The one source resolver: what a model name given by a user (or a caller) refers to.

Every way of naming a model, decided in one place (:func:`parse_model_source`):

- ``arch`` — an architecture of the registry (random initialisation);
- ``arch.tag`` / ``arch.tag@vX.Y.Z`` — a pretrained zoo entry (its newest version, or
  that version): pins the Hub repo, the commit and the sha256 of the weights; a renamed or
  retired tag resolves through its alias with a :class:`DeprecatedNameWarning`;
- ``hf-hub:org/name[@revision]`` — a Hub repo at a version tag, branch or commit sha
  (default ``main``);
- ``local-dir:/path`` or a path to an existing folder — a checkpoint folder on disk.

The caller must have imported the model families and the zoo index (see
:func:`transreg.zoo.factory.ensure_registered`) before asking about registry names.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .registry import PretrainedTag, alias_of, is_architecture, model_entrypoint, pretrained_entry, split_model_name

__all__ = ["SourceKind", "ModelSource", "SourceError", "DeprecatedNameWarning", "parse_model_source",
           "SOURCE_PREFIXES", "REPO_ID_RE"]

SourceKind = Literal["architecture", "registry", "hf-hub", "local-dir"]
SOURCE_PREFIXES = ("hf-hub:", "local-dir:")
REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class DeprecatedNameWarning(FutureWarning):
    """A renamed or retired zoo tag was used: it still loads, through its alias."""


class SourceError(ValueError):
    """A model name that no source form matches (malformed ``hf-hub:``, empty ``local-dir:``)."""


@dataclass(frozen=True)
class ModelSource:
    """What a name refers to. ``kind`` says which fields are set: ``arch`` (architecture and
    registry), ``tag`` (registry: the pinned entry), ``repo_id``/``revision`` (registry and
    hf-hub), ``path`` (local-dir)."""

    kind: SourceKind
    name: str
    arch: str | None = None
    tag: PretrainedTag | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @property
    def is_checkpoint(self) -> bool:
        """True for trained weights (registry, hf-hub, local-dir), False for an architecture."""
        return self.kind != "architecture"


def parse_model_source(name: str | os.PathLike[str]) -> ModelSource:
    """Classify ``name`` (see the module docstring). Unknown registry names raise
    :class:`~transreg.zoo.registry.UnknownModelError` with suggestions."""
    if isinstance(name, os.PathLike):
        return ModelSource("local-dir", f"local-dir:{Path(name).resolve()}", path=Path(name).resolve())
    text = str(name)
    if text.startswith("local-dir:"):
        path = text[len("local-dir:"):]
        if not path:
            raise SourceError("local-dir: needs a folder, e.g. local-dir:/path/to/checkpoint")
        return ModelSource("local-dir", text, path=Path(path).expanduser())
    if text.startswith("hf-hub:"):
        repo_id, _, revision = text[len("hf-hub:"):].partition("@")
        if REPO_ID_RE.fullmatch(repo_id) is None:
            raise SourceError(f"{text!r}: expected hf-hub:ORG/NAME[@REVISION], e.g. hf-hub:someorg/transmorph-small@v1.0.0")
        return ModelSource("hf-hub", text, repo_id=repo_id, revision=revision or "main")
    if "/" in text or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_dir():
            raise SourceError(f"checkpoint folder {path} does not exist (for a Hub repo write hf-hub:{text})")
        return ModelSource("local-dir", f"local-dir:{path.resolve()}", path=path.resolve())
    arch, tag, version = split_model_name(text)
    if tag is None and version is None:
        if not is_architecture(arch) and Path(text).is_dir():  # a bare folder name in the working directory
            path = Path(text).resolve()
            return ModelSource("local-dir", f"local-dir:{path}", path=path)
        model_entrypoint(arch)  # raises UnknownModelError with suggestions
        return ModelSource("architecture", text, arch=arch)
    if tag is None:
        raise SourceError(f"{text!r}: a version belongs to a trained checkpoint, e.g. {arch}.TAG@{version}")
    alias = alias_of(f"{arch}.{tag}")
    if alias is not None:
        target, reason = alias
        text = target + (f"@{version}" if version else "")
        warnings.warn(f"{arch}.{tag} is deprecated ({reason}): loading {text}; use that name instead",
                      DeprecatedNameWarning, stacklevel=2)
    entry = pretrained_entry(text)
    return ModelSource("registry", text, arch=entry.arch, tag=entry, repo_id=entry.hf_hub_id, revision=entry.revision)
