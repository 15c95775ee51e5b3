"""Model families; importing this module registers their entrypoints."""
from . import affine, cascade, transmorph, vitvnet, voxelmorph
from .base import InputError, RegistrationModel, RegistrationOutput

__all__ = ["affine", "cascade", "InputError", "RegistrationModel", "RegistrationOutput", "transmorph", "vitvnet", "voxelmorph"]
