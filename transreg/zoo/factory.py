"""Models by name: ``create_model``, ``load_checkpoint``, ``list_models``.

Every caller that turns a name into a model (``transreg register``, training,
fine-tuning, evaluation, conversion, the Hub commands) goes through this module and its
one source resolver, :func:`transreg.zoo.sources.parse_model_source`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from . import registry
from .checkpoint import CheckpointError, load_weights, read_config
from .sources import ModelSource, parse_model_source

__all__ = [
    "ensure_registered",
    "resolve_source",
    "build_architecture",
    "create_model",
    "load_checkpoint",
    "list_models",
    "model_for",
    "checkpoint_folder",
]


def ensure_registered() -> None:
    """Import the model families (their entrypoints) and the zoo index (the pretrained entries)."""
    from .. import models  # noqa: F401
    from . import index  # noqa: F401


def resolve_source(name: str | os.PathLike[str]) -> ModelSource:
    """What ``name`` refers to (an architecture, a zoo entry, a Hub repo or a folder)."""
    ensure_registered()
    return parse_model_source(name)


def build_architecture(arch: str, **model_args: Any) -> nn.Module:
    """Instantiate architecture ``arch`` (random initialisation). The model carries
    ``.architecture`` and ``.init_args`` (every constructor argument, recorded by
    :func:`transreg.models.base.records_init_args`) for saving and reloading."""
    ensure_registered()
    model = registry.model_entrypoint(arch)(**model_args)
    model.architecture = arch
    if not isinstance(getattr(model, "init_args", None), dict):
        raise TypeError(f"architecture {arch!r} builds {type(model).__name__}, whose __init__ records no arguments: "
                        "decorate it with transreg.models.base.records_init_args")
    return model


def load_checkpoint(folder: str | os.PathLike[str], *, expected_architecture: str | None = None,
                    **overrides: Any) -> nn.Module:
    """Build the model a checkpoint folder describes and load its weights strictly.

    ``overrides`` replace stored constructor arguments that leave the weights' shapes
    alone (e.g. ``grad_checkpointing=True``); ones that change shapes fail with
    :class:`~transreg.zoo.checkpoint.StateDictMismatchError`. The model is returned in
    ``eval()`` mode on the CPU with ``.preprocessing`` (the typed record as a dict) set.
    """
    from .checkpoint import ArchitectureMismatchError

    config = read_config(folder)
    architecture = config["architecture"]
    if expected_architecture is not None and architecture != expected_architecture:
        raise ArchitectureMismatchError(f"{folder} holds a {architecture!r} checkpoint, not {expected_architecture!r}")
    ensure_registered()
    if not registry.is_architecture(architecture):
        raise CheckpointError(f"{folder} holds architecture {architecture!r}, which this transreg does not know: "
                              "upgrade transreg")
    try:
        model = build_architecture(architecture, **{**config["model_args"], **overrides})
    except TypeError as err:
        raise CheckpointError(f"{folder}: its model_args do not fit {architecture!r}: {err}") from None
    load_weights(model, folder, config)
    model.preprocessing = dict(config["preprocessing"])
    model.affine_model = config["affine_model"]  # the affine stage it was trained after, or None
    return model.eval()


def create_model(name: str | os.PathLike[str], pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a model by name (any form of :func:`transreg.zoo.sources.parse_model_source`).

    An architecture is built with random weights and ``overrides`` as constructor
    arguments (``ndim``, ``embed_dim``, ...). A checkpoint (``arch.tag[@version]``,
    ``hf-hub:``, ``local-dir:`` or a folder) is loaded, strictly, with ``pretrained=True``;
    with ``pretrained=False`` a zoo entry builds its untrained architecture. Loaded
    models carry ``.pretrained_source`` (the resolved checkpoint).
    """
    source = resolve_source(name)
    if source.kind == "architecture":
        if pretrained:
            trained = registry.list_pretrained(f"{source.arch}.*")
            raise ValueError(f"{source.name!r} is an architecture, not a trained checkpoint; pretrained checkpoints: "
                             f"{', '.join(trained) or 'none yet'}")
        return build_architecture(source.name, **overrides)
    if not pretrained:
        if source.kind != "registry":
            raise ValueError(f"{source.name!r} is a checkpoint source: pass pretrained=True to load it")
        assert source.arch is not None
        return build_architecture(source.arch, **overrides)
    return _load_source(source, **overrides)


def model_for(name: str | os.PathLike[str], **architecture_args: Any) -> nn.Module:
    """The model a user means by ``name``: trained weights for a checkpoint, random ones
    for an architecture (built with ``architecture_args``, e.g. ``ndim``)."""
    source = resolve_source(name)
    if source.is_checkpoint:
        return _load_source(source)
    return build_architecture(source.name, **architecture_args)


def _load_source(source: ModelSource, **overrides: Any) -> nn.Module:
    from .hub import resolve

    resolved = resolve(source)
    model = load_checkpoint(resolved.folder, expected_architecture=source.arch, **overrides)
    model.pretrained_source = resolved
    return model


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Sorted architecture names (or ``arch.tag`` checkpoint names) matching ``pattern``."""
    ensure_registered()
    return registry.list_pretrained(pattern) if pretrained else registry.list_architectures(pattern)


def checkpoint_folder(name: str | os.PathLike[str]) -> Path:
    """The folder on disk of a checkpoint name (downloaded and verified if needed)."""
    from .hub import resolve

    return resolve(resolve_source(name)).folder
