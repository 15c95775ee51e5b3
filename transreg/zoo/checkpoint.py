"""The checkpoint folder format: save, validate and strictly load a trained model.

A checkpoint is a folder with three files::

    config.json        {"architecture", "model_args", "preprocessing", "weights_sha256",
                        "transreg_version", "format_version"}
    model.safetensors  the state dict (metadata: architecture, format_version); never a pickle
    README.md          the zoo card (Hub model-card format, see :mod:`transreg.zoo.cards`)

Format 2 (written now): ``model_args`` holds *every* constructor argument of the model
with its value, defaults included, so a later change of a default cannot change what
the checkpoint builds; ``preprocessing`` is the typed record of
:mod:`transreg.zoo.preprocessing`; ``weights_sha256`` is the digest of
``model.safetensors``, verified on every load. Format 1 (transreg 0.1, the zoo v1
checkpoints) stored only the arguments that differed from the defaults and the
intensity normalisation as prose: :func:`read_config` reads both and returns the
format-2 shape (format 1's ``model_args`` as stored). An optional ``"affine_model"``
(both formats) names the affine stage a deformable model was trained after (e.g.
``affine_micro.synth_brain``); ``transreg register`` uses it for its learned affine stage.

This module reads and writes files; :func:`transreg.zoo.factory.load_checkpoint` builds
the model. Every failure raises one :class:`CheckpointError` subclass (a ``ValueError``)
whose message names the file and the problem.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from safetensors import SafetensorError, safe_open

from .preprocessing import PreprocessingError, PreprocessingSpec, intensity_from_format1

if TYPE_CHECKING:  # torch is imported where tensors are read or written: file checks stay light
    import torch
    from torch import nn

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "FORMAT_VERSION",
    "PREPROCESSING_KEYS",
    "CheckpointError",
    "ArchitectureMismatchError",
    "StateDictMismatchError",
    "ChecksumError",
    "PickleCheckpointError",
    "sha256_file",
    "verify_sha256",
    "safetensors_bytes",
    "build_config",
    "save_pretrained",
    "read_config",
    "weights_path",
    "count_parameters",
    "load_weights",
    "named_list",
    "jsonable",
    "state_dict_mismatches",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 2
PREPROCESSING_KEYS = ("modality", "spacing", "orientation", "size", "intensity")
CONFIG_KEYS = ("architecture", "model_args", "preprocessing", "transreg_version", "format_version")  # format 1 and 2
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")
_MAX_NAMED = 8  # keys named in a mismatch message before "... and N more"


class CheckpointError(ValueError):
    """A checkpoint that cannot be saved or loaded as asked (the message says why)."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint holds another architecture than the one asked for."""


class StateDictMismatchError(CheckpointError):
    """The weights do not fit the model: missing, unexpected or differently shaped tensors."""


class ChecksumError(CheckpointError):
    """The sha256 of ``model.safetensors`` differs from the pinned or published digest."""


class PickleCheckpointError(CheckpointError):
    """A pickle (``torch.save``) file where ``model.safetensors`` is expected."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str, what: str, name: str = "NAME") -> str:
    """Check the sha256 of ``path`` against ``expected``; ``what`` says where ``expected`` comes from,
    ``name`` is the model name the error tells the user to pull again.

    Returns the digest. Raises :class:`ChecksumError` on a mismatch.
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"sha256 of {path} is {actual}, expected {expected} ({what}): the file is corrupted or was "
            f"modified; delete it (or run `transreg pull {name} --force`) to download it again"
        )
    return actual


def jsonable(value: Any, where: str) -> Any:
    """Tuples → lists, recursively; anything JSON cannot hold raises :class:`CheckpointError`."""
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"{where}: {value!r} ({type(value).__name__}) cannot be stored in {CONFIG_NAME}")


def _preprocessing(preprocessing: Mapping[str, Any] | PreprocessingSpec | None) -> dict[str, Any]:
    if isinstance(preprocessing, PreprocessingSpec):
        return preprocessing.to_json()
    try:
        return PreprocessingSpec.from_json(preprocessing).to_json()
    except PreprocessingError as err:
        raise CheckpointError(f"preprocessing: {err}") from None


