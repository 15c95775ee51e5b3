"""``transreg finetune``: continue training a trained checkpoint on new data.

``transreg finetune --from NAME_OR_FOLDER --data DIR_OR_CSV -o OUT/ [--freeze-encoder]
[--lr 1e-5] [--steps N] [--recipe RECIPE.yaml] [--set key=value ...]``

``--from`` is a registry tag (``transmorph_small.synth_brain``), an ``hf-hub:`` id or a
checkpoint folder. The data are preprocessed as the checkpoint expects (its recorded
size and spacing) unless ``--size`` / ``--set data.spacing=...`` say otherwise. The
default learning rate is 1e-5 (a tenth of the usual 1e-4).
"""
from __future__ import annotations

import argparse

from .train import add_common_arguments, fit, flag_overrides, resolve_config

DEFAULT_LR = 1e-5
DEFAULT_STEPS = 1000


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a trained checkpoint on a folder/CSV of NIfTI images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, metavar="NAME_OR_FOLDER",
                   help="registry tag, hf-hub:org/name[@version] or checkpoint folder")
    p.add_argument("--out", "-o", required=True, help="run folder")
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder and flow head only")
    p.add_argument("--recipe", help="a YAML recipe for everything else (loss, schedule, ...)")
    add_common_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..zoo.checkpoint import jsonable
    from ..zoo.factory import create_model, resolve_source

    overrides = flag_overrides(args)
    if args.freeze_encoder:
        overrides["model.freeze_encoder"] = True
    if not args.recipe:
        overrides.setdefault("optim.lr", DEFAULT_LR)
        overrides.setdefault("run.steps", DEFAULT_STEPS)
    source = resolve_source(args.source).name  # a folder becomes local-dir:/abs/path
    model = create_model(source, pretrained=True)
    overrides["model.pretrained"] = source
    overrides["model.name"] = model.architecture
    overrides["model.args"] = jsonable(model.init_args, "model.args")
    expected = dict(getattr(model, "preprocessing", None) or {})
    if expected.get("size") and "data.size" not in overrides:
        overrides["data.size"] = list(expected["size"])
    if expected.get("spacing") and "data.spacing" not in overrides:
        spacing = expected["spacing"]
        overrides["data.spacing"] = list(spacing) if isinstance(spacing, (list, tuple)) else [spacing] * model.ndim
    config = resolve_config(args.recipe, overrides, args.resume)
    return fit(config, args.resume, model=model)
