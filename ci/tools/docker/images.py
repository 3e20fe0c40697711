"""Images in the engine: the Image model, inspect, tag, remove, import, save,
load, pull, and the rewrite of a build's config (normalised)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors
import docker.utils

from ...core.credentials import Credentials
from ...core.errors import (
    BadReference,
    BuildFailed,
    ImageNotFound,
    RegistryError,
    ToolkitError,
)
from ...core.refs import parse_image_ref
from .. import registry
from . import archive
from .client import _api_error, _timestamp, client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Image:
    """A local image, as the engine describes it."""

    id: str
    tags: tuple[str, ...]
    layers: tuple[str, ...]  # diff IDs, bottom first
    size: int
    config: Mapping[str, Any]
    architecture: str
    created: datetime

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Image:
        return cls(
            id=attrs["Id"],
            tags=tuple(attrs.get("RepoTags") or ()),
            layers=tuple(attrs.get("RootFS", {}).get("Layers") or ()),
            size=int(attrs.get("Size", 0)),
            config=attrs.get("Config") or {},
            architecture=attrs.get("Architecture", ""),
            created=_timestamp(attrs.get("Created", "1970-01-01T00:00:00Z")),
        )

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.get("Labels") or {}


def engine_architecture() -> str:
    """The engine's CPU in image terms (amd64, arm64, ...)."""
    return str(client().version().get("Arch", ""))


def inspect_image(ref: str) -> Image | None:
    """The local image `ref` (name:tag or ID), or None."""
    try:
        return Image.from_attrs(client().api.inspect_image(ref))
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot inspect {ref}") from None


def require_image(ref: str, hint: str) -> Image:
    image = inspect_image(ref)
    if image is None:
        raise ImageNotFound(f"image {ref} is not in the local Docker engine", hint)
    return image


def known_chains(repository: str) -> set[str]:
    """The layer chains of `repository`:latest, what a load of its next version can skip.

    Only latest: the one an everyday change starts from. Inspecting every
    version kept locally would cost a request each, more with every build;
    a layer the engine has under another version is sent, and skipped by the
    engine itself.
    """
    image = inspect_image(f"{repository}:latest")
    return set(archive.chain_ids(image.layers)) if image is not None else set()


def load(data: Iterator[bytes]) -> list[str]:
    """`docker load` of an archive given as byte chunks; the tags it says it loaded."""
    tags = []
    for chunk in client().api.load_image(data):
        if "error" in chunk:
            raise BuildFailed(f"docker load failed: {chunk['error']}")
        text = chunk.get("stream", "")
        for prefix in ("Loaded image: ", "Loaded image ID: "):
            if text.startswith(prefix):
                tags.append(text[len(prefix):].strip())
    return tags


# The creation date of every image the toolkit writes, as dockerTools' default.
EPOCH = "1970-01-01T00:00:01Z"


def normalised(image: str, tag: str) -> Image:
    """A copy of `image` whose config holds no build time and no build container, tagged `tag`.

    The classic builder stamps both into the config, so that the same layers
    would get another image ID at every build. Only the config is sent back
    to the engine (it has the layers), with its tag: the copy is never
    untagged; `image` itself is removed.
    """
    api = client().api
    found = require_image(image, "it was just built; is another process removing images?")
    try:
        with archive.normalise(api.get_image(found.id), created=EPOCH,
                               known_chains=set(archive.chain_ids(found.layers)), tags=[tag]) as fixed:
            load(fixed.chunks())
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot rewrite the config of {found.id[:19]}") from None
    result = require_image(tag, "docker load reported success but the image is missing")
    if result.id != found.id:
        remove_image(found.id)
    return result


@contextmanager
def saved(image: str) -> Iterator[str]:
    """`docker save image` into a temporary file, for reading it at random."""
    with tempfile.NamedTemporaryFile(prefix="nix-ci-save-", suffix=".tar") as file:
        try:
            for chunk in client().api.get_image(image):
                file.write(chunk)
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"cannot save {image}") from None
        file.flush()
        yield file.name


def untag(ref: str) -> None:
    """Remove the tag `ref` only; the image stays while other tags name it."""
    try:
        client().api.remove_image(ref, noprune=True)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot remove the tag {ref}") from None


def tag(image: str, ref: str) -> None:
    repository, _, tag_ = ref.rpartition(":")
    try:
        client().api.tag(image, repository, tag_)
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot tag {image[:19]} as {ref}") from None


def remove_image(ref: str) -> None:
    """Remove `ref` if present; untagged parents go with it."""
    try:
        client().api.remove_image(ref, force=True)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot remove image {ref}") from None


def drop_replaced(previous: Image | None, current: str) -> None:
    """Remove `previous`, the image a build just took its tag from, once nothing names or
    uses it: every weekly nix-cache would otherwise stay on disk, untagged. The removal is
    not forced, so the engine keeps it while a container or a child image uses it."""
    if previous is None or previous.id == current:
        return
    try:
        if client().api.inspect_image(previous.id).get("RepoTags"):
            return  # another tag still names it
        client().api.remove_image(previous.id, noprune=False)
        log.info("removed %s, the image %s named before", previous.id[7:19], previous.tags[0] if previous.tags else "")
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.info("kept the previous image %s: %s", previous.id[7:19], str(exc.explanation or exc).strip()[:200])


def import_rootfs(tarball: str, repository: str, tag_: str, changes: list[str]) -> Image:
    """`docker import` a root filesystem tarball; the image it replaces goes (drop_replaced)."""
    previous = inspect_image(f"{repository}:{tag_}")
    try:
        result = client().api.import_image_from_file(tarball, repository=repository, tag=tag_, changes=changes)
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"docker import of {tarball} failed") from None
    if "error" in str(result):
        raise BuildFailed(f"docker import of {tarball} failed: {result}")
    image = require_image(f"{repository}:{tag_}", "docker import reported success but the image is missing")
    drop_replaced(previous, image.id)
    return image


def pull(ref: str, credentials: Credentials | None = None) -> Image:
    """Pull `ref`, logging progress.

    `credentials` come from ci.core.credentials, for the registry of `ref`;
    without them the engine reads ~/.docker/config.json. Failures are
    explained by ci.tools.registry: NetworkUnavailable without network,
    RegistryError when the registry does not answer, refuses, or lacks the
    image, IntegrityError when what it sends does not match its digests.
    """
    repository, tag_ = ref, None
    if "@" not in ref:
        name, sep, maybe_tag = ref.rpartition(":")
        repository, tag_ = (name, maybe_tag) if sep and "/" not in maybe_tag else (ref, "latest")
    try:
        for chunk in client().api.pull(repository, tag=tag_, stream=True, decode=True,
                                       auth_config={"username": credentials.username, "password": credentials.password}
                                       if credentials else None):
            if "error" in chunk:
                raise _pull_error(ref, chunk["error"])
            if chunk.get("status") and not chunk.get("progressDetail"):
                log.info("%s %s", chunk.get("id", ""), chunk["status"])
    except docker.errors.APIError as exc:
        raise _pull_error(ref, str(exc.explanation or exc)) from None
    return require_image(ref, "the pull reported success but the image is missing")


def _pull_error(ref: str, text: str) -> ToolkitError:
    # The engine pulls the pinned public builder image too: a host it cannot look up means no network.
    try:
        host = parse_image_ref(ref).registry or "docker.io"
    except BadReference:
        host = ref.split("/", 1)[0]
    return (registry.from_text(text, registry=host, name=ref, unknown_host_is_offline=True)
            or RegistryError(f"cannot pull {ref}: {text.strip().splitlines()[0][:200]}"))
