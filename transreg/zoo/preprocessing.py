"""The typed preprocessing record of a checkpoint: what a model expects of its inputs.

Stored in ``config.json`` (format 2) as::

    "preprocessing": {"modality": "T1w MRI", "spacing": [2.0, 2.0, 2.0], "orientation": "RAS",
                      "size": [96, 112, 96],
                      "intensity": {"method": "percentile", "lower": 0.5, "upper": 99.5}}

``spacing`` in mm per axis, ``orientation`` axis codes, ``size`` voxels per axis the model
was trained at, ``intensity`` the normalisation to ``[0, 1]``: ``percentile`` (clip to the
``lower``/``upper`` percentiles, then rescale), ``minmax``, ``ct`` (window ``level`` ±
``width``/2 in HU) or ``none``. Any field may be ``null`` (unspecified).

Format-1 checkpoints stored the intensity as prose; :func:`intensity_from_format1` maps
the phrases transreg 0.1 wrote to the typed record (and refuses any other phrase).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["IntensitySpec", "PreprocessingSpec", "PreprocessingError", "INTENSITY_METHODS", "intensity_from_format1",
           "describe_intensity"]

INTENSITY_METHODS = ("percentile", "minmax", "ct", "none")
_PARAMETERS = {"percentile": {"lower": 0.5, "upper": 99.5}, "ct": {"level": 40.0, "width": 400.0},
               "minmax": {}, "none": {}}
_FORMAT1_PHRASES = {  # what transreg 0.1 wrote into format-1 checkpoints
    "percentile 0.5-99.5 clipped to [0, 1]": {"method": "percentile", "lower": 0.5, "upper": 99.5},
    "min-max to [0, 1]": {"method": "minmax"},
}


class PreprocessingError(ValueError):
    """A preprocessing record that does not follow the schema above."""


@dataclass(frozen=True)
class IntensitySpec:
    """One intensity normalisation with its numbers (percentiles, or HU for ``ct``)."""

    method: str = "percentile"
    lower: float | None = None
    upper: float | None = None
    level: float | None = None
    width: float | None = None

    def __post_init__(self) -> None:
        if self.method not in INTENSITY_METHODS:
            raise PreprocessingError(f"unknown intensity method {self.method!r}; use one of {', '.join(INTENSITY_METHODS)}")
        for key, default in _PARAMETERS[self.method].items():  # fill the method's defaults
            if getattr(self, key) is None:
                object.__setattr__(self, key, float(default))
        stray = [k for k in ("lower", "upper", "level", "width") if k not in _PARAMETERS[self.method] and getattr(self, k) is not None]
        if stray:
            raise PreprocessingError(f"intensity method {self.method!r} takes no {', '.join(stray)}")
        if self.method == "percentile" and not 0 <= self.lower < self.upper <= 100:  # type: ignore[operator]
            raise PreprocessingError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")
        if self.method == "ct" and not self.width > 0:  # type: ignore[operator]
            raise PreprocessingError(f"CT window width must be > 0 HU, got {self.width}")

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | str) -> "IntensitySpec":
        """From ``{"method": ..., numbers}`` or a bare method name (``"percentile"``)."""
        if isinstance(value, str):
            return cls(method=value.lower().replace("-", ""))
        if not isinstance(value, Mapping) or "method" not in value:
            raise PreprocessingError(f"intensity must be a method name or an object with 'method', got {value!r}")
        unknown = sorted(set(value) - {"method", "lower", "upper", "level", "width"})
        if unknown:
            raise PreprocessingError(f"unknown intensity keys {unknown}")
        numbers = {k: (None if value.get(k) is None else float(value[k])) for k in ("lower", "upper", "level", "width")}
        return cls(method=str(value["method"]), **numbers)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **{k: getattr(self, k) for k in _PARAMETERS[self.method]}}


def describe_intensity(value: Mapping[str, Any] | None) -> str:
    """One line for people: ``{"method": "percentile", "lower": 0.5, "upper": 99.5}`` →
    ``'percentiles 0.5-99.5 clipped, scaled to [0, 1]'``."""
    if value is None:
        return "not specified"
    spec = IntensitySpec.from_json(value)
    if spec.method == "percentile":
        return f"percentiles {spec.lower:g}-{spec.upper:g} clipped, scaled to [0, 1]"
    if spec.method == "ct":
        return f"CT window level {spec.level:g} HU, width {spec.width:g} HU, scaled to [0, 1]"
    if spec.method == "minmax":
        return "min-max scaled to [0, 1]"
    return "none (intensities as stored)"


def intensity_from_format1(value: Any) -> dict[str, Any] | None:
    """The typed intensity record of a format-1 ``"intensity"`` value (prose or method name)."""
    if value is None:
        return None
    if isinstance(value, str) and value in _FORMAT1_PHRASES:
        return dict(_FORMAT1_PHRASES[value])
    return IntensitySpec.from_json(value).to_json()


def _numbers(value: Any, kind: type, what: str) -> tuple[Any, ...] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError):
        raise PreprocessingError(f"{what} must be a list of numbers, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise PreprocessingError(f"{what} must be positive numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class PreprocessingSpec:
    """What a model expects: ``modality`` (free text), ``spacing`` (mm per axis),
    ``orientation`` (axis codes), ``size`` (voxels per axis), ``intensity``."""

    modality: str | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    size: tuple[int, ...] | None = None
    intensity: IntensitySpec | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> "PreprocessingSpec":
        """From a ``config.json`` ``"preprocessing"`` object (format 2) or a user's dict."""
        value = dict(value or {})
        unknown = sorted(set(value) - {"modality", "spacing", "orientation", "size", "intensity"})
        if unknown:
            raise PreprocessingError(
                f"unknown preprocessing keys {unknown}; expected some of modality, spacing, orientation, size, intensity")
        orientation = value.get("orientation")
        if orientation is not None and (not isinstance(orientation, str) or not orientation.isalpha()):
            raise PreprocessingError(f"orientation must be axis codes such as 'RAS', got {orientation!r}")
        intensity = value.get("intensity")
        return cls(
            modality=None if value.get("modality") is None else str(value["modality"]),
            spacing=_numbers(value.get("spacing"), float, "spacing"),
            orientation=orientation,
            size=_numbers(value.get("size"), int, "size"),
            intensity=None if intensity is None else (
                intensity if isinstance(intensity, IntensitySpec) else IntensitySpec.from_json(intensity)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "spacing": None if self.spacing is None else list(self.spacing),
            "orientation": self.orientation,
            "size": None if self.size is None else list(self.size),
            "intensity": None if self.intensity is None else self.intensity.to_json(),
        }
