"""Model families; importing this module registers their entrypoints."""
from . import affine, transmorph, vitvnet, voxelmorph
from .base import InputError, RegistrationModel, RegistrationOutput

__all__ = ["affine", "InputError", "RegistrationModel", "RegistrationOutput", "transmorph", "vitvnet", "voxelmorph"]
