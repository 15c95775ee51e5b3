"""Model families; importing this module registers their entrypoints."""
from . import transmorph
from .base import InputError, RegistrationModel, RegistrationOutput

__all__ = ["InputError", "RegistrationModel", "RegistrationOutput", "transmorph"]
