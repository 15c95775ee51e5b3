"""transreg: a model zoo for deep-learning deformable medical image registration."""
from .registry import create_model, list_models, register_model
from .hub import push_to_hub, save_pretrained
from .register import register

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "push_to_hub", "register", "register_model", "save_pretrained"]
