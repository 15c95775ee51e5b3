"""Checkpoint folders for resolved sources: the shipped copy, the Hub cache or a download; Hub publishing.

:func:`resolve` takes a :class:`~transreg.zoo.sources.ModelSource` (what
:func:`transreg.zoo.factory.resolve_source` made of a name) and returns the folder:

- a zoo entry (``arch.tag[@version]``) pins the Hub repo, the commit of its version tag
  and the sha256 of ``model.safetensors``; a copy shipped in the package
  (``local_path``) is used before any download;
- ``hf-hub:org/name[@revision]`` — a Hub repo at a version tag, branch or commit sha;
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

from .checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    sha256_file,
    verify_sha256,
    weights_path,
)
from .registry import VERSION_PATTERN, PretrainedTag
from .sources import ModelSource

__all__ = [
    "HubError",
    "NotCachedError",
    "VersionError",
    "ResolvedCheckpoint",
    "resolve",
    "pull",
    "validate_version",
    "is_offline",
    "hub_api",
    "location",
    "is_cached",
    "shipped_folder",
]

CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
VERSION_RE = re.compile(VERSION_PATTERN)
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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
class ResolvedCheckpoint:
    """A checkpoint folder on disk and what is known about it.

    ``commit``: the Hub commit sha (``None`` for local folders); ``sha256``: the verified
    digest of ``model.safetensors`` (``None`` when nothing pinned or published it);
    ``verified_by``: who published that digest.
    """

    source: ModelSource
    folder: Path
    commit: str | None = None
    sha256: str | None = None
    verified_by: str | None = None


# --- huggingface_hub settings, read at call time ----------------------------------------------

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
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


def hub_api(token: str | None = None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint(), token=token, library_name="transreg")


# --- download and verify ----------------------------------------------------------------------

def _download(repo_id: str, revision: str, force_download: bool = False, what: str | None = None,
              pull_name: str | None = None) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` in the Hub cache (downloaded if needed).
    ``what`` names the checkpoint in errors, ``pull_name`` the name to give ``transreg pull``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_offline()
    where = what or f"{repo_id}@{revision}"
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
            f"download it once with network (`transreg pull {pull_name or 'hf-hub:' + where}`)"
        ) from None
    return Path(folder)


def shipped_folder(tag: PretrainedTag) -> Path | None:
    """The folder of the copy of ``tag`` shipped in the package (``None`` if it ships none)."""
    return Path(__file__).parent.parent / tag.local_path if tag.local_path else None


def _shipped_state(tag: PretrainedTag) -> tuple[Path | None, str]:
    """The shipped copy of ``tag`` and its state: ``none``, ``missing``, ``corrupted`` or ``ok``."""
    folder = shipped_folder(tag)
    if folder is None:
        return None, "none"
    if not (folder / WEIGHTS_NAME).is_file():
        return folder, "missing"
    return folder, "ok" if sha256_file(folder / WEIGHTS_NAME) == tag.sha256 else "corrupted"


def is_cached(tag: PretrainedTag) -> bool:
    """True when the weights of ``tag`` at its pinned commit are in the Hub cache (not verified here)."""
    from huggingface_hub import try_to_load_from_cache

    if tag.revision is None:
        return False
    found = try_to_load_from_cache(tag.hf_hub_id, WEIGHTS_NAME, cache_dir=_cache_dir(), revision=tag.revision)
    return isinstance(found, str)


def location(tag: PretrainedTag) -> str:
    """Where loading ``tag`` takes its weights from: ``package`` (the shipped copy, same sha256),
    ``cache`` (the Hub cache), ``Hub`` (a download) or ``unavailable``."""
    if _shipped_state(tag)[1] == "ok":
        return "package"
    if tag.revision is None:
        return "unavailable"
    return "cache" if is_cached(tag) else "Hub"


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


def resolve(source: ModelSource, force_download: bool = False) -> ResolvedCheckpoint:
    """Find (download if needed) the checkpoint folder of ``source`` and verify its weights' sha256."""
    if source.kind == "architecture":
        raise CheckpointError(
            f"{source.name!r} is an architecture, not a checkpoint: name a pretrained tag (arch.tag, see "
            f"`transreg list --pretrained`), hf-hub:ORG/NAME[@REVISION] or local-dir:/path"
        )
    if source.kind == "local-dir":
        assert source.path is not None
        if not source.path.is_dir():
            raise CheckpointError(f"checkpoint folder {source.path} does not exist")
        weights_path(source.path)
        return ResolvedCheckpoint(source, source.path)
    tag = source.tag
    if tag is not None:
        return _resolve_tag(source, tag, force_download)
    assert source.repo_id is not None and source.revision is not None
    folder = _download(source.repo_id, source.revision, force_download)
    where = f"{source.repo_id}@{source.revision}"
    _require_files(folder, where)
    weights = weights_path(folder)
    published = _published_sha256(weights)
    if published is not None:
        digest = verify_sha256(weights, published, f"published by the Hub for {where}")
        return ResolvedCheckpoint(source, folder, folder.name, digest, "Hub LFS sha256")
    return ResolvedCheckpoint(source, folder, folder.name)


def _resolve_tag(source: ModelSource, tag: PretrainedTag, force_download: bool) -> ResolvedCheckpoint:
    """A zoo entry: its shipped copy when it is the pinned file, else its Hub repo at the pinned commit."""
    shipped, state = _shipped_state(tag)
    by = f"registry tag {tag.name}"
    if state == "ok" and not force_download:
        return ResolvedCheckpoint(source, shipped, tag.revision, tag.sha256, by)
    if tag.revision is None:
        if state == "ok":
            raise HubError(f"{tag.versioned_name} is not on the Hub yet (the zoo index pins no commit), so there is "
                           f"nothing to download; its shipped copy {shipped} is intact (sha256 {tag.sha256})")
        if state == "none":
            raise CheckpointError(f"{tag.versioned_name} is not on the Hub yet (the zoo index pins no commit) and "
                                  "the package ships no copy: it must be published first (`transreg release`)")
        problem = (f"its shipped copy {shipped} is corrupted (the sha256 of {WEIGHTS_NAME} is not the pinned "
                   f"{tag.sha256})" if state == "corrupted" else f"its shipped copy {shipped} is missing")
        raise CheckpointError(f"{tag.versioned_name} is not on the Hub yet (the zoo index pins no commit) and "
                              f"{problem}: reinstall transreg")
    what = f"{tag.versioned_name} (Hub repo {tag.hf_hub_id}, commit {tag.revision})"
    folder = _download(tag.hf_hub_id, tag.revision, force_download, what, tag.versioned_name)
    _require_files(folder, what)
    weights = weights_path(folder)
    digest = verify_sha256(weights, tag.sha256, f"pinned by {by}", tag.versioned_name)
    published = _published_sha256(weights)
    if published is not None and published != tag.sha256:
        raise CheckpointError(f"{what}: the Hub serves weights with sha256 {published}, pinned by {by} is {tag.sha256}")
    return ResolvedCheckpoint(source, folder, folder.name, digest, by)


def pull(source: ModelSource, out_dir: str | os.PathLike[str] | None = None,
         force_download: bool = False) -> ResolvedCheckpoint:
    """Download and verify a checkpoint; with ``out_dir``, also copy its files there (plain files)."""
    resolved = resolve(source, force_download=force_download)
    if out_dir is None:
        return resolved
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fname in CHECKPOINT_FILES:
        if (resolved.folder / fname).is_file():
            shutil.copyfile(resolved.folder / fname, out / fname)
    return ResolvedCheckpoint(resolved.source, out, resolved.commit, resolved.sha256, resolved.verified_by)
