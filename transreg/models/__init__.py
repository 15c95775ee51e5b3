"""Model families; importing this module registers their entrypoints."""
from . import transmorph, vitvnet, voxelmorph
from .base import InputError, RegistrationModel, RegistrationOutput

__all__ = ["InputError", "RegistrationModel", "RegistrationOutput", "transmorph", "vitvnet", "voxelmorph"]
