"""Building the builder, the cache image and the web image.

The chain is the seed's: a builder with Nix (nix-base) gets the pinned
package set, a cache image (nix-cache) pre-builds the tools and the web
closure, and the web image is built on top of the cache, either streamed out
of a builder container into the engine (the default flow) or assembled by one
multi-stage docker build (the complete flow).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from . import debian, docker
from .errors import BuildFailed, NetworkUnavailable
from .project import Project

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "offline: make the builder from this machine's Debian packages with `invoke build-base --from-debian`, "
    "or `docker load` a saved builder image and set builder.image, and point web.pkgs at a package set "
    "whose sources are already in the builder's store"
)


@dataclass(frozen=True)
class WebImage:
    """The result of build-web."""

    id: str
    tags: tuple[str, ...]
    layers: int
    size: int
    flow: str  # "load" or "complete"


def build_base(project: Project, *, builder: str | None, base: str, from_debian: bool, tool: str,
               refresh_builder: bool = False) -> docker.Image:
    """Build nix-base from `builder` (default: the Dockerfile's pinned one), or from Debian packages."""
    builder = builder or project.default_arg("nix-base", "BUILDER_IMAGE")
    if from_debian:
        builder = debian.builder_image(tool=tool, refresh=refresh_builder).id
    elif docker.inspect_image(builder) is None:
        log.info("pulling the builder image %s", builder)
        try:
            docker.pull(builder)
        except NetworkUnavailable as exc:
            raise NetworkUnavailable(f"cannot download the builder image {builder}: no network", OFFLINE_HINT) from exc
    log.info("building %s from %s", base, builder)
    try:
        return _build(project, "nix-base", tag=base, BUILDER_IMAGE=builder)
    except BuildFailed as exc:
        if docker.looks_offline(exc.details):
            raise NetworkUnavailable(
                f"cannot download the pinned nixpkgs ({project.pkgs}) while building {base}: no network",
                OFFLINE_HINT,
                details=exc.details,
            ) from None
        raise


def build_cache(project: Project, *, base: str, cache: str) -> docker.Image:
    """Build nix-cache on top of nix-base."""
    base_image = docker.require_image(base, "build it with `invoke build-cache` (offline: add --from-debian)")
    log.info("building %s from %s", cache, base)
    return _build(project, "nix-cache", tag=cache, BASE_IMAGE=base_image.id)


def build_cache_chain(project: Project, *, builder: str | None, base: str, cache: str,
                      from_debian: bool, tool: str, refresh_builder: bool = False) -> docker.Image:
    """build-cache: nix-base, then nix-cache on top of it."""
    build_base(project, builder=builder, base=base, from_debian=from_debian, tool=tool,
               refresh_builder=refresh_builder)
    return build_cache(project, base=base, cache=cache)


def build_web(project: Project, *, name: str, cache: str, complete: bool) -> WebImage:
    """Build the web image on top of the cache image; tag it name:<tag> and name:latest."""
    cache_image = docker.require_image(
        cache, "build it first with `invoke build-cache` (offline: `invoke build-cache --from-debian`)"
    )
    if complete:
        image = _build(project, "web-complete", CACHE_IMAGE=cache_image.id)
        identity = f"{name}:{image.id.removeprefix('sha256:')[:32]}"
        docker.tag(image.id, identity)
    else:
        builder = _build(project, "web", CACHE_IMAGE=cache_image.id)
        try:
            loaded = docker.stream_into_load(builder.id, ["/result"])
        finally:
            docker.remove_image(builder.id)
        identity = _check_loaded(loaded, name)
        image = docker.require_image(identity, "docker load reported success but the image is missing")
    # latest moves last, once the image is complete and tagged.
    docker.tag(image.id, f"{name}:latest")
    return WebImage(image.id, (identity, f"{name}:latest"), len(image.layers), image.size,
                    "complete" if complete else "load")


def _check_loaded(loaded: list[str], name: str) -> str:
    tags = [t for t in loaded if t.startswith(f"{name}:")]
    if not tags:
        raise BuildFailed(
            f"the images file built {', '.join(loaded) or 'no tagged image'}, not an image named {name}",
            f"set name = \"{name}\" in the images file's web image, or web.name in invoke.yaml",
        )
    return tags[0]


def _build(project: Project, dockerfile: str, *, tag: str | None = None, **args: str) -> docker.Image:
    try:
        return docker.build(str(project.root), project.dockerfile(dockerfile), tag=tag,
                            buildargs=project.buildargs(dockerfile, **args))
    except BuildFailed as exc:
        nix_error = _nix_error(exc.details)
        if nix_error and not docker.looks_offline(exc.details):
            raise BuildFailed(
                f"the Nix build in {dockerfile}.Dockerfile failed: {nix_error}",
                "fix the Nix expression; the end of the build log is above",
                details=exc.details,
            ) from None
        raise


def _nix_error(log_tail: str) -> str:
    """The first `error: ...` line Nix printed (later ones are its consequences), if any."""
    errors = re.findall(r"^error:\s*(.+)$", log_tail, re.M)
    return errors[0].strip() if errors else ""
