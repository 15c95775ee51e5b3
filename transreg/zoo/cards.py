"""Zoo cards: the ``README.md`` of a checkpoint, in the Hugging Face model-card format.

A card is YAML front matter followed by Markdown. The front matter holds the Hub
metadata (``license``, ``library_name``, ``tags``, ``datasets``, ``model-index`` with
Dice, HD95, folding and SDlogJ per named dataset) and a ``transreg`` block (name,
architecture, version, Hub repo, parameter count, preprocessing, training recipe). The
body has the sections *Intended use*, *Input requirements*, *How to use*, *Training
recipe*, *Evaluation* and *Limitations*; the generated ones are rebuilt from the front
matter, the prose ones (and any extra ``##`` sections) are kept verbatim, so
``parse_card(render_card(card)) == card``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from .preprocessing import describe_intensity

__all__ = [
    "METRICS",
    "CardError",
    "EvalResult",
    "ModelCard",
    "render_card",
    "parse_card",
    "read_card",
    "card_from_config",
    "card_text_for",
    "check_zoo_cards",
    "format_axes",
]

# metric key -> (column title, description); the keys are the model-index metric types
METRICS: dict[str, tuple[str, str]] = {
    "dice": ("Dice", "mean Dice over structures, mean over pairs"),
    "hd95": ("HD95 (mm)", "95th percentile Hausdorff distance, millimetres"),
    "folding": ("folding (%)", "percentage of voxels with Jacobian determinant <= 0"),
    "sdlogj": ("SDlogJ", "standard deviation of the log Jacobian determinant"),
}
_TASK = {"type": "image-registration", "name": "Deformable image registration"}
_INTENDED_USE = (
    "Deformable registration of a moving image onto a fixed image of the same modality and "
    "anatomy, preprocessed as listed under *Input requirements*. Research use; not a medical device."
)
_LIMITATIONS = (
    "Accuracy is only known on the datasets listed under *Evaluation*. Other modalities, "
    "anatomies, resolutions or pathologies may register poorly; check the folding "
    "percentage and a visual overlay of every result."
)
_GENERATED = ("Input requirements", "How to use", "Training recipe", "Evaluation")
_PROSE = {"Intended use": "intended_use", "Limitations": "limitations"}


class CardError(ValueError):
    """A card that cannot be parsed, or that contradicts its checkpoint."""


@dataclass
class EvalResult:
    """Metrics of one evaluation: ``metrics`` maps :data:`METRICS` keys (and optional
    others, e.g. ``dsc30``, ``tre``) to numbers; ``dataset`` is a display name,
    ``dataset_id`` the Hub dataset id or a short slug (used in ``datasets:``)."""

    dataset: str
    metrics: dict[str, float]
    dataset_id: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if not self.dataset:
            raise CardError("an evaluation result needs a dataset name")
        if not self.metrics:
            raise CardError(f"the evaluation on {self.dataset!r} has no metrics")
        for key, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CardError(f"metric {key!r} on {self.dataset!r} must be a finite number, got {value!r}")
        self.metrics = {k: float(v) for k, v in self.metrics.items()}


@dataclass
class ModelCard:
    """Everything a zoo card states; render with :func:`render_card`."""

    name: str
    architecture: str
    version: str | None = None
    hf_hub_id: str | None = None
    num_parameters: int | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    evaluations: list[EvalResult] = field(default_factory=list)
    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    recipe: str | None = None
    summary: str = ""
    intended_use: str = _INTENDED_USE
    limitations: str = _LIMITATIONS
    extra_sections: dict[str, str] = field(default_factory=dict)


def format_axes(value: Any, unit: str = "") -> str:
    """``[1, 1, 1.5]`` → ``'1 × 1 × 1.5 mm'``; ``None`` → ``'not specified'``."""
    if value is None:
        return "not specified"
    if isinstance(value, (list, tuple)):
        text = " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def intensity_text(value: Any) -> str:
    """The intensity normalisation for people: a typed record (format 2) described, the
    prose of a format-1 card as written."""
    return describe_intensity(value) if isinstance(value, Mapping) else format_axes(value)


def _load_name(card: ModelCard) -> str:
    if card.hf_hub_id and card.version:
        return f"hf-hub:{card.hf_hub_id}@{card.version}"
    if "." in card.name:
        return card.name
    return "local-dir:/path/to/this/checkpoint"


def _front_matter(card: ModelCard) -> dict[str, Any]:
    meta: dict[str, Any] = {"license": card.license, "library_name": "transreg", "tags": list(card.tags)}
    if card.datasets:
        meta["datasets"] = list(card.datasets)
    if card.evaluations:
        results = []
        for ev in card.evaluations:
            dataset = {"name": ev.dataset, "type": ev.dataset_id or ev.dataset}
            if ev.split:
                dataset["split"] = ev.split
            metrics = [{"type": k, "value": v, "name": METRICS.get(k, (k,))[0]} for k, v in ev.metrics.items()]
            results.append({"task": dict(_TASK), "dataset": dataset, "metrics": metrics})
        meta["model-index"] = [{"name": card.name, "results": results}]
    meta["transreg"] = {
        "name": card.name,
        "architecture": card.architecture,
        "version": card.version,
        "hf_hub_id": card.hf_hub_id,
        "num_parameters": card.num_parameters,
        "preprocessing": dict(card.preprocessing),
        "recipe": card.recipe,
    }
    return meta


def _input_section(card: ModelCard) -> str:
    p = card.preprocessing
    rows = [
        ("modality", format_axes(p.get("modality"))),
        ("voxel spacing", format_axes(p.get("spacing"), "mm")),
        ("orientation", format_axes(p.get("orientation"))),
        ("image size", format_axes(p.get("size"), "voxels")),
        ("intensity normalisation", intensity_text(p.get("intensity"))),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "| | |\n|---|---|\n" + table + "\n\nMoving and fixed images are `(B, 1, *spatial)` tensors on the same "
        "grid; other sizes work (the model pads to its size divisor) but accuracy is only known at the size above."
    )


def _evaluation_section(card: ModelCard) -> str:
    if not card.evaluations:
        return "No evaluation recorded yet."
    keys = list(METRICS) + sorted({k for ev in card.evaluations for k in ev.metrics} - set(METRICS))
    head = "| dataset | split | " + " | ".join(METRICS.get(k, (k,))[0] for k in keys) + " |"
    rule = "|" + "---|" * (len(keys) + 2)
    rows = [
        f"| {ev.dataset} | {ev.split or ''} | "
        + " | ".join(f"{ev.metrics[k]:.4g}" if k in ev.metrics else "n/a" for k in keys)
        + " |"
        for ev in card.evaluations
    ]
    notes = "; ".join(f"{METRICS[k][0]}: {METRICS[k][1]}" for k in METRICS)
    return "\n".join([head, rule, *rows]) + f"\n\n{notes}."


def render_card(card: ModelCard) -> str:
    """The card's Markdown text, front matter included."""
    meta = yaml.safe_dump(_front_matter(card), sort_keys=False, allow_unicode=True)
    recipe = (
        f"Trained with the recipe `{card.recipe}` of the transreg source tree (see `train/` to reproduce)."
        if card.recipe else "No training recipe recorded."
    )
    usage = (
        "```python\nimport transreg\n"
        f'model = transreg.create_model("{_load_name(card)}", pretrained=True)\n'
        "out = model(moving, fixed)  # out.flow: displacement in voxels on the fixed grid\n```"
    )
    sections = {
        "Intended use": card.intended_use,
        "Input requirements": _input_section(card),
        "How to use": usage,
        "Training recipe": recipe,
        "Evaluation": _evaluation_section(card),
        "Limitations": card.limitations,
        **card.extra_sections,
    }
    title = f"# {card.name}\n\n" + (f"{card.summary}\n\n" if card.summary else "")
    body = "".join(f"## {head}\n\n{text.strip()}\n\n" for head, text in sections.items())
    return f"---\n{meta}---\n\n{title}{body}".rstrip() + "\n"


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = re.match(r"---\r?\n(.*?)\r?\n---\r?\n?(.*)\Z", text, flags=re.S)
    if match is None:
        raise CardError("the card has no YAML front matter (a first line '---', then YAML, then '---')")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise CardError(f"the card's front matter is not valid YAML: {err}") from None
    if not isinstance(meta, dict):
        raise CardError("the card's front matter must be a YAML mapping")
    return meta, match.group(2)


