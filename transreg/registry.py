"""Model registry: ``@register_model`` entrypoints, ``create_model``, ``list_models``.

Names follow timm: ``arch`` is an architecture (an entrypoint function), ``arch.tag`` a
trained checkpoint of it (a pretrained tag, registered with :func:`register_pretrained`).
``create_model`` also accepts the checkpoint sources ``hf-hub:org/name[@revision]`` and
``local-dir:/path`` (see :mod:`transreg.hub`).
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

__all__ = [
    "PretrainedTag",
    "register_model",
    "register_pretrained",
    "create_model",
    "list_models",
    "model_entrypoint",
    "get_pretrained_tag",
    "split_model_name",
]

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED: dict[str, "PretrainedTag"] = {}
SOURCE_PREFIXES = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class PretrainedTag:
    """A trained checkpoint of an architecture, pinned to one Hub revision.

    ``sha256`` is the digest of ``model.safetensors``; ``revision`` a commit sha (the
    commit that the version tag ``version`` points to), or ``None`` for a version not yet
    pushed to the Hub (``transreg push`` prints the commit): such a tag loads only from
    its shipped copy. ``local_path`` (relative to the package) is a copy shipped inside
    the package, used before any download.
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
        if self.revision is None and not self.local_path:
            raise ValueError(f"pretrained tag {self.arch}.{self.tag}: revision None (not pushed to the Hub yet) "
                             "needs local_path, the copy shipped in the package")
        checks = (
            ("version", self.version, r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", "vMAJOR.MINOR.PATCH"),
            *((("revision", self.revision, r"[0-9a-f]{40}", "a 40-hex commit sha"),) if self.revision is not None else ()),
            ("sha256", self.sha256, r"[0-9a-f]{64}", "a 64-hex sha256"),
            ("hf_hub_id", self.hf_hub_id, r"[\w.-]+/[\w.-]+", "ORG/NAME"),
        )
        for what, value, pattern, form in checks:
            if not isinstance(value, str) or re.fullmatch(pattern, value) is None:
                raise ValueError(f"pretrained tag {self.arch}.{self.tag}: {what} {value!r} is not {form}")

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"


class UnknownModelError(KeyError):
    """Raised for a name that is neither an architecture nor a pretrained tag."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` as the architecture ``fn.__name__``."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"architecture {name!r} is registered twice")
    _ENTRYPOINTS[name] = fn
    return fn


def register_pretrained(tag: PretrainedTag) -> PretrainedTag:
    """Register a trained checkpoint ``arch.tag``."""
    if tag.arch not in _ENTRYPOINTS:
        raise ValueError(f"pretrained tag {tag.name!r} names unknown architecture {tag.arch!r}")
    _PRETRAINED[tag.name] = tag
    return tag


def split_model_name(name: str) -> tuple[str, str | None]:
    """``'transmorph_small.synth_brain'`` → ``('transmorph_small', 'synth_brain')``."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def _unknown(name: str, candidates: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownModelError(
        f"unknown model {name!r}.{hint} `transreg list` shows every architecture, "
        f"`transreg list --pretrained` every trained checkpoint."
    )


def model_entrypoint(arch: str) -> Callable[..., nn.Module]:
    _ensure_models_imported()
    if arch not in _ENTRYPOINTS:
        raise _unknown(arch, sorted(_ENTRYPOINTS) + sorted(_PRETRAINED))
    return _ENTRYPOINTS[arch]


def get_pretrained_tag(name: str) -> PretrainedTag:
    _ensure_models_imported()
    if name not in _PRETRAINED:
        raise _unknown(name, sorted(_PRETRAINED) + sorted(_ENTRYPOINTS))
    return _PRETRAINED[name]


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Sorted architecture names (or ``arch.tag`` checkpoint names) matching ``pattern``."""
    _ensure_models_imported()
    names = _PRETRAINED if pretrained else _ENTRYPOINTS
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a model by name.

    ``name`` is an architecture (``transmorph``), a checkpoint (``transmorph.tag``), or a
    source (``hf-hub:org/name@v1.0.0``, ``local-dir:/path``). ``overrides`` replace the
    architecture's default arguments (``ndim``, ``embed_dim``, ...). With a checkpoint
    or source and ``pretrained=True`` the trained weights are loaded, strictly.
    """
    if name.startswith(SOURCE_PREFIXES) or split_model_name(name)[1] is not None:
        if not pretrained:
            if name.startswith(SOURCE_PREFIXES):
                raise ValueError(f"{name!r} is a checkpoint source: pass pretrained=True to load it")
            arch, _ = split_model_name(name)
            get_pretrained_tag(name)  # validate the tag even when only the architecture is built
            return build_architecture(arch, **overrides)
        from . import hub

        return hub.load_model(name, **overrides)
    if pretrained:
        raise ValueError(
            f"{name!r} is an architecture, not a trained checkpoint; pretrained checkpoints: "
            f"{', '.join(list_models(name + '.*', pretrained=True)) or 'none yet'}"
        )
    return build_architecture(name, **overrides)


def build_architecture(arch: str, **model_args: Any) -> nn.Module:
    """Instantiate architecture ``arch`` and record how (for saving and reloading)."""
    model = model_entrypoint(arch)(**model_args)
    model.architecture = arch
    model.model_args = dict(model_args)
    return model


def _ensure_models_imported() -> None:
    from . import models, zoo  # noqa: F401  (register the entrypoints and the zoo's tags on import)
