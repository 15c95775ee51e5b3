"""Checkpoints by name: registry tags, ``hf-hub:`` and ``local-dir:`` sources; Hub publishing.

Sources (see :func:`parse_source`):

- ``arch.tag`` — a pretrained registry tag (:mod:`transreg.zoo`); pins the Hub repo, the
  commit of its version tag and the sha256 of ``model.safetensors``. A copy shipped in
  the package (``local_path``) is used before any download.
- ``hf-hub:org/name[@revision]`` — a Hub repo at a version tag, branch or commit sha
  (default ``main``).
- ``local-dir:/path`` — a checkpoint folder on disk.

Downloads go through ``huggingface_hub`` into its cache. ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are read at call time (not only when
``huggingface_hub`` is imported). ``model.safetensors`` is verified after every download
and on every load from the cache: against the registry's pinned sha256, or, for
``hf-hub:`` sources, against the sha256 that the Hub published for the LFS file (its
ETag, which names the cached blob).
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import cards
from .checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_pretrained,
    read_config,
    save_pretrained,
    sha256_file,
    verify_sha256,
    weights_path,
)
from .registry import PretrainedTag, get_pretrained_tag, split_model_name

__all__ = [
    "HubError",
    "NotCachedError",
    "VersionError",
    "Source",
    "ResolvedCheckpoint",
    "PushResult",
    "parse_source",
    "resolve",
    "load_model",
    "pull",
    "push_to_hub",
    "save_pretrained",
    "validate_version",
]

CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
VERSION_RE = re.compile(r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class HubError(ValueError):
    """A Hub repo, revision or version that cannot be used as asked."""


class NotCachedError(HubError):
    """Neither the Hub (offline or unreachable) nor the local cache can serve a revision."""


class VersionError(HubError):
    """A malformed version, or a version tag that already exists (tags never move)."""


def validate_version(version: str) -> str:
    """Return ``version`` if it is ``vMAJOR.MINOR.PATCH`` (e.g. ``v1.1.0``), else raise :class:`VersionError`."""
    if not isinstance(version, str) or VERSION_RE.fullmatch(version) is None:
        raise VersionError(f"version {version!r} is not of the form vMAJOR.MINOR.PATCH, e.g. v1.1.0")
    return version


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from. ``kind``: ``'registry'``, ``'hf-hub'`` or ``'local-dir'``."""

    kind: str
    name: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None
    tag: PretrainedTag | None = None


