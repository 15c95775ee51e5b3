"""transreg: a model zoo for deep-learning deformable medical image registration."""
from .registry import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "register_model"]