def _sections(body: str) -> tuple[str, dict[str, str]]:
    """Split the Markdown body into (text before the first '## ', {heading: text}); code fences respected."""
    preamble: list[str] = []
    sections: dict[str, list[str]] = {}
    current = preamble
    fenced = False
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
            continue
        current.append(line)
    return "\n".join(preamble).strip(), {k: "\n".join(v).strip() for k, v in sections.items()}


def _evaluations(meta: Mapping[str, Any]) -> list[EvalResult]:
    index = meta.get("model-index") or []
    results = []
    try:
        for entry in index:
            for result in entry.get("results", []):
                ds = result["dataset"]
                metrics = {m["type"]: m["value"] for m in result["metrics"]}
                dataset_id = ds.get("type")
                results.append(EvalResult(ds["name"], metrics, None if dataset_id == ds["name"] else dataset_id,
                                          ds.get("split")))
    except (KeyError, TypeError, AttributeError) as err:
        raise CardError(f"the card's model-index is malformed ({err!r})") from None
    return results


def parse_card(text: str) -> ModelCard:
    """Read a card rendered by :func:`render_card` (or written by hand in the same format)."""
    meta, body = _split_front_matter(text)
    info = meta.get("transreg")
    if not isinstance(info, dict) or not info.get("architecture"):
        raise CardError("the card's front matter has no 'transreg' block with an 'architecture'")
    preamble, sections = _sections(body)
    title, _, summary = preamble.partition("\n")
    name = info.get("name") or title.removeprefix("# ").strip() or info["architecture"]
    prose = {attr: sections[head] for head, attr in _PROSE.items() if head in sections}
    extra = {h: t for h, t in sections.items() if h not in _GENERATED and h not in _PROSE}
    return ModelCard(
        name=name,
        architecture=info["architecture"],
        version=info.get("version"),
        hf_hub_id=info.get("hf_hub_id"),
        num_parameters=info.get("num_parameters"),
        preprocessing=dict(info.get("preprocessing") or {}),
        evaluations=_evaluations(meta),
        license=meta.get("license", "other"),
        datasets=list(meta.get("datasets") or []),
        tags=list(meta.get("tags") or []),
        recipe=info.get("recipe"),
        summary=summary.strip(),
        extra_sections=extra,
        **prose,
    )


