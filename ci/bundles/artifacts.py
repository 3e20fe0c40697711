"""Bundles and binary caches as OCI artifacts of their own types: pushed to a
registry, pulled back with every file checked (by ci.tools.oras) before it
replaces what was at the destination."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError, IntegrityError
from ..core.files import writable_directory
from ..tools import oras
from .contents import CacheContents, cache_directory, inspect_bundle

log = logging.getLogger(__name__)


# The OCI artifacts: a bundle is one layer; a binary cache is one layer per file.
BUNDLE_TYPE = "application/vnd.nix-ci.bundle.v1"
BUNDLE_MEDIA_TYPE = "application/vnd.nix-ci.bundle.v1.tar"
BUNDLE_TITLE = "closure.tar"
CACHE_TYPE = "application/vnd.nix-ci.binary-cache.v1"
CACHE_INFO_MEDIA_TYPE = "application/vnd.nix-ci.binary-cache.v1.nix-cache-info"
NARINFO_MEDIA_TYPE = "application/vnd.nix-ci.binary-cache.v1.narinfo"
NAR_MEDIA_TYPE = "application/vnd.nix-ci.binary-cache.v1.nar"
STORE_PATH_ANNOTATION = "io.github.nix-ci.bundle.store-path"
SIGNED_BY_ANNOTATION = "io.github.nix-ci.bundle.signed-by"
PATHS_ANNOTATION = "io.github.nix-ci.binary-cache.paths"


def push_bundle(reference: str, path: Path, *, insecure: bool = False) -> oras.Artifact:
    """Push a bundle (checked first) as one artifact of type BUNDLE_TYPE."""
    info = inspect_bundle(path)
    annotations = {STORE_PATH_ANNOTATION: info.store_path, SIGNED_BY_ANNOTATION: " ".join(info.cache.signers)}
    return oras.push(reference, [oras.Blob(path, BUNDLE_MEDIA_TYPE, title=BUNDLE_TITLE)],
                     artifact_type=BUNDLE_TYPE, annotations=annotations, insecure=insecure)


def push_cache(reference: str, directory: Path, *, insecure: bool = False) -> oras.Artifact:
    """Push a binary cache directory as an artifact of type CACHE_TYPE: one layer per file, so that a
    registry that has a NAR already is not sent it again."""
    directory = directory.absolute()
    contents = cache_directory(directory)
    blobs = [oras.Blob(directory / "nix-cache-info", CACHE_INFO_MEDIA_TYPE)]
    for info in contents.narinfos:
        if not re.match(r"^nar/[^/]+$", info.url):
            raise ConfigError(f"{directory}: the NAR of {info.store_path} is at {info.url}, not under nar/",
                              "push caches written by `nix copy --to file://DIR`")
        blobs.append(oras.Blob(directory / f"{info.hash_part}.narinfo", NARINFO_MEDIA_TYPE))
        blobs.append(oras.Blob(directory / info.url, NAR_MEDIA_TYPE))
    annotations = {PATHS_ANNOTATION: str(len(contents.narinfos)), SIGNED_BY_ANNOTATION: " ".join(contents.signers)}
    return oras.push(reference, blobs, artifact_type=CACHE_TYPE, annotations=annotations, insecure=insecure)


@dataclass(frozen=True)
class PulledCache:
    """A bundle file or a binary cache directory, pulled and checked."""

    kind: str  # "bundle" or "cache"
    path: Path
    artifact: oras.Artifact
    contents: CacheContents


def pull(reference: str, *, bundle_to: Path, cache_to: Path, insecure: bool = False) -> PulledCache:
    """Pull the bundle (to the file `bundle_to`) or binary cache (to the directory `cache_to`) at `reference`.

    Every file is checked against its digest and the whole checked as a
    bundle or a cache before it replaces what was at the destination; a
    failed pull leaves nothing behind. Other artifacts are refused.
    """
    with oras.opened(reference, insecure=insecure) as remote:
        artifact = remote.artifact
        if artifact.artifact_type == BUNDLE_TYPE:
            return _pull_bundle(remote, bundle_to.absolute())
        if artifact.artifact_type == CACHE_TYPE:
            return _pull_cache(remote, cache_to.absolute())
    raise ConfigError(f"{reference} is neither a bundle nor a binary cache (its artifact type is "
                      f"'{artifact.artifact_type or 'none'}')", "give a reference that `invoke cache-push` wrote")


def _pull_bundle(remote: oras.Remote, target: Path) -> PulledCache:
    artifact = remote.artifact
    layers = [layer for layer in artifact.layers if layer.media_type == BUNDLE_MEDIA_TYPE]
    if len(artifact.layers) != 1 or not layers:
        raise IntegrityError(f"{artifact.pinned} is not a well-formed bundle artifact (one {BUNDLE_MEDIA_TYPE} layer)",
                             "push the bundle again with `invoke cache-push`")
    oras.file_names(artifact)  # a plain name
    writable_directory(target.parent)
    if target.is_dir():
        raise ConfigError(f"{target} is a directory", "give the file to write the bundle to")
    with tempfile.TemporaryDirectory(prefix=".cache-pull-", dir=target.parent) as work:
        pulled = remote.download(Path(work))
        try:  # every member checked (contents.bundle_members) before the bundle is anywhere but here
            info = inspect_bundle(pulled.files[0])
        except IntegrityError as exc:  # named as the user named it, not by its temporary file
            raise IntegrityError(exc.message.replace(str(pulled.files[0]), artifact.pinned),
                                 "push the bundle again with `invoke cache-push`, and check who can push there") from None
        os.chmod(pulled.files[0], 0o644)
        os.replace(pulled.files[0], target)
    return PulledCache("bundle", target, artifact, info.cache)


# The file names each kind of layer of a binary cache may have: what `nix copy --to file://DIR` writes.
_CACHE_NAMES = {
    CACHE_INFO_MEDIA_TYPE: re.compile(r"^nix-cache-info$"),
    NARINFO_MEDIA_TYPE: re.compile(r"^[0-9a-df-np-sv-z]{32}\.narinfo$"),
    NAR_MEDIA_TYPE: re.compile(r"^[0-9a-z]+\.nar(\.[0-9a-z]+)?$"),
}


def _check_cache_layers(artifact: oras.Artifact) -> None:
    """Only the files a binary cache has, each named as Nix names it, and one nix-cache-info."""
    hint = "push the cache again with `invoke cache-push --cache DIR`"
    oras.file_names(artifact)  # plain names, each used once
    for layer in artifact.layers:
        pattern = _CACHE_NAMES.get(layer.media_type)
        if pattern is None:
            raise IntegrityError(f"{artifact.pinned} has a layer of type {layer.media_type[:100]}, "
                                 "which binary caches do not have", hint)
        if not pattern.match(layer.title):
            raise IntegrityError(f"{artifact.pinned} has a {layer.media_type.rsplit('.', 1)[-1]} layer titled "
                                 f"{layer.title[:80]!r}, not a name Nix gives such a file", hint)
    if [layer.media_type for layer in artifact.layers].count(CACHE_INFO_MEDIA_TYPE) != 1:
        raise IntegrityError(f"{artifact.pinned} does not have exactly one nix-cache-info layer", hint)


def _pull_cache(remote: oras.Remote, target: Path) -> PulledCache:
    artifact = remote.artifact
    _check_cache_layers(artifact)
    writable_directory(target.parent)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / "nix-cache-info").exists())):
        raise ConfigError(f"{target} exists and is not a binary cache", "give a new directory, or an old cache to replace")
    with tempfile.TemporaryDirectory(prefix=".cache-pull-", dir=target.parent) as work:
        pulled = remote.download(Path(work) / "files")
        cache = Path(work) / "cache"
        for folder in ("nar", "log", "realisations"):  # as `nix copy` makes them: Nix fails to open a read-only cache without
            (cache / folder).mkdir(parents=True)
        for layer, path in zip(pulled.artifact.layers, pulled.files, strict=True):
            os.replace(path, cache / ("nar" if layer.media_type == NAR_MEDIA_TYPE else ".") / path.name)
        try:
            contents = cache_directory(cache)
        except IntegrityError as exc:
            raise IntegrityError(exc.message.replace(str(cache), artifact.pinned),
                                 "push the cache again with `invoke cache-push --cache DIR`") from None
        old = Path(work) / "old"
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(cache, target)
        except OSError:
            if old.exists():
                os.replace(old, target)  # the cache that was there stays
            raise
    return PulledCache("cache", target, artifact, contents)
