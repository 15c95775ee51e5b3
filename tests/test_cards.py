"""Zoo cards: render/parse round trip, the Hub model-card format, the zoo's card↔tag consistency."""
from pathlib import Path

import pytest
from huggingface_hub import ModelCard as HfModelCard

import transreg
from transreg.zoo import registry
from transreg.zoo.factory import ensure_registered
from transreg.zoo.cards import (
    CardError,
    EvalResult,
    ModelCard,
    card_from_config,
    card_text_for,
    check_zoo_cards,
    parse_card,
    render_card,
)
from transreg.zoo.registry import PretrainedTag

ZOO_CARDS = Path(__file__).resolve().parents[1] / "zoo_cards"
SHA1, SHA256 = "c" * 40, "d" * 64
CONFIG = {"architecture": "transmorph_small", "model_args": {"ndim": 3},
          "preprocessing": {"modality": "T1w MRI", "spacing": [1.0, 1.0, 1.0], "orientation": "RAS",
                            "size": [160, 192, 224], "intensity": {"method": "minmax"}},
          "transreg_version": "0.1.0", "format_version": 1}
OASIS = EvalResult("OASIS (Learn2Reg 2021 task 3)", {"dice": 0.8123, "hd95": 1.95, "folding": 0.31, "sdlogj": 0.087},
                   dataset_id="learn2reg-oasis", split="validation")
IXI = EvalResult("IXI atlas-to-patient", {"dice": 0.75, "hd95": 3.5, "folding": 1.2, "sdlogj": 0.11, "dsc30": 0.7})


def full_card(**kw) -> ModelCard:
    fields = dict(name="transmorph_small.synth_brain", version="v1.0.0", hf_hub_id="someorg/transmorph-small-brain",
                  num_parameters=11_757_195, recipe="train/configs/transmorph_small.synth_brain.yaml",
                  summary="TransMorph-Small trained on synthetic brains.",
                  extra_sections={"Citation": "Chen et al., MedIA 2022."})
    fields.update(kw)
    return card_from_config(CONFIG, [OASIS, IXI], **fields)


def test_render_parse_roundtrip():
    card = full_card()
    assert parse_card(render_card(card)) == card
    bare = card_from_config(CONFIG)  # no evaluation, no version yet
    assert parse_card(render_card(bare)) == bare


def test_front_matter_is_a_hub_model_card_with_model_index():
    text = render_card(full_card())
    data = HfModelCard(text).data  # huggingface_hub's own parser of the model-card format
    assert data.license == "apache-2.0" and data.library_name == "transreg"
    assert data.datasets == ["learn2reg-oasis"]
    assert "image-registration" in data.tags
    got = {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert got[("OASIS (Learn2Reg 2021 task 3)", "validation", "dice")] == 0.8123
    assert got[("OASIS (Learn2Reg 2021 task 3)", "validation", "hd95")] == 1.95
    assert got[("IXI atlas-to-patient", None, "folding")] == 1.2
    assert got[("IXI atlas-to-patient", None, "sdlogj")] == 0.11
    assert {r.task_type for r in data.eval_results} == {"image-registration"}


def _table(text: str, heading: str) -> list[list[str]]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row] for row in rows if not set("".join(row)) <= set("-")]


def test_body_has_the_sections_and_the_evaluation_table():
    text = render_card(full_card())
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["Intended use", "Input requirements", "How to use", "Training recipe", "Evaluation",
                        "Limitations", "Citation"]
    table = _table(text, "Evaluation")
    assert table[0] == ["dataset", "split", "Dice", "HD95 (mm)", "folding (%)", "SDlogJ", "dsc30"]
    assert table[1] == ["OASIS (Learn2Reg 2021 task 3)", "validation", "0.8123", "1.95", "0.31", "0.087", "n/a"]
    assert table[2] == ["IXI atlas-to-patient", "", "0.75", "3.5", "1.2", "0.11", "0.7"]
    inputs = dict(_table(text, "Input requirements")[1:])
    assert inputs["voxel spacing"] == "1 × 1 × 1 mm" and inputs["image size"] == "160 × 192 × 224 voxels"
    assert inputs["orientation"] == "RAS" and inputs["intensity normalisation"] == "min-max scaled to [0, 1]"
    assert "train/configs/transmorph_small.synth_brain.yaml" in text.split("## Training recipe")[1]
    assert 'create_model("hf-hub:someorg/transmorph-small-brain@v1.0.0", pretrained=True)' in text


def test_hand_edited_prose_survives_parsing():
    text = render_card(full_card()).replace(
        "## Limitations\n\n", "## Limitations\n\nNot for CT.\n\n```python\n## not a heading\n```\n\n")
    card = parse_card(text)
    assert card.limitations.startswith("Not for CT.\n\n```python\n## not a heading\n```")
    assert "## not a heading" in render_card(card)


