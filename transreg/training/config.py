"""Typed training configuration: YAML recipe → dataclasses, ``--set key=value`` overrides.

A recipe has five sections (every key optional, defaults below)::

    model: {name, args, pretrained, cascade_passes, freeze_encoder, grad_checkpointing}
    data:  {train, val, size, spacing, pairing, atlas, val_split, val_pairs, batch_size,
            num_workers, num_labels, shared_contrast, flip, affine_degrees, affine_scale,
            affine_shift}
    loss:  {similarity, similarity_args, sim_weight, regulariser, reg_weight, dice_weight}
    optim: {name, lr, weight_decay, betas, schedule, warmup_steps, min_lr, poly_power,
            accumulate, clip_grad}
    run:   {steps, precision, seed, out, device, log_every, val_every, ckpt_every,
            keep_checkpoints}

Unknown keys and wrongly typed values raise :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "parse_set",
]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")


class ConfigError(ValueError):
    """A recipe or override that cannot be used (unknown key, wrong type, bad value)."""


@dataclass
class ModelConfig:
    name: str = "transmorph_tiny"
    args: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # registry tag, hf-hub:..., local-dir:... or a folder
    cascade_passes: int = 1  # > 1: the network applied that many times, flows composed (RecursiveCascade)
    freeze_encoder: bool = False
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    train: str = "synthetic:shapes"
    val: str | None = None  # None: held-out synthetic pairs, or val_split of the subjects
    size: list[int] | None = None  # spatial size fed to the model; None: the data's own
    spacing: list[float] | None = None  # mm; resample NIfTI images to this spacing
    pairing: str = "random"  # random (inter-subject) | atlas (atlas-to-subject)
    atlas: str | None = None  # atlas image (labels: same name in labels/ or atlas_labels)
    atlas_labels: str | None = None
    val_split: float = 0.0  # fraction of subjects held out for validation
    val_pairs: int = 8
    batch_size: int = 1
    num_workers: int = 0
    num_labels: int = 8  # synthetic:shapes only
    shared_contrast: bool = False  # synthetic: same label intensities in both images (mono-modal)
    flip: bool = False
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    affine_shift: float = 0.0  # voxels


@dataclass
class LossConfig:
    similarity: str = "ncc"  # ncc | mse | mi
    similarity_args: dict[str, Any] = field(default_factory=dict)
    sim_weight: float = 1.0  # 0 with dice_weight > 0: the SynthMorph label-only loss
    regulariser: str = "diffusion"  # diffusion | bending
    reg_weight: float = 1.0
    dice_weight: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"  # constant | poly | cosine
    warmup_steps: int = 0
    min_lr: float = 0.0
    poly_power: float = 0.9
    accumulate: int = 1
    clip_grad: float | None = None


@dataclass
class RunConfig:
    steps: int = 1000
    precision: str = "32"
    seed: int = 0
    out: str = "runs/train"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10
    val_every: int = 100
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    # CUDA: let cuDNN time its convolution algorithms once for the fixed training size
    # (measured on an H200: transmorph_large's bf16 step 1.8 → 0.34 s; its default choice
    # for one weight gradient took 1.5 s)
    cudnn_benchmark: bool = True
    # CPU threads: 0 = the cores not busy at start (transreg/training/threads.py), N = exactly N
    threads: int = 0


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "TrainConfig":
        """Build from nested mappings; unknown sections/keys and bad types raise ConfigError."""
        config = _build(cls, raw or {}, "")
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "TrainConfig":
        """A copy with dotted keys (``optim.lr``) replaced by the given values."""
        raw = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if not name or "." in name:
                raise ConfigError(f"override key {key!r} must look like section.key, e.g. optim.lr")
            if section not in raw:
                raise ConfigError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(raw)}")
            raw[section][name] = value
        return TrainConfig.from_dict(raw)

    def validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        r, o, d, l = self.run, self.optim, self.data, self.loss
        check(r.precision in PRECISIONS, f"run.precision must be one of {', '.join(PRECISIONS)}, got {r.precision!r}")
        check(r.steps >= 1, f"run.steps must be >= 1, got {r.steps}")
        check(r.threads >= 0, f"run.threads must be >= 0 (0: automatic), got {r.threads}")
        for key in ("log_every", "val_every", "ckpt_every", "keep_checkpoints"):
            check(getattr(r, key) >= 1, f"run.{key} must be >= 1, got {getattr(r, key)}")
        check(o.name in ("adam", "adamw"), f"optim.name must be adam or adamw, got {o.name!r}")
        check(o.schedule in ("constant", "poly", "cosine"), f"optim.schedule must be constant, poly or cosine, got {o.schedule!r}")
        check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
        check(o.accumulate >= 1, f"optim.accumulate must be >= 1, got {o.accumulate}")
        check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        check(len(o.betas) == 2, f"optim.betas needs two numbers, got {o.betas}")
        check(o.clip_grad is None or o.clip_grad > 0, f"optim.clip_grad must be > 0 or null, got {o.clip_grad}")
        check(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}")
        check(d.pairing in ("random", "atlas"), f"data.pairing must be random or atlas, got {d.pairing!r}")
        check(d.pairing != "atlas" or d.atlas is not None, "data.pairing: atlas needs data.atlas (the atlas image)")
        check(0.0 <= d.val_split < 1.0, f"data.val_split must be in [0, 1), got {d.val_split}")
        check(d.size is None or (len(d.size) in (2, 3) and all(s >= 4 for s in d.size)),
              f"data.size must be 2 or 3 sizes >= 4, got {d.size}")
        check(d.spacing is None or d.size is None or len(d.spacing) == len(d.size),
              f"data.spacing {d.spacing} and data.size {d.size} need the same number of entries")
        check(l.similarity in ("ncc", "mse", "mi"), f"loss.similarity must be ncc, mse or mi, got {l.similarity!r}")
        check(l.regulariser in ("diffusion", "bending"), f"loss.regulariser must be diffusion or bending, got {l.regulariser!r}")
        check(min(l.sim_weight, l.reg_weight, l.dice_weight) >= 0, "loss weights must be >= 0")
        check(l.sim_weight > 0 or l.dice_weight > 0, "loss.sim_weight and loss.dice_weight are both 0: nothing to learn")


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section {where or '(top level)'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        place = f"in section {where!r}" if where else "at the top level"
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))} {place}; known: {', '.join(sorted(known))}")
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
        else:
            values[name] = _coerce(value, hint, key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint`` (int → float allowed; '32' ↔ 32)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # precision: 32
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "data.size=[64,64]"]`` → ``{"optim.lr": 0.0003, ...}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {text!r}: {err}") from None
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads 3e-4 as a string
        out[key.strip()] = value
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {err}") from None
        raw = _numeric_strings(raw)
    config = TrainConfig.from_dict(raw)
    return config.with_overrides(overrides) if overrides else config


def _numeric_strings(raw: Any) -> Any:
    """YAML 1.1 leaves ``1e-4`` a string; turn such scalars into floats (other strings stay)."""
    if isinstance(raw, dict):
        return {k: _numeric_strings(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_numeric_strings(v) for v in raw]
    if isinstance(raw, str) and _looks_numeric(raw) and raw.strip().lower() not in ("nan", "inf", "-inf", "infinity"):
        return float(raw) if not raw.strip().lstrip("-").isdigit() else int(raw)
    return raw
