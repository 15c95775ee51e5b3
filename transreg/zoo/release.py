"""Releasing the zoo (``transreg release``): push every unpublished index entry to the Hub.

For each entry of the zoo index (:mod:`transreg.zoo.index`) whose version has no commit
yet, :func:`release` pushes its checkpoint folder (``config.json``, ``model.safetensors``,
the card ``README.md`` — whose Hub metadata must validate and carry ``model-index``
metrics — and the training recipe as ``recipe.yaml``) to its Hub repo in one commit,
tags it with the version, and writes the commit, the weights' sha256 and size, the
parameter count and the card's metrics into the index file (after each push, so a
release that stops half-way keeps what it published). Published versions never change:
an entry whose folder no longer holds the published weights is refused before anything
is pushed, as is a version tag that already exists on the Hub.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from . import cards
from .checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, count_parameters, sha256_file
from .index import PACKAGE_DIR, SOURCE_ROOT, ZooIndex, write_index
from .registry import PretrainedTag

__all__ = ["ReleaseError", "ReleaseStep", "PACKAGE_DIR", "SOURCE_ROOT", "describe_folder", "package_checkpoint",
           "plan_release", "release", "ship_version"]

RECIPE_NAME = "recipe.yaml"


class ReleaseError(ValueError):
    """An index entry that cannot be released as it stands."""


@dataclass(frozen=True)
class ReleaseStep:
    """One entry of the index and what the release does with it: ``push`` or nothing (``published``)."""

    entry: PretrainedTag
    folder: Path
    recipe: Path | None
    sha256: str
    action: str

    def describe(self) -> str:
        """One line for the release log (and ``--dry-run``)."""
        e = self.entry
        if self.action == "published":
            return f"{e.versioned_name}: published (commit {e.revision}), unchanged"
        size = (self.folder / WEIGHTS_NAME).stat().st_size
        files = [CONFIG_NAME, f"{WEIGHTS_NAME} ({size / 1e6:.1f} MB, sha256 {self.sha256[:12]})", CARD_NAME]
        if self.recipe is not None:
            files.append(f"{RECIPE_NAME} (from {self.recipe})")
        return f"{e.versioned_name}: push to {e.hf_hub_id}, tag {e.version}: {', '.join(files)}"


def package_checkpoint(staged: Path, name: str, card_text: str, package_dir: Path = PACKAGE_DIR,
                       source_root: Path = SOURCE_ROOT, folder: Path | None = None) -> Path:
    """Ship a staged checkpoint: its ``config.json`` and weights with ``card_text`` as
    ``README.md`` into ``assets/zoo/<name>/`` of the package, or into ``folder`` (a release
    folder of the source tree, for a version too large to ship: the index's ``"folder"``),
    and the card as ``zoo_cards/<name>.md`` (the one text both hold) → the folder written."""
    import shutil

    target = folder if folder is not None else package_dir / "assets" / "zoo" / name
    target.mkdir(parents=True, exist_ok=True)
    for fname in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copyfile(staged / fname, target / fname)
    (target / CARD_NAME).write_text(card_text)
    (source_root / "zoo_cards" / f"{name}.md").write_text(card_text)
    return target


def ship_version(staged: Path, name: str, version: str, hf_hub_id: str, card_text: str, recipe: str,
                 index: ZooIndex, *, shipped: bool = True, package_dir: Path = PACKAGE_DIR,
                 source_root: Path = SOURCE_ROOT) -> PretrainedTag:
    """Add version ``version`` of ``name`` (``arch.tag``) to the zoo: the staged checkpoint with
    its card into the package (``shipped``) or into the release folder
    ``train/releases/<name>/<version>`` of the source tree, and its entry (weights' sha256,
    size, parameters, the card's metrics, ``recipe``) into ``index``, which is written.

    One copy of a name ships in the package, so a shipped version first moves the older
    shipped versions of ``name`` to their release folders (index ``"folder"`` entries, pushed
    to the Hub by :func:`release` and loadable from there by version) → the new entry."""
    import shutil

    releases = source_root / "train" / "releases" / name
    for position, entry in enumerate(index.entries):
        if entry.name == name and entry.local_path and entry.version != version:
            target = releases / entry.version
            shutil.copytree(package_dir / entry.local_path, target, dirs_exist_ok=True)
            extra = {**entry.extra, "folder": target.relative_to(source_root).as_posix()}
            index.entries[position] = replace(entry, local_path=None, extra=extra)
    folder = package_checkpoint(staged, name, card_text, package_dir=package_dir, source_root=source_root,
                                folder=None if shipped else releases / version)
    where = {"local_path": folder.relative_to(package_dir).as_posix()} if shipped else {}
    extra = {**describe_folder(folder), "recipe": recipe,
             **({} if shipped else {"folder": folder.relative_to(source_root).as_posix()})}
    arch, tag = name.split(".", 1)
    entry = PretrainedTag(arch=arch, tag=tag, hf_hub_id=hf_hub_id, version=version, revision=None,
                          sha256=sha256_file(folder / WEIGHTS_NAME), extra=extra, **where)
    index.entries = [e for e in index.entries if e.versioned_name != entry.versioned_name] + [entry]
    write_index(index)
    return entry


def describe_folder(folder: Path) -> dict[str, Any]:
    """What the index records about a checkpoint folder: weights size, parameters, card metrics."""
    card = cards.read_card(folder / CARD_NAME)
    evaluations = [{"dataset": ev.dataset, **({"split": ev.split} if ev.split else {}), "metrics": dict(ev.metrics)}
                   for ev in card.evaluations]
    return {"size": (folder / WEIGHTS_NAME).stat().st_size, "parameters": count_parameters(folder),
            "evaluations": evaluations}


def _folder(entry: PretrainedTag, root: Path) -> Path:
    if entry.local_path:
        return PACKAGE_DIR / entry.local_path
    if entry.extra.get("folder"):
        return root / entry.extra["folder"]
    raise ReleaseError(f"{entry.versioned_name}: the index names no folder (\"shipped\" or \"folder\") to release from")


def _check_card(entry: PretrainedTag, folder: Path) -> None:
    path = folder / CARD_NAME
    card = cards.read_card(path)
    for what, have, want in (("name", card.name, entry.name), ("version", card.version, entry.version),
                             ("hf_hub_id", card.hf_hub_id, entry.hf_hub_id)):
        if have != want:
            raise ReleaseError(f"{path}: the card says {what} {have!r}, the index {want!r}")
    cards.check_hub_metadata(path.read_text(encoding="utf-8"), require_metrics=True)


def _step(entry: PretrainedTag, root: Path) -> ReleaseStep:
    folder = _folder(entry, root)
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if not (folder / f).is_file()]
    if missing:
        raise ReleaseError(f"{entry.versioned_name}: {folder} lacks {', '.join(missing)}")
    digest = sha256_file(folder / WEIGHTS_NAME)
    if entry.revision is not None:
        if digest != entry.sha256:
            raise ReleaseError(
                f"{entry.versioned_name} was published at commit {entry.revision} with weights sha256 {entry.sha256}, "
                f"but {folder} now holds {digest}: a published version never changes; add a new version to the index")
        return ReleaseStep(entry, folder, None, digest, "published")
    recipe = None
    if entry.extra.get("recipe"):
        recipe = root / entry.extra["recipe"]
        if not recipe.is_file():
            raise ReleaseError(f"{entry.versioned_name}: its recipe {recipe} does not exist (run the release from a "
                               "transreg source tree, or give its root with --root)")
    try:
        _check_card(entry, folder)
    except cards.CardError as err:
        raise ReleaseError(f"{entry.versioned_name}: {err}") from None
    return ReleaseStep(entry, folder, recipe, digest, "push")


def plan_release(index: ZooIndex, root: str | os.PathLike[str] = SOURCE_ROOT) -> list[ReleaseStep]:
    """Check every entry of ``index`` and say what a release would do; any problem raises
    :class:`ReleaseError` before anything is pushed."""
    return [_step(entry, Path(root)) for entry in index.entries]


def release(index: ZooIndex, root: str | os.PathLike[str] = SOURCE_ROOT, *, dry_run: bool = False,
            token: str | None = None, log: Callable[[str], None] = print) -> list[ReleaseStep]:
    """Push every unpublished entry of ``index`` and record the results in its file.

    Returns the steps (``dry_run``: planned, nothing pushed or written). ``log`` receives
    one line per entry.
    """
    from .publish import push_to_hub

    steps = plan_release(index, root)
    for step in steps:
        log(("[dry run] " if dry_run else "") + step.describe())
        if dry_run or step.action != "push":
            continue
        entry = step.entry
        extra = {RECIPE_NAME: step.recipe} if step.recipe is not None else None
        result = push_to_hub(step.folder, entry.hf_hub_id, entry.version, token=token, extra_files=extra,
                             commit_message=f"{entry.name} {entry.version}")
        published = replace(entry, revision=result.commit, sha256=result.sha256,
                            extra={**entry.extra, **describe_folder(step.folder)})
        index.entries[index.entries.index(entry)] = published
        write_index(index)
        log(f"{entry.versioned_name}: published at commit {result.commit}; index {index.path} updated")
    return steps