@pytest.mark.parametrize("text,message", [
    ("# no front matter\n", "no YAML front matter"),
    ("---\nlicense: [unclosed\n---\n# x\n", "not valid YAML"),
    ("---\nlicense: mit\n---\n# x\n", "no 'transreg' block"),
    ("---\ntransreg: {architecture: transmorph}\nmodel-index: [{name: x, results: [{dataset: {}}]}]\n---\n",
     "model-index is malformed"),
])
def test_malformed_cards_raise_one_clear_error(text, message):
    with pytest.raises(CardError, match=message):
        parse_card(text)


def test_evaluation_results_are_validated():
    with pytest.raises(CardError, match="metric 'dice' on 'OASIS' must be a finite number"):
        EvalResult("OASIS", {"dice": float("nan")})
    with pytest.raises(CardError, match="has no metrics"):
        EvalResult("OASIS", {})


def test_card_text_for_checks_the_architecture():
    assert parse_card(card_text_for(CONFIG, OASIS, num_parameters=5)).evaluations == [OASIS]
    assert parse_card(card_text_for(CONFIG, None)).evaluations == []
    other = render_card(card_from_config({**CONFIG, "architecture": "transmorph"}))
    with pytest.raises(CardError, match="the card describes 'transmorph', the checkpoint is 'transmorph_small'"):
        card_text_for(CONFIG, other)
    with pytest.raises(CardError, match="the card describes 'transmorph'"):
        card_text_for(CONFIG, parse_card(other))
    with pytest.raises(CardError, match="got dict"):
        card_text_for(CONFIG, {"dice": 0.8})
    # a ModelCard takes the checkpoint's preprocessing and parameter count
    card = parse_card(card_text_for(CONFIG, ModelCard(name="x", architecture="transmorph_small"), num_parameters=7))
    assert card.preprocessing == CONFIG["preprocessing"] and card.num_parameters == 7


def test_every_pretrained_tag_has_a_card_and_every_card_a_tag():
    names = transreg.list_models(pretrained=True)
    tags = [registry.pretrained_entry(n) for n in names]
    assert check_zoo_cards(tags, ZOO_CARDS) == []


def test_zoo_card_check_finds_each_kind_of_problem(tmp_path, monkeypatch):
    tag = PretrainedTag(arch="transmorph_small", tag="synth_brain", hf_hub_id="someorg/transmorph-small-brain",
                        version="v1.0.0", revision=SHA1, sha256=SHA256)
    ensure_registered()
    monkeypatch.setitem(registry._PRETRAINED, tag.name, {tag.version: tag})
    tags = [registry.pretrained_entry(tag.name)]  # the check of this one tag (the shipped zoo has its own test)
    assert check_zoo_cards(tags, tmp_path) == [f"pretrained tag {tag.name} has no card {tmp_path / (tag.name + '.md')}"]

    (tmp_path / f"{tag.name}.md").write_text(render_card(full_card()))
    assert check_zoo_cards(tags, tmp_path) == []

    (tmp_path / "transmorph.orphan.md").write_text(render_card(full_card(name="transmorph.orphan")))
    (tmp_path / f"{tag.name}.md").write_text(render_card(full_card(version="v1.1.0")))
    assert check_zoo_cards(tags, tmp_path) == [
        f"card {tmp_path / 'transmorph.orphan.md'} has no pretrained tag transmorph.orphan in the registry",
        f"card {tmp_path / (tag.name + '.md')} says version 'v1.1.0', the registry tag 'v1.0.0'",
    ]


def test_pretrained_tags_are_validated():
    good = dict(arch="transmorph", tag="t", hf_hub_id="o/n", version="v1.0.0", revision=SHA1, sha256=SHA256)
    for field, bad in (("version", "1.0"), ("revision", "main"), ("sha256", "abc"), ("hf_hub_id", "noslash")):
        with pytest.raises(ValueError, match=f"{field} '{bad}' is not"):
            PretrainedTag(**{**good, field: bad})


def test_zoo_cards_are_the_shipped_checkpoints_cards():
    """zoo_cards/ shows the card of each entry's newest shipped version; the checkpoint
    folder's README.md (what a push publishes) is the source, byte for byte."""
    package = Path(transreg.__file__).parent
    shipped = [registry.pretrained_entry(n) for n in transreg.list_models(pretrained=True)]
    shipped = [e for e in shipped if e.local_path]
    assert shipped
    for entry in shipped:
        packaged = (package / entry.local_path / "README.md").read_bytes()
        assert (ZOO_CARDS / f"{entry.name}.md").read_bytes() == packaged, (
            f"zoo_cards/{entry.name}.md differs from {entry.local_path}/README.md: copy the packaged card")
