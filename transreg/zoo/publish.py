"""Publishing a checkpoint folder as a version of a Hub repo (``transreg push``).

A version is a Hub git tag ``vMAJOR.MINOR.PATCH`` on the commit that holds the folder's
``config.json``, ``model.safetensors`` and ``README.md`` (the zoo card stamped with the
version and repo); tags never move.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import cards
from .checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_config, sha256_file, weights_path
from .factory import load_checkpoint
from .hub import VERSION_RE, HubError, VersionError, hub_api, is_offline, validate_version
from .sources import REPO_ID_RE

__all__ = ["PushResult", "push_to_hub"]


@dataclass(frozen=True)
class PushResult:
    """A published version: ``commit`` is the sha its tag points to, ``sha256`` the weights' digest."""

    repo_id: str
    version: str
    commit: str
    sha256: str
    architecture: str

    def pretrained_tag(self, name: str) -> str:
        """Python source of the :class:`~transreg.zoo.registry.PretrainedTag` ``name`` (``arch.tag``) pinning this version."""
        arch, _, tag = name.partition(".")
        if arch != self.architecture or not tag:
            raise HubError(f"pretrained tag {name!r} must be {self.architecture}.TAG")
        return (
            f"PretrainedTag(arch={self.architecture!r}, tag={tag!r}, hf_hub_id={self.repo_id!r}, "
            f"version={self.version!r}, revision={self.commit!r}, sha256={self.sha256!r})"
        )


def _stamped_card(folder: Path, repo_id: str, version: str, architecture: str) -> bytes:
    path = folder / CARD_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CARD_NAME} (the zoo card): write the folder with transreg.save_pretrained")
    card = cards.read_card(path)
    if card.architecture != architecture:
        raise cards.CardError(f"{path} describes {card.architecture!r}, {CONFIG_NAME} says {architecture!r}")
    card.version, card.hf_hub_id = version, repo_id
    return cards.render_card(card).encode()


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    version: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Publish a checkpoint folder as ``version`` of the Hub repo ``repo_id``.

    Checks the folder (config, safetensors weights, card, strict load), creates the repo
    if needed, uploads ``config.json``, ``model.safetensors`` and ``README.md`` (the card,
    stamped with ``version`` and ``repo_id``) in one commit on ``main`` and tags that
    commit ``version`` (``vMAJOR.MINOR.PATCH``). An existing tag is never moved.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    validate_version(version)
    if REPO_ID_RE.fullmatch(repo_id) is None:
        raise HubError(f"repo id {repo_id!r} must be ORG/NAME")
    if is_offline():
        raise HubError(f"cannot push to {repo_id}: offline mode (HF_HUB_OFFLINE=1) is on")
    folder = Path(folder)
    config = read_config(folder)
    weights = weights_path(folder)
    load_checkpoint(folder)  # refuse to publish weights that do not load strictly
    card = _stamped_card(folder, repo_id, version, config["architecture"])
    digest = sha256_file(weights)

    api = hub_api(token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    existing = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).tags}
    if version in existing:
        raise VersionError(
            f"{repo_id} already has version {version} (commit {existing[version]}); versions never move: "
            f"publish a new one, e.g. {_next_patch(version)}"
        )
    operations = [
        CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
        CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(weights)),
        CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card),
    ]
    commit = api.create_commit(
        repo_id, operations, commit_message=commit_message or f"{config['architecture']} {version}", revision="main"
    )
    try:
        api.create_tag(repo_id, tag=version, revision=commit.oid, tag_message=f"transreg checkpoint {version}")
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 409:
            raise VersionError(f"{repo_id} already has version {version} (created concurrently); versions never move") from None
        raise
    return PushResult(repo_id, version, commit.oid, digest, config["architecture"])


def _next_patch(version: str) -> str:
    major, minor, patch = VERSION_RE.fullmatch(version).groups()  # type: ignore[union-attr]
    return f"v{major}.{minor}.{int(patch) + 1}"
