"""What `transreg register` uses when the user names nothing: the default model, the
precision names and the sample pair. Imports no torch (the command line's help reads it)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["ACCURATE_STEPS", "INSTANCE_OPT_WEIGHT", "AFFINE_MODES", "DEFAULT_AFFINE_MODE", "DEFAULT_MODEL", "SAMPLE_DIR", "PRECISIONS", "Precision", "default_model",
           "sample_pair"]

#: network inference precisions (:func:`transreg.registration.inference.predict`)
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# The untrained fallback (random initialisation, near-identity deformation) that
# `transreg register` and `transreg demo` use when no model is named and the zoo names no
# default checkpoint (transreg.zoo.index.DEFAULT_CHECKPOINT); see default_model().
DEFAULT_MODEL = "transmorph_tiny"
#: the affine stage's modes (transreg register --affine); the default is chosen by
#: evaluate/affine_modes.py (best Dice after the affine stage on the test pairs, then time)
AFFINE_MODES = ("learned", "classic", "learned+classic", "none")
#: the accurate mode (``--instance-opt`` without a value): Adam steps on the displacement and
#: the diffusion weight, chosen from the curve measured on the SynthSeg test pairs with
#: transmorph_micro.synth_brain v1 (train/README.md, zoo v2): weight 1 → 0.761 Dice at
#: 25 steps but 0.65-2.8 % folding; weight 5, 50 steps → 0.752 (v1 alone 0.694), 0.03 %
ACCURATE_STEPS = 50
INSTANCE_OPT_WEIGHT = 5.0
#: classic: evaluate/results/affine_v2 (SynthSeg 10-12 whole heads and brains, and zoo v1's
#: SynthSeg test pairs, native and with the moving image turned 30°): classic 0.548 / 0.548
#: mean aseg Dice after the stage in about half the time of learned+classic (0.548 / 0.548;
#: at 60° it is the robust one: 0.492 against 0.322); learned 0.41 (fails on SynthSeg 11)
DEFAULT_AFFINE_MODE = "classic"
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "sample"


def default_model() -> str:
    """The model used when none is named: the zoo's default checkpoint
    (:data:`transreg.zoo.index.DEFAULT_CHECKPOINT`, shipped in the package, no network needed)
    if there is one, else the untrained architecture :data:`DEFAULT_MODEL`."""
    from ..zoo.index import DEFAULT_CHECKPOINT

    return DEFAULT_CHECKPOINT or DEFAULT_MODEL


def sample_pair() -> dict[str, Path]:
    """Paths of the shipped sample pair: ``moving``, ``fixed``, ``moving_labels``, ``fixed_labels``."""
    return {key: SAMPLE_DIR / f"{key}.nii.gz" for key in ("moving", "fixed", "moving_labels", "fixed_labels")}
