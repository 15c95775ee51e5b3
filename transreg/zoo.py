"""The zoo: trained checkpoints, registered as pretrained tags ``arch.tag``.

Each entry pins a Hub repo, the commit of its version tag and the sha256 of its
``model.safetensors``, and has a card ``zoo_cards/<arch.tag>.md`` (a test checks both
directions). ``transreg push`` prints the entry to add here after publishing a version.
Entries are added only for checkpoints that were trained and evaluated.
"""
from __future__ import annotations

from . import models  # noqa: F401  (architectures must be registered before their tags)
from .registry import PretrainedTag, register_pretrained

PRETRAINED: tuple[PretrainedTag, ...] = ()

for _tag in PRETRAINED:
    register_pretrained(_tag)
