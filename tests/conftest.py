"""Shared test set-up: the registry is filled (model families and zoo index) before any test looks a name up."""
from transreg.zoo.factory import ensure_registered

ensure_registered()