def parse_source(name: str) -> Source:
    """Parse a checkpoint name (see the module docstring); unknown tags raise ``UnknownModelError``."""
    if name.startswith("local-dir:"):
        path = name[len("local-dir:"):]
        if not path:
            raise CheckpointError("local-dir: needs a folder, e.g. local-dir:/path/to/checkpoint")
        return Source("local-dir", name, path=Path(path).expanduser())
    if name.startswith("hf-hub:"):
        repo_id, _, revision = name[len("hf-hub:"):].partition("@")
        if _REPO_RE.fullmatch(repo_id) is None:
            raise HubError(f"{name!r}: expected hf-hub:ORG/NAME[@REVISION], e.g. hf-hub:someorg/transmorph-small@v1.0.0")
        return Source("hf-hub", name, repo_id=repo_id, revision=revision or "main")
    if split_model_name(name)[1] is None:
        raise CheckpointError(
            f"{name!r} is an architecture, not a checkpoint: name a pretrained tag (arch.tag, see "
            f"`transreg list --pretrained`), hf-hub:ORG/NAME[@REVISION] or local-dir:/path"
        )
    tag = get_pretrained_tag(name)
    return Source("registry", name, repo_id=tag.hf_hub_id, revision=tag.revision, tag=tag)


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint folder on disk and what is known about it.

    ``commit``: the Hub commit sha (``None`` for local folders); ``sha256``: the verified
    digest of ``model.safetensors`` (``None`` when nothing pinned or published it);
    ``verified_by``: who published that digest.
    """

    source: Source
    folder: Path
    commit: str | None = None
    sha256: str | None = None
    verified_by: str | None = None


# --- huggingface_hub settings, read at call time ----------------------------------------------

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline() -> bool:
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str | None:
    endpoint = os.environ.get("HF_ENDPOINT")
    return endpoint.rstrip("/") if endpoint else None


def _cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _api(token: str | None = None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint(), token=token, library_name="transreg")


# --- download and verify ----------------------------------------------------------------------

def _download(repo_id: str, revision: str, force_download: bool = False) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` in the Hub cache (downloaded if needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    where = f"{repo_id}@{revision}"
    if offline and force_download:
        raise NotCachedError(f"cannot download {where} again: offline mode (HF_HUB_OFFLINE=1) is on")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(CHECKPOINT_FILES),
            cache_dir=_cache_dir(),
            endpoint=_endpoint(),
            local_files_only=offline,
            force_download=force_download,
            library_name="transreg",
        )
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r} (a version tag, branch or commit sha)") from None
    except RepositoryNotFoundError:
        raise HubError(f"Hub repo {repo_id} does not exist (or is private) at {_endpoint() or 'huggingface.co'}") from None
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else (
            f"the Hub ({_endpoint() or 'https://huggingface.co'}) cannot be reached"
        )
        raise NotCachedError(
            f"cannot load {where}: {why} and this revision is not in the local cache {_cache_dir()}; "
            f"download it once with network (`transreg pull hf-hub:{where}`)"
        ) from None
    return Path(folder)


def _published_sha256(path: Path) -> str | None:
    """The sha256 the Hub published for a cached LFS file: its ETag, which names the blob."""
    if not path.is_symlink():
        return None
    blob = Path(os.path.realpath(path)).name
    return blob if _SHA256_RE.fullmatch(blob) else None


def _require_files(folder: Path, where: str) -> None:
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{where} is not a transreg checkpoint: {', '.join(missing)} missing")


def resolve(name: str, force_download: bool = False) -> ResolvedCheckpoint:
    """Find (download if needed) the checkpoint folder of ``name`` and verify its weights' sha256."""
    source = parse_source(name)
    if source.kind == "local-dir":
        assert source.path is not None
        if not source.path.is_dir():
            raise CheckpointError(f"checkpoint folder {source.path} does not exist")
        weights_path(source.path)
        return ResolvedCheckpoint(source, source.path)
    tag = source.tag
    if tag is not None and tag.local_path and not force_download:
        bundled = Path(__file__).parent / tag.local_path
        if (bundled / WEIGHTS_NAME).is_file():
            digest = verify_sha256(weights_path(bundled), tag.sha256, f"pinned by registry tag {tag.name}")
            return ResolvedCheckpoint(source, bundled, tag.revision, digest, f"registry tag {tag.name}")
    if tag is not None and tag.revision is None:
        raise CheckpointError(
            f"{tag.name} {tag.version} is not on the Hub yet (its registry tag pins no revision) and its shipped "
            f"copy {Path(__file__).parent / str(tag.local_path)} is missing: reinstall transreg"
        )
    assert source.repo_id is not None and source.revision is not None
    folder = _download(source.repo_id, source.revision, force_download)
    where = f"{source.repo_id}@{source.revision}"
    _require_files(folder, where)
    weights = weights_path(folder)
    published = _published_sha256(weights)
    if tag is not None:
        origin = f"pinned by registry tag {tag.name}"
        digest = verify_sha256(weights, tag.sha256, origin)
        if published is not None and published != tag.sha256:
            raise CheckpointError(f"{where}: the Hub serves weights with sha256 {published}, {origin} is {tag.sha256}")
        return ResolvedCheckpoint(source, folder, folder.name, digest, f"registry tag {tag.name}")
    if published is not None:
        digest = verify_sha256(weights, published, f"published by the Hub for {where}")
        return ResolvedCheckpoint(source, folder, folder.name, digest, "Hub LFS sha256")
    return ResolvedCheckpoint(source, folder, folder.name)


def load_model(name: str, **overrides: Any) -> nn.Module:
    """Build and strictly load a pretrained checkpoint (what ``create_model(name, pretrained=True)`` calls).

    ``overrides`` replace stored model arguments that leave the weights' shapes alone
    (e.g. ``grad_checkpointing=True``). The model is in ``eval()`` mode on the CPU, with
    ``.preprocessing`` and ``.pretrained_source`` (the resolved checkpoint) set.
    """
    resolved = resolve(name)
    expected_arch = resolved.source.tag.arch if resolved.source.tag is not None else None
    model = load_pretrained(resolved.folder, expected_architecture=expected_arch, **overrides)
    model.pretrained_source = resolved
    return model


def pull(name: str, out_dir: str | os.PathLike[str] | None = None, force_download: bool = False) -> ResolvedCheckpoint:
    """Download and verify a checkpoint; with ``out_dir``, also copy its files there (plain files)."""
    resolved = resolve(name, force_download=force_download)
    if out_dir is None:
        return resolved
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fname in CHECKPOINT_FILES:
        if (resolved.folder / fname).is_file():
            shutil.copyfile(resolved.folder / fname, out / fname)
    return ResolvedCheckpoint(resolved.source, out, resolved.commit, resolved.sha256, resolved.verified_by)


# --- publish ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushResult:
    """A published version: ``commit`` is the sha its tag points to, ``sha256`` the weights' digest."""

    repo_id: str
    version: str
    commit: str
    sha256: str
    architecture: str

    def pretrained_tag(self, name: str) -> str:
        """Python source of the :class:`~transreg.registry.PretrainedTag` ``name`` (``arch.tag``) pinning this version."""
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
    if _REPO_RE.fullmatch(repo_id) is None:
        raise HubError(f"repo id {repo_id!r} must be ORG/NAME")
    if _offline():
        raise HubError(f"cannot push to {repo_id}: offline mode (HF_HUB_OFFLINE=1) is on")
    folder = Path(folder)
    config = read_config(folder)
    weights = weights_path(folder)
    load_pretrained(folder)  # refuse to publish weights that do not load strictly
    card = _stamped_card(folder, repo_id, version, config["architecture"])
    digest = sha256_file(weights)

    api = _api(token)
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