def build_config(model: nn.Module, preprocessing: Mapping[str, Any] | PreprocessingSpec | None = None) -> dict[str, Any]:
    """The ``config.json`` content for ``model`` (built by ``create_model``), without
    ``weights_sha256`` (:func:`save_pretrained` adds it)."""
    from .. import __version__

    architecture = getattr(model, "architecture", None)
    init_args = getattr(model, "init_args", None)
    if not isinstance(architecture, str) or not isinstance(init_args, Mapping):
        raise CheckpointError(
            f"{type(model).__name__} has no .architecture/.init_args: build it with transreg.create_model "
            f"so that the checkpoint records how to rebuild it"
        )
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    config = {
        "architecture": architecture,
        "model_args": jsonable(dict(init_args), "model_args"),
        "preprocessing": _preprocessing(preprocessing),
        "transreg_version": __version__,
        "format_version": FORMAT_VERSION,
    }
    if getattr(model, "affine_model", None) is not None:  # the affine stage it was trained after
        config["affine_model"] = str(model.affine_model)
    return config


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialise to safetensors with a canonical header (sorted JSON keys), so that the same
    tensors and metadata always give the same bytes, hence the same sha256.

    (safetensors orders the header's JSON keys differently from one call to the next.)
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the data section 8-byte aligned, as safetensors does
    return len(header).to_bytes(8, "little") + header + raw[8 + n :]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_pretrained(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    preprocessing: Mapping[str, Any] | None = None,
    card: Any = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder (``config.json``, ``model.safetensors``, ``README.md``).

    ``preprocessing``: what the model expects (a dict with keys :data:`PREPROCESSING_KEYS`
    or a :class:`~transreg.zoo.preprocessing.PreprocessingSpec`); defaults to
    ``model.preprocessing`` (set on pretrained models) or all ``None``. ``card``: ``None``
    (a card rendered from the config), an :class:`~transreg.zoo.cards.EvalResult` or a list of
    them (rendered into the card's ``model-index`` and evaluation table), a
    :class:`~transreg.zoo.cards.ModelCard`, or the card's full Markdown text. Everything is
    rendered before the first write, and each file is written atomically.
    ``weights_dtype`` (e.g. ``torch.float16``): store the floating-point tensors in that
    dtype, half the file for float16 (loading casts them back to the model's dtype).
    Returns the folder.
    """
    from . import cards

    if weights_dtype is not None and not weights_dtype.is_floating_point:
        raise ValueError(f"weights_dtype must be a floating-point dtype, got {weights_dtype}")
    config = build_config(model, preprocessing)
    num_parameters = sum(p.numel() for p in model.parameters())
    card_text = cards.card_text_for(config, card, num_parameters=num_parameters)
    # safetensors refuses tensors that share memory: store independent contiguous copies
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if weights_dtype is not None:
        tensors = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {"architecture": config["architecture"], "format_version": str(FORMAT_VERSION),
                "transreg_version": config["transreg_version"], "num_parameters": str(num_parameters)}
    weights = safetensors_bytes(tensors, metadata)
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / WEIGHTS_NAME, weights)
    _write_atomic(out / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    _write_atomic(out / CARD_NAME, card_text.encode())
    return out


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``config.json`` of a checkpoint folder (format 1 or 2).

    Returns the format-2 shape: ``preprocessing`` typed (format 1's prose mapped by
    :func:`~transreg.zoo.preprocessing.intensity_from_format1`), ``weights_sha256``
    (``None`` for format 1), ``format_version`` as stored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a transreg checkpoint: {CONFIG_NAME} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    if not isinstance(config["format_version"], int) or config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {config['format_version']!r}; this transreg reads up to "
            f"{FORMAT_VERSION}: upgrade transreg"
        )
    if not isinstance(config["model_args"], dict):
        raise CheckpointError(f"{path}: model_args must be a JSON object")
    preprocessing = dict(config["preprocessing"] or {})
    if config["format_version"] == 1 and "intensity" in preprocessing:
        try:
            preprocessing["intensity"] = intensity_from_format1(preprocessing["intensity"])
        except PreprocessingError as err:
            raise CheckpointError(f"{path}: preprocessing: {err}") from None
    try:
        config["preprocessing"] = PreprocessingSpec.from_json(preprocessing).to_json()
    except PreprocessingError as err:
        raise CheckpointError(f"{path}: preprocessing: {err}") from None
    sha = config.get("weights_sha256")
    if config["format_version"] >= 2 and (not isinstance(sha, str) or len(sha) != 64):
        raise CheckpointError(f"{path}: format 2 needs weights_sha256, the sha256 of {WEIGHTS_NAME}")
    config.setdefault("weights_sha256", None)
    affine_model = config.setdefault("affine_model", None)
    if affine_model is not None and not isinstance(affine_model, str):
        raise CheckpointError(f"{path}: affine_model must be a model name (a string), got {affine_model!r}")
    return config


def _sniff_pickle(path: Path) -> str | None:
    """'torch.save zip archive' / 'pickle' when ``path`` starts like one, else ``None``.

    A safetensors file (8-byte header length, then the JSON header ``{``) is never taken
    for a pickle, even when its header length starts with the bytes of a pickle
    protocol mark (a 1152-byte header starts ``80 04``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "torch.save zip archive"
    if head[8:9] == b"{":
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return None


def weights_path(folder: str | os.PathLike[str]) -> Path:
    """``folder/model.safetensors``, after checking that it is a safetensors file and not a pickle."""
    folder = Path(folder)
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise PickleCheckpointError(
                f"{folder} holds pickle weights ({', '.join(pickles)}) but no {WEIGHTS_NAME}: transreg never "
                f"unpickles; convert them with transreg.save_pretrained"
            )
        raise CheckpointError(f"{folder} is not a transreg checkpoint: {WEIGHTS_NAME} is missing")
    kind = _sniff_pickle(path)
    if kind is not None:
        raise PickleCheckpointError(
            f"{path} is a {kind}, not safetensors: transreg never unpickles; convert it with transreg.save_pretrained"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            f.metadata()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from None
    return path


def _weights_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def count_parameters(folder: str | os.PathLike[str]) -> int:
    """Number of model parameters of a checkpoint, without loading a tensor.

    Read from the ``num_parameters`` metadata that :func:`save_pretrained` writes; for
    files without it, the number of stored values (parameters plus persistent buffers).
    """
    path = weights_path(folder)
    recorded = _weights_metadata(path).get("num_parameters", "")
    if recorded.isdigit():
        return int(recorded)
    total = 0
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            n = 1
            for s in f.get_slice(key).get_shape():
                n *= s
            total += n
    return total


def named_list(items: list[str]) -> str:
    """The first few ``items`` comma-separated, then "... and N more" (for error messages)."""
    shown = ", ".join(items[:_MAX_NAMED])
    return shown + (f" ... and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else "")


def state_dict_mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
                          ) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """``(missing, unexpected, shapes)``: keys of ``expected`` absent from ``given``, keys of
    ``given`` absent from ``expected``, and ``(key, given shape, expected shape)`` where both
    have the key with different shapes."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [(k, tuple(given[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in given and given[k].shape != v.shape]
    return missing, unexpected, shapes


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    missing, unexpected, mismatched = state_dict_mismatches(model.state_dict(), state)
    shapes = [f"{k} {given} vs model {wanted}" for k, given, wanted in mismatched]
    problems = []
    if missing:
        problems.append(f"missing keys: {named_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {named_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {named_list(shapes)}")
    if problems:
        raise StateDictMismatchError(
            f"{path} does not fit {getattr(model, 'architecture', type(model).__name__)}: " + "; ".join(problems)
        )


def load_weights(model: nn.Module, folder: str | os.PathLike[str], config: Mapping[str, Any]) -> nn.Module:
    """Load ``folder``'s weights into ``model`` strictly (names missing, unexpected and
    differently shaped tensors) after checking that ``config`` (:func:`read_config` of the
    folder) describes them: the architecture stored with the weights, and their sha256
    (format 2). Returns ``model``."""
    folder = Path(folder)
    path = weights_path(folder)
    stored = _weights_metadata(path).get("architecture")
    if stored is not None and stored != config["architecture"]:
        raise ArchitectureMismatchError(
            f"{folder}: {CONFIG_NAME} says {config['architecture']!r} but {WEIGHTS_NAME} was saved from {stored!r}"
        )
    if config.get("weights_sha256"):
        verify_sha256(path, config["weights_sha256"], f"recorded in {folder / CONFIG_NAME}")
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model
