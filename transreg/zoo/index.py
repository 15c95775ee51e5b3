"""The zoo index: every trained checkpoint version, registered as pretrained tags ``arch.tag``.

Each entry pins a Hub repo, the commit of its version tag (``revision``; ``None`` until
``transreg push`` has published it, then the entry loads only from its shipped copy
``local_path``) and the sha256 of its ``model.safetensors``, and has a card
``zoo_cards/<arch.tag>.md`` (a test checks both directions). ``transreg push`` prints the
entry to add here after publishing a version; ``train/zoo_v1.py`` prints the entries of
the checkpoints it packaged. Entries are added only for checkpoints that were trained and
evaluated.

:data:`AFFINE_PRETRAINED` holds the learned affine stage's checkpoints and
:data:`DEFAULT_AFFINE_CHECKPOINT` the one ``transreg register --affine learned`` uses
when neither ``--affine-model`` nor the deformable checkpoint names one.

:data:`DEFAULT_CHECKPOINT` names the entry that ``transreg register`` (without ``--model``)
and ``transreg demo`` use; ``None`` until a trained checkpoint ships, when they fall back
to the untrained architecture :data:`transreg.registration.defaults.DEFAULT_MODEL`.
"""
from __future__ import annotations

from .registry import PretrainedTag, register_pretrained

# zoo v1 (train/zoo_v1.py; recipe train/configs/zoo_v1.yaml; evaluate/results/zoo_v1/)
PRETRAINED: tuple[PretrainedTag, ...] = (
    PretrainedTag(
        arch="voxelmorph2", tag="synth_brain", hf_hub_id="transreg/voxelmorph2-synth-brain",
        version="v1.0.0", revision=None,
        sha256="7d90945668ee0bf07760bf2ca2182e57d1823b8b4867bd20a4730fc819b0395e",
        local_path="assets/zoo/voxelmorph2.synth_brain",
    ),
    PretrainedTag(
        arch="transmorph_micro", tag="synth_brain", hf_hub_id="transreg/transmorph-micro-synth-brain",
        version="v1.0.0", revision=None,
        sha256="7e4c3e5ea8444e626ea545e00eb248e8defd081a3a3c320aa7542e385ec8d3f0",
        local_path="assets/zoo/transmorph_micro.synth_brain",
    ),
    PretrainedTag(
        arch="vitvnet_micro", tag="synth_brain", hf_hub_id="transreg/vitvnet-micro-synth-brain",
        version="v1.0.0", revision=None,
        sha256="1e27375144b11424c44d30b341c7ee82a50163431844136e2927b3455d7a20b9",
        local_path="assets/zoo/vitvnet_micro.synth_brain",
    ),
)

# the learned affine stage (train/affine_v1.py; recipe train/configs/affine_micro_synth_brain.yaml;
# evaluate/results/affine_v1/)
AFFINE_PRETRAINED: tuple[PretrainedTag, ...] = (
    PretrainedTag(
        arch="affine_micro", tag="synth_brain", hf_hub_id="transreg/affine-micro-synth-brain",
        version="v1.0.0", revision=None,
        sha256="55f05b690cf4556bb452f67e60e368068e87f55210846300d9ffacb0529be1dc",
        local_path="assets/zoo/affine_micro.synth_brain",
    ),
)

#: the affine checkpoint of the learned modes of ``transreg register --affine`` (shipped)
DEFAULT_AFFINE_CHECKPOINT = "affine_micro.synth_brain"

#: the default checkpoint (``arch.tag`` of an entry above, shipped in the package) or None
DEFAULT_CHECKPOINT: str | None = "transmorph_micro.synth_brain"

for _tag in (*PRETRAINED, *AFFINE_PRETRAINED):
    register_pretrained(_tag)