def read_card(path: str | Path) -> ModelCard:
    """Parse the card file at ``path`` (errors name the file)."""
    try:
        return parse_card(Path(path).read_text(encoding="utf-8"))
    except CardError as err:
        raise CardError(f"{path}: {err}") from None


def card_from_config(
    config: Mapping[str, Any],
    evaluations: Sequence[EvalResult] = (),
    *,
    name: str | None = None,
    num_parameters: int | None = None,
    **fields: Any,
) -> ModelCard:
    """A card for a checkpoint's ``config.json`` content and its evaluation results.

    ``fields`` set any other :class:`ModelCard` field (``license``, ``recipe``,
    ``intended_use``, ...). ``datasets`` defaults to the evaluations' dataset ids.
    """
    evaluations = list(evaluations)
    datasets = fields.pop("datasets", None)
    if datasets is None:
        datasets = list(dict.fromkeys(ev.dataset_id for ev in evaluations if ev.dataset_id))
    architecture = config["architecture"]
    tags = fields.pop("tags", ["transreg", "image-registration", "medical-imaging", architecture])
    return ModelCard(
        name=name or architecture,
        architecture=architecture,
        num_parameters=num_parameters,
        preprocessing=dict(config.get("preprocessing") or {}),
        evaluations=evaluations,
        datasets=datasets,
        tags=tags,
        **fields,
    )


def card_text_for(config: Mapping[str, Any], card: Any, num_parameters: int | None = None) -> str:
    """The README text :func:`transreg.save_pretrained` writes for ``card``.

    ``card`` is ``None``, an :class:`EvalResult`, a list of them, a :class:`ModelCard`
    (its architecture must match; preprocessing and parameter count are taken from the
    checkpoint) or a complete card text (validated, kept verbatim).
    """
    architecture = config["architecture"]
    if isinstance(card, str):
        parsed = parse_card(card)
        if parsed.architecture != architecture:
            raise CardError(f"the card describes {parsed.architecture!r}, the checkpoint is {architecture!r}")
        return card
    if isinstance(card, ModelCard):
        if card.architecture != architecture:
            raise CardError(f"the card describes {card.architecture!r}, the checkpoint is {architecture!r}")
        return render_card(replace(card, preprocessing=dict(config["preprocessing"]), num_parameters=num_parameters))
    if isinstance(card, EvalResult):
        card = [card]
    if card is None:
        card = []
    if not isinstance(card, (list, tuple)) or not all(isinstance(ev, EvalResult) for ev in card):
        raise CardError(
            f"card must be None, an EvalResult or a list of them, a ModelCard or the card text; got {type(card).__name__}"
        )
    return render_card(card_from_config(config, card, num_parameters=num_parameters))


def check_zoo_cards(tags: Iterable[Any], cards_dir: str | Path) -> list[str]:
    """Problems between pretrained registry tags and the cards in ``cards_dir`` (empty: consistent).

    Every tag ``arch.tag`` needs ``cards_dir/arch.tag.md``, every card a tag, and a card's
    architecture, version and Hub repo must be the tag's.
    """
    tags = {t.name: t for t in tags}
    cards = {p.name[: -len(".md")]: p for p in sorted(Path(cards_dir).glob("*.md"))}
    problems = [f"pretrained tag {n} has no card {Path(cards_dir) / (n + '.md')}" for n in sorted(set(tags) - set(cards))]
    problems += [f"card {cards[n]} has no pretrained tag {n} in the registry" for n in sorted(set(cards) - set(tags))]
    for name in sorted(set(tags) & set(cards)):
        try:
            card = read_card(cards[name])
        except CardError as err:
            problems.append(str(err))
            continue
        tag = tags[name]
        for what, card_value, tag_value in (
            ("name", card.name, tag.name),
            ("architecture", card.architecture, tag.arch),
            ("version", card.version, tag.version),
            ("hf_hub_id", card.hf_hub_id, tag.hf_hub_id),
        ):
            if card_value != tag_value:
                problems.append(f"card {cards[name]} says {what} {card_value!r}, the registry tag {tag_value!r}")
    return problems
