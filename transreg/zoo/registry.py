"""The model registry: architecture names → entrypoints, ``arch.tag`` → pretrained entries.

Names follow timm: ``arch`` is an architecture (an entrypoint function registered with
:func:`register_model`), ``arch.tag`` a trained checkpoint of it (a :class:`PretrainedTag`
registered with :func:`register_pretrained`, possibly in several versions:
``arch.tag@v1.1.0``; without a version the newest).

This module is a plain table: it imports nothing else of transreg (and not torch), so
every other module may import it. It does not import the model families or the zoo
index itself: :mod:`transreg.zoo.factory` does that before it looks a name up.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "PretrainedTag",
    "UnknownModelError",
    "register_model",
    "register_pretrained",
    "model_entrypoint",
    "pretrained_entry",
    "pretrained_versions",
    "is_architecture",
    "list_architectures",
    "list_pretrained",
    "split_model_name",
    "register_alias",
    "alias_of",
    "list_aliases",
    "VERSION_PATTERN",
]

VERSION_PATTERN = r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"

_ENTRYPOINTS: dict[str, Callable[..., Any]] = {}
_PRETRAINED: dict[str, dict[str, "PretrainedTag"]] = {}  # arch.tag -> version -> entry
_ALIASES: dict[str, tuple[str, str]] = {}  # old arch.tag -> (current arch.tag, reason)


@dataclass(frozen=True)
class PretrainedTag:
    """A trained checkpoint of an architecture, one version of it, pinned to one Hub revision.

    ``sha256`` is the digest of ``model.safetensors``; ``revision`` a commit sha (the
    commit that the version tag ``version`` points to), or ``None`` for a version not yet
    pushed to the Hub: such a version loads only from its shipped copy, or waits in a
    release folder (``extra["folder"]``) for ``transreg release``. ``local_path``
    (relative to the ``transreg`` package folder) is a copy shipped inside the package,
    used before any download.
    """

    arch: str
    tag: str
    hf_hub_id: str
    version: str
    revision: str | None
    sha256: str
    local_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.revision is None and not (self.local_path or self.extra.get("folder")):
            raise ValueError(f"pretrained tag {self.arch}.{self.tag}: revision None (not pushed to the Hub yet) "
                             "needs local_path (the copy shipped in the package) or a release folder")
        checks = (
            ("version", self.version, VERSION_PATTERN, "vMAJOR.MINOR.PATCH"),
            *((("revision", self.revision, r"[0-9a-f]{40}", "a 40-hex commit sha"),) if self.revision is not None else ()),
            ("sha256", self.sha256, r"[0-9a-f]{64}", "a 64-hex sha256"),
            ("hf_hub_id", self.hf_hub_id, r"[\w.-]+/[\w.-]+", "ORG/NAME"),
        )
        for what, value, pattern, form in checks:
            if not isinstance(value, str) or re.fullmatch(pattern, value) is None:
                raise ValueError(f"pretrained tag {self.arch}.{self.tag}: {what} {value!r} is not {form}")

    @property
    def name(self) -> str:
        """``arch.tag`` (without the version)."""
        return f"{self.arch}.{self.tag}"

    @property
    def versioned_name(self) -> str:
        """``arch.tag@vX.Y.Z``."""
        return f"{self.name}@{self.version}"


class UnknownModelError(KeyError):
    """Raised for a name that is neither an architecture nor a pretrained tag (or version)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version[1:].split("."))


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register ``fn`` as the architecture ``fn.__name__``."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"architecture {name!r} is registered twice")
    _ENTRYPOINTS[name] = fn
    return fn


def register_pretrained(entry: PretrainedTag) -> PretrainedTag:
    """Register one version of a trained checkpoint ``arch.tag``; a version is registered once."""
    versions = _PRETRAINED.setdefault(entry.name, {})
    if entry.version in versions and versions[entry.version] != entry:
        raise ValueError(f"{entry.versioned_name} is registered twice with different contents")
    versions[entry.version] = entry
    return entry


def register_alias(old: str, target: str, reason: str) -> None:
    """Register ``old`` (a renamed or retired ``arch.tag``) as an alias of ``target``."""
    if _ALIASES.get(old, (target, reason)) != (target, reason):
        raise ValueError(f"alias {old!r} is registered twice with different targets")
    _ALIASES[old] = (target, reason)


def alias_of(name: str) -> tuple[str, str] | None:
    """``(target, reason)`` when ``name`` (``arch.tag``, without a version) is an alias, else ``None``."""
    return _ALIASES.get(name)


def list_aliases() -> dict[str, tuple[str, str]]:
    """Every alias: old ``arch.tag`` → (current ``arch.tag``, reason)."""
    return dict(sorted(_ALIASES.items()))


def split_model_name(name: str) -> tuple[str, str | None, str | None]:
    """``'transmorph_micro.synth_brain@v1.0.0'`` → ``('transmorph_micro', 'synth_brain', 'v1.0.0')``
    (tag and version ``None`` where absent)."""
    rest, _, version = name.partition("@")
    arch, _, tag = rest.partition(".")
    return arch, (tag or None), (version or None)


def _unknown(name: str, candidates: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownModelError(
        f"unknown model {name!r}.{hint} `transreg list` shows every architecture, "
        f"`transreg list --pretrained` every trained checkpoint."
    )


def is_architecture(name: str) -> bool:
    return name in _ENTRYPOINTS


def model_entrypoint(arch: str) -> Callable[..., Any]:
    """The entrypoint of architecture ``arch``; :class:`UnknownModelError` with suggestions."""
    if arch not in _ENTRYPOINTS:
        raise _unknown(arch, sorted(_ENTRYPOINTS) + sorted(_PRETRAINED))
    return _ENTRYPOINTS[arch]


def pretrained_versions(name: str) -> list[PretrainedTag]:
    """Every registered version of ``arch.tag``, oldest first."""
    if name not in _PRETRAINED:
        raise _unknown(name, sorted(_PRETRAINED) + sorted(_ENTRYPOINTS))
    return sorted(_PRETRAINED[name].values(), key=lambda e: _version_key(e.version))


def pretrained_entry(name: str, version: str | None = None) -> PretrainedTag:
    """The entry of ``arch.tag`` at ``version`` (``None``: the newest); ``name`` may also
    carry the version itself (``arch.tag@v1.0.0``)."""
    arch, tag, in_name = split_model_name(name)
    if in_name is not None:
        if version is not None and version != in_name:
            raise ValueError(f"{name!r} names version {in_name}, but version {version} was asked for")
        version = in_name
    versions = pretrained_versions(f"{arch}.{tag}")
    if version is None:
        return versions[-1]
    for entry in versions:
        if entry.version == version:
            return entry
    known = ", ".join(e.version for e in versions)
    raise UnknownModelError(f"{arch}.{tag} has no version {version}; registered versions: {known}")


def list_architectures(pattern: str = "*") -> list[str]:
    """Sorted architecture names matching ``pattern`` (only those registered so far)."""
    return sorted(n for n in _ENTRYPOINTS if fnmatch.fnmatchcase(n, pattern))


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted ``arch.tag`` names matching ``pattern`` (only those registered so far)."""
    return sorted(n for n in _PRETRAINED if fnmatch.fnmatchcase(n, pattern))
