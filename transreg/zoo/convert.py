"""Turn checkpoints of the original TransMorph, ViT-V-Net and VoxelMorph code into transreg models.

The original training scripts save ``{'epoch', 'state_dict', 'best_dsc', ...}`` with
``torch.save``; the network's configuration lives only in the training script. Given the
checkpoint and that configuration (the keys of the original config objects, as a dict or
a JSON file), :func:`from_original` builds the equivalent transreg model and loads every
weight, so that it reproduces the original ``flow`` and ``warped``::

    model = from_original("transmorph", "TransMorph_IXI.pth.tar", "config.json")

Checkpoints are read with ``torch.load(weights_only=True)`` only. Buffers transreg
rebuilds (identity grids, relative position indices) are dropped; every other tensor
must map onto a transreg parameter or buffer, or :class:`ConversionError` names the
leftovers on both sides and any shape mismatches (a config that does not fit the weights).

Where the original conventions differ, the weights are converted:

* ``transmorph_diff``: the original integrates its half-resolution velocity ``v`` in
  half-resolution voxels *without* the ``2^-steps`` scaling of scaling and squaring and
  upsamples the result ×2 without rescaling the vectors. transreg's velocity is
  ``2^steps · v`` (mean head weight and bias scaled, ``2·ln(2^steps)`` added to the
  log-variance bias) and the model is built with ``rescale_upsampled=False``.
* ``vitvnet``: the separate query/key/value projections become one ``qkv`` projection;
  the position embedding ``(1, N, C)`` becomes a ``(1, C, *grid)`` map.
* ``transmorph`` with ``ape`` (learned absolute position embedding): the table keeps the
  grid it was stored with (the original sizes it from ``pretrain_img_size``, 224, not
  from ``img_size``); both implementations resize it trilinearly to the token grid.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from . import cards
from .checkpoint import named_list, save_pretrained, sha256_file, state_dict_mismatches
from .factory import build_architecture

__all__ = ["KINDS", "ConversionError", "read_checkpoint", "read_config", "model_args", "convert_state_dict",
           "from_original", "convert"]

KINDS = ("transmorph", "transmorph_diff", "vitvnet", "voxelmorph1", "voxelmorph2")
_MAX_NAMED = 8

# The class names official.json files record, for checking --from against them.
_CLASS_KIND = {"TransMorph": "transmorph", "TransMorphDiff": "transmorph_diff", "ViTVNet": "vitvnet",
               "VxmDense_1": "voxelmorph1", "VxmDense_2": "voxelmorph2"}


class ConversionError(ValueError):
    """An original checkpoint that cannot be converted (the message says why)."""


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict of an original checkpoint (bare, or under ``'state_dict'``).

    Loaded with ``torch.load(weights_only=True)`` on the CPU; a ``module.`` prefix
    (``DataParallel``) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 229" from garbage bytes
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused is None:  # not an object safe loading refuses: bytes that are no pickle
            raise ConversionError(f"{path} is corrupted or not a PyTorch checkpoint (it cannot be unpickled)") from None
        raise ConversionError(
            f"{path} holds Python objects ({refused.group(1)}) that safe loading (torch.load weights_only=True) "
            "refuses; transreg never unpickles arbitrary objects: save only the state dict with torch.save"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises on damaged bytes
        detail = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else "no details"
        raise ConversionError(f"{path} is corrupted or not a PyTorch checkpoint ({type(err).__name__}: {detail})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state:
        keys = f" with keys {sorted(map(str, obj))[:_MAX_NAMED]}" if isinstance(obj, Mapping) else ""
        raise ConversionError(f"{path} holds a {type(obj).__name__}{keys}, not a state dict or {{'state_dict': ...}}")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f"{path}: the state dict has entries that are not named tensors: {named_list(bad)}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"transformer": {"num_layers": 2}}`` → ``{"transformer.num_layers": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_config(config: str | os.PathLike[str] | Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The original config values as a flat dict (nested keys joined with ``.``).

    ``config`` is a mapping or a JSON file of the original config keys, or a fixture
    ``official.json`` (config under ``"config"``, the input size under ``"input_size"``,
    the original class under ``"official_class"``, checked against ``kind``).
    """
    _check_kind(kind)
    if isinstance(config, Mapping):
        data: Any = dict(config)
        where = "config"
    else:
        where = str(config)
        try:
            data = json.loads(Path(config).read_text())
        except FileNotFoundError:
            raise ConversionError(f"config file {config} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConversionError(f"config file {config} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConversionError(f"config file {config} must hold a JSON object")
    if isinstance(data.get("config"), Mapping):  # an official.json
        official_class = str(data.get("official_class", "")).rpartition(":")[2]
        if official_class in _CLASS_KIND and _CLASS_KIND[official_class] != kind:
            raise ConversionError(
                f"{where} describes the original class {official_class} ({_CLASS_KIND[official_class]}), "
                f"not {kind}: use --from {_CLASS_KIND[official_class]}"
            )
        inner = dict(data["config"])
        if "input_size" in data and "img_size" not in inner and kind == "vitvnet":
            inner["img_size"] = data["input_size"]
        data = inner
    return _flatten(data)


# --------------------------------------------------------------------------- config → model arguments


def _ints(value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ConversionError(f"config {key!r} must be an integer or a list of integers, got {value!r}")


def _require(config: Mapping[str, Any], key: str, allowed: Callable[[Any], bool], what: str) -> None:
    if key in config and not allowed(config[key]):
        raise ConversionError(f"config {key!r} = {config[key]!r} is not supported by transreg (needs {what})")


def _check_keys(config: Mapping[str, Any], known: set[str], kind: str) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConversionError(
            f"unknown config keys for {kind}: {named_list(unknown)} (expected keys of the original config: "
            f"{', '.join(sorted(known))})"
        )


# Keys of the original configs that only matter for training, not for the network.
_TRANSMORPH_IGNORED = {"use_checkpoint", "image_sigma", "prior_lambda", "prior_lambda_mean"}
_TRANSMORPH_KEYS = {"embed_dim", "depths", "num_heads", "window_size", "img_size", "patch_size", "mlp_ratio",
                    "qkv_bias", "drop_rate", "drop_path_rate", "ape", "spe", "rpe", "if_convskip",
                    "if_transskip", "reg_head_chan", "in_chans", "patch_norm", "pat_merg_rf", "out_indices",
                    } | _TRANSMORPH_IGNORED


def _transmorph_args(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    _check_keys(config, _TRANSMORPH_KEYS, kind)
    _require(config, "patch_norm", lambda v: v is True, "patch_norm true")
    _require(config, "pat_merg_rf", lambda v: v == 4, "pat_merg_rf 4: patch merging 2^ndim·C → 2C")
    depths = _ints(config.get("depths", (2, 2, 4, 2)), "depths")
    _require(config, "out_indices", lambda v: list(v) == list(range(len(depths))), "every stage as output")
    _require(config, "in_chans", lambda v: isinstance(v, int) and v > 0 and v % 2 == 0, "an even channel count")
    if config.get("ape") and config.get("spe"):
        raise ConversionError("config sets both 'ape' and 'spe': the original uses one position embedding at most")
    img_size = _ints(config.get("img_size", (160, 192, 224)), "img_size")
    args: dict[str, Any] = {
        "ndim": len(img_size),
        "in_channels": config.get("in_chans", 2) // 2,
        "img_size": img_size,
        "window_size": _ints(config.get("window_size", tuple(s // 32 for s in img_size)), "window_size"),
        "embed_dim": config.get("embed_dim", 96),
        "depths": depths,
        "num_heads": _ints(config.get("num_heads", (4, 4, 8, 8)), "num_heads"),
        "patch_size": config.get("patch_size", 4),
        "mlp_ratio": config.get("mlp_ratio", 4.0),
        "qkv_bias": bool(config.get("qkv_bias", False)),
        "drop_rate": config.get("drop_rate", 0.0),
        "drop_path_rate": config.get("drop_path_rate", 0.3),
        "pos_embed": "learned" if config.get("ape") else "sinusoidal" if config.get("spe") else None,
        "rel_pos_bias": bool(config.get("rpe", True)),
        "reg_head_chan": config.get("reg_head_chan", 16),
        "conv_skip": bool(config.get("if_convskip", True)),
        "trans_skip": bool(config.get("if_transskip", True)),
    }
    if kind == "transmorph_diff":  # see the module docstring
        args.update(int_steps=7, probabilistic=True, rescale_upsampled=False)
    return args


_VITVNET_IGNORED = {"patches.grid", "patch_size"}  # unused by the original ViTVNet class
_VITVNET_KEYS = {"hidden_size", "transformer.num_layers", "transformer.num_heads", "transformer.mlp_dim",
                 "transformer.dropout_rate", "transformer.attention_dropout_rate", "patches.size",
                 "conv_first_channel", "encoder_channels", "down_factor", "down_num", "decoder_channels",
                 "skip_channels", "n_dims", "n_skip", "img_size"} | _VITVNET_IGNORED


def _vitvnet_args(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    _check_keys(config, _VITVNET_KEYS, kind)
    ndim = config.get("n_dims", 3)
    patch = _ints(config.get("patches.size", 8), "patches.size")
    if len(set(patch)) != 1:
        raise ConversionError(f"config 'patches.size' {list(patch)} must be the same along every axis")
    stem = _ints(config.get("encoder_channels", (16, 32, 32)), "encoder_channels")
    _require(config, "down_factor", lambda v: v == len(stem) - 1,
             f"down_factor = len(encoder_channels) - 1 = {len(stem) - 1}")
    if "img_size" not in config and ndim != 3:
        raise ConversionError("config needs 'img_size' (the training input size) for a 2-D ViT-V-Net")
    return {
        "ndim": ndim,
        "img_size": _ints(config.get("img_size", (160, 192, 224)), "img_size"),
        "stem_channels": stem,
        "extra_pools": config.get("down_num", 2),
        "patch_size": patch[0],
        "hidden_size": config.get("hidden_size", 252),
        "depth": config.get("transformer.num_layers", 12),
        "num_heads": config.get("transformer.num_heads", 12),
        "mlp_dim": config.get("transformer.mlp_dim", 3072),
        "drop_rate": config.get("transformer.dropout_rate", 0.1),
        "attn_drop_rate": config.get("transformer.attention_dropout_rate", 0.0),
        "head_channels": config.get("conv_first_channel", 512),
        "decoder_channels": _ints(config.get("decoder_channels", (96, 48, 32, 32, 16)), "decoder_channels"),
        "n_skip": config.get("n_skip", 5),
    }


_VXM_KEYS = {"inshape", "nb_unet_features", "nb_unet_levels", "unet_feat_mult", "use_probs"}


def _voxelmorph_args(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    _check_keys(config, _VXM_KEYS, kind)
    _require(config, "nb_unet_levels", lambda v: v is None, "nb_unet_levels null (list-valued nb_unet_features)")
    _require(config, "unet_feat_mult", lambda v: v == 1, "unet_feat_mult 1")
    _require(config, "use_probs", lambda v: v is False, "use_probs false")
    args: dict[str, Any] = {"ndim": len(_ints(config.get("inshape", (160, 192, 224)), "inshape"))}
    features = config.get("nb_unet_features")
    if features is not None:
        if not (isinstance(features, (list, tuple)) and len(features) == 2):
            raise ConversionError("config 'nb_unet_features' must be [[encoder widths], [decoder widths]]")
        args["enc_channels"] = _ints(features[0], "nb_unet_features[0]")
        args["dec_channels"] = _ints(features[1], "nb_unet_features[1]")
    return args


# --------------------------------------------------------------------------- key maps


@dataclass(frozen=True)
class _KeyMap:
    """How one original family's state dict maps onto transreg's.

    ``rules``: ``(regex, replacement)`` applied with ``re.sub`` (first match wins);
    ``dropped``: keys of buffers transreg rebuilds; ``signature``: a key prefix only this
    family's checkpoints have.
    """

    rules: tuple[tuple[str, str], ...]
    dropped: str
    signature: str

    def target(self, key: str) -> str | None:
        for pattern, replacement in self.rules:
            if re.match(pattern, key):
                return re.sub(pattern, replacement, key, count=1)
        return None


_SWIN_RULES = (
    (r"^transformer\.layers\.(\d+)\.", r"encoder.stages.\1."),
    (r"^transformer\.norm(\d+)\.", r"encoder.norms.\1."),
    (r"^transformer\.(patch_embed|absolute_pos_embed)", r"encoder.\1"),
    (r"^up(\d+)\.", r"decoder.blocks.\1."),
    (r"^c1\.0\.", "input_skips.half_res.0."),
    (r"^c2\.0\.", "input_skips.full_res.0."),
)
_SWIN_DROPPED = r"(.*\.relative_position_index|.*\.attn_mask|spatial_trans\.grid|.*\.grid)$"

_KEY_MAPS = {
    "transmorph": _KeyMap(_SWIN_RULES + ((r"^reg_head\.0\.", "head.conv."),), _SWIN_DROPPED, "reg_head.0."),
    "transmorph_diff": _KeyMap(
        _SWIN_RULES + ((r"^flow_mean\.", "head.mean."), (r"^flow_sigma\.", "head.log_sigma.")),
        _SWIN_DROPPED, "flow_mean.",
    ),
    "vitvnet": _KeyMap(
        (
            (r"^transformer\.embeddings\.hybrid_model\.inc\.double_conv\.0\.", "encoder.stem.levels.0.0.0."),
            (r"^transformer\.embeddings\.hybrid_model\.inc\.double_conv\.2\.", "encoder.stem.levels.0.1.0."),
            (r"^transformer\.embeddings\.hybrid_model\.down(\d+)\.maxpool_conv\.1\.double_conv\.0\.",
             r"encoder.stem.levels.\1.0.0."),
            (r"^transformer\.embeddings\.hybrid_model\.down(\d+)\.maxpool_conv\.1\.double_conv\.2\.",
             r"encoder.stem.levels.\1.1.0."),
            (r"^transformer\.embeddings\.patch_embeddings\.", "encoder.patch_embed."),
            (r"^transformer\.embeddings\.position_embeddings$", "encoder.pos_embed"),
            (r"^transformer\.encoder\.layer\.(\d+)\.attention_norm\.", r"encoder.blocks.\1.norm1."),
            (r"^transformer\.encoder\.layer\.(\d+)\.ffn_norm\.", r"encoder.blocks.\1.norm2."),
            (r"^transformer\.encoder\.layer\.(\d+)\.ffn\.", r"encoder.blocks.\1.mlp."),
            (r"^transformer\.encoder\.layer\.(\d+)\.attn\.qkv\.", r"encoder.blocks.\1.attn.qkv."),
            (r"^transformer\.encoder\.layer\.(\d+)\.attn\.out\.", r"encoder.blocks.\1.attn.proj."),
            (r"^transformer\.encoder\.encoder_norm\.", "encoder.norm."),
            (r"^decoder\.(conv_more|blocks)\.", r"decoder.\1."),
            (r"^reg_head\.0\.", "head.conv."),
        ),
        r"spatial_trans\.grid$", "transformer.embeddings.",
    ),
    "voxelmorph": _KeyMap(
        (
            (r"^unet_model\.downarm\.(\d+)\.main\.", r"encoder.blocks.\1.0."),
            (r"^unet_model\.uparm\.(\d+)\.main\.", r"decoder.up.\1.0."),
            (r"^unet_model\.extras\.(\d+)\.main\.", r"decoder.extras.\1.0."),
            (r"^flow\.", "head.conv."),
        ),
        r"transformer\.grid$", "unet_model.",
    ),
}


def _family(kind: str) -> str:
    return "voxelmorph" if kind.startswith("voxelmorph") else kind


def _detect_family(state: Mapping[str, Tensor]) -> str | None:
    """The original family whose signature keys ``state`` has (TransMorph-diff before TransMorph)."""
    for family in ("transmorph_diff", "vitvnet", "voxelmorph", "transmorph"):
        if any(k.startswith(_KEY_MAPS[family].signature) for k in state):
            return family
    return None


def _merge_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """ViT-V-Net's ``attn.query/key/value`` → one ``attn.qkv`` (rows: q, k, v)."""
    out = dict(state)
    pattern = re.compile(r"^(.*\.attn)\.query\.(weight|bias)$")
    for key in list(state):
        m = pattern.match(key)
        parts = [f"{m.group(1)}.{p}.{m.group(2)}" for p in ("query", "key", "value")] if m else []
        if m and all(p in state for p in parts):
            out[f"{m.group(1)}.qkv.{m.group(2)}"] = torch.cat([state[p] for p in parts], dim=0)
            for p in parts:
                del out[p]
    return out


def _pos_embed_to_map(tokens: Tensor, target: Tensor) -> Tensor:
    """``(1, N, C)`` (tokens in row-major grid order) → ``(1, C, *grid)`` like ``target``."""
    grid = tuple(target.shape[2:])
    if tokens.dim() != 3 or tokens.shape[1] != math.prod(grid) or tokens.shape[2] != target.shape[1]:
        raise ConversionError(
            f"position_embeddings {tuple(tokens.shape)} does not fit a {grid} token grid of {target.shape[1]} "
            f"channels: set 'img_size' in the config to the size the network was trained at and check "
            f"'hidden_size' (transreg expects (1, {math.prod(grid)}, {target.shape[1]}))"
        )
    return tokens.transpose(1, 2).reshape(target.shape)


def convert_state_dict(kind: str, state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map an original state dict onto ``model`` (built by :func:`model_args` for ``kind``).

    Raises :class:`ConversionError` for a checkpoint of another family, keys without a
    counterpart on either side, or shapes that differ.
    """
    _check_kind(kind)
    family = _family(kind)
    detected = _detect_family(state)
    if detected is None:
        raise ConversionError(
            f"the checkpoint is not one of the original TransMorph, TransMorph-diff, ViT-V-Net or VoxelMorph "
            f"networks (its keys start {named_list(sorted(state)[:3])})"
        )
    if detected != family:
        hint = "voxelmorph1 or voxelmorph2" if detected == "voxelmorph" else detected
        raise ConversionError(
            f"the checkpoint holds an original {detected} network (keys like "
            f"'{next(k for k in state if k.startswith(_KEY_MAPS[detected].signature))}'), not {kind}: "
            f"use --from {hint}"
        )
    key_map = _KEY_MAPS[family]
    if family == "vitvnet":
        state = _merge_qkv(dict(state))
    expected = model.state_dict()
    converted: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        if re.match(key_map.dropped, key):
            continue
        target = key_map.target(key)
        if target is None or target not in expected:
            unmatched.append(key if target is None else f"{key} (→ {target})")
            continue
        if target == "encoder.pos_embed":
            value = _pos_embed_to_map(value, expected[target])
        converted[target] = value
    missing, _, mismatched = state_dict_mismatches(expected, converted)  # unexpected keys were caught above
    shapes = [f"{k}: checkpoint {given} vs model {wanted}" for k, given, wanted in mismatched]
    problems = []
    if shapes:
        problems.append(f"shape mismatches (the config does not match the weights): {named_list(shapes)}")
    if unmatched:
        problems.append(f"checkpoint keys without a transreg counterpart: {named_list(unmatched)}")
    if missing:
        problems.append(f"transreg keys missing from the checkpoint: {named_list(missing)}")
    if problems:
        raise ConversionError(f"the checkpoint does not fit {kind} with this config: " + "; ".join(problems))
    if family == "transmorph_diff":
        scale = 2.0 ** model.head.steps
        converted["head.mean.weight"] = converted["head.mean.weight"] * scale
        converted["head.mean.bias"] = converted["head.mean.bias"] * scale
        converted["head.log_sigma.bias"] = converted["head.log_sigma.bias"] + 2.0 * math.log(scale)
    return converted


# --------------------------------------------------------------------------- entry points


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConversionError(f"unknown original network {kind!r}; choose one of {', '.join(KINDS)}")


_ARGS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "transmorph": _transmorph_args,
    "transmorph_diff": _transmorph_args,
    "vitvnet": _vitvnet_args,
    "voxelmorph1": _voxelmorph_args,
    "voxelmorph2": _voxelmorph_args,
}


def model_args(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """transreg arguments of the architecture ``kind`` for a flat original ``config``."""
    _check_kind(kind)
    return _ARGS[kind](config, kind)


def from_original(
    kind: str,
    checkpoint_path: str | os.PathLike[str],
    config: str | os.PathLike[str] | Mapping[str, Any],
) -> nn.Module:
    """Build the transreg model equivalent to an original checkpoint and load its weights.

    ``kind``: one of :data:`KINDS` (the transreg architecture of the same name);
    ``config``: the original config values (mapping or JSON file, see :func:`read_config`).
    Returns the model in ``eval()`` mode on the CPU, with ``.architecture`` and
    ``.model_args`` set (ready for ``save_pretrained``).
    """
    flat = read_config(config, kind)
    state = read_checkpoint(checkpoint_path)
    args = model_args(kind, flat)
    learned = state.get("transformer.absolute_pos_embed")
    if args.get("pos_embed") == "learned" and learned is not None and learned.dim() == args["ndim"] + 2:
        # The original sizes this table from SwinTransformer's pretrain_img_size (224 unless the
        # training script passed another), not from config.img_size: take its grid as stored.
        args["img_size"] = tuple(int(g) * args["patch_size"] for g in learned.shape[2:])
    try:
        model = build_architecture(kind, **args)
    except (ValueError, TypeError) as err:
        raise ConversionError(f"the config does not describe a valid {kind}: {err}") from None
    converted = convert_state_dict(kind, state, model)
    if kind == "vitvnet" and "skip_channels" in flat:
        given = list(_ints(flat["skip_channels"], "skip_channels"))
        if given != model.skip_channels:
            raise ConversionError(
                f"config 'skip_channels' {given} does not match the CNN stem's features {model.skip_channels} "
                f"(encoder_channels {list(args['stem_channels'])}, n_skip {args['n_skip']})"
            )
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert(
    kind: str,
    checkpoint_path: str | os.PathLike[str],
    config: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
) -> Path:
    """:func:`from_original`, then write a transreg checkpoint folder (``config.json``,
    ``model.safetensors``, ``README.md``) that ``create_model("local-dir:OUT", pretrained=True)``
    loads. Nothing is written unless the conversion succeeds; a non-empty ``out_dir`` is
    only replaced with ``overwrite``. Returns the folder.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ConversionError(f"{out} exists and is not an empty folder: choose another -o or pass --overwrite")
    model = from_original(kind, checkpoint_path, config)
    summary = (
        f"Weights of the original {kind} implementation, converted with `transreg convert --from {kind}` from "
        f"`{Path(checkpoint_path).name}` (sha256 `{sha256_file(checkpoint_path)}`). The converted model "
        "reproduces the original network's displacement and warped image."
    )
    card = cards.card_from_config({"architecture": model.architecture}, summary=summary)
    return save_pretrained(model, out, card=card)
