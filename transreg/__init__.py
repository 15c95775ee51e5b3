"""transreg: a model zoo for deep-learning deformable medical image registration.

The public API is loaded on first use (``transreg.create_model`` imports torch and the
models then), so that ``import transreg`` and ``transreg --help`` stay fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "create_model": "transreg.zoo.factory",
    "list_models": "transreg.zoo.factory",
    "register_model": "transreg.zoo.registry",
    "save_pretrained": "transreg.zoo.checkpoint",
    "push_to_hub": "transreg.zoo.publish",
    "register": "transreg.registration.pipeline",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:
    from .registration.pipeline import register  # noqa: F401
    from .zoo.checkpoint import save_pretrained  # noqa: F401
    from .zoo.factory import create_model, list_models  # noqa: F401
    from .zoo.publish import push_to_hub  # noqa: F401
    from .zoo.registry import register_model  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transreg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
