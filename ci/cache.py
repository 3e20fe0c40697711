"""The cache image (nix-cache): found locally or pulled from a registry, and
checked before a build trusts it.

build-cache pushes it as NAMESPACE/nix-cache, tagged by date and by the
package set's hash (pkgs-<hash>); build-web pulls the tag of its own package
set when the local image is missing. A cache that cannot be had is not fatal:
the build goes on without it. A cache that is not one (foreign) or is corrupt
is refused. With a public key configured (signing.public_key), only a cache
whose signature that key verifies is pulled, by the digest verified (ci.verify):
anyone who can push to the namespace could otherwise supply one.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from . import github
from .core import credentials
from .core.errors import ConfigError, NetworkUnavailable, RegistryError, ToolkitError
from .core.refs import parse_image_ref
from .project import Project
from .tools import docker

log = logging.getLogger(__name__)

ROLE = "cache"  # the value of docker.LABEL on cache images
PKGS_LABEL = f"{docker.LABEL}.pkgs"  # the package set the cache was built for


@dataclass(frozen=True)
class CacheSettings:
    """Where the builder images live and how old a cache may be."""

    base: str  # local name of nix-base
    cache: str  # local name of nix-cache
    namespace: str | None  # REGISTRY/PATH holding NAMESPACE/nix-cache (--cache-from, builder.registry), or None
    max_age_days: float
    public_key: Path | None = None  # when set, a pulled cache must be signed with it (ci.verify)


def remote_ref(namespace: str, project: Project, image: str = "nix-cache") -> str:
    return f"{namespace}/{image}:pkgs-{project.package_set_id()}"


def labels(project: Project) -> dict[str, str]:
    """What build-cache writes on the cache image."""
    return {docker.LABEL: ROLE, PKGS_LABEL: project.package_set_id()}


def find(project: Project, settings: CacheSettings) -> docker.Image | None:
    """The cache image to build on: the local one, else the registry's, else None."""
    image = docker.inspect_image(settings.cache)
    where = settings.cache
    if image is None and settings.namespace:
        where = remote_ref(settings.namespace, project)
        image = _pull(where, settings.cache, settings.public_key)
    if image is None:
        return None
    _check_role(image, where)
    if image.labels.get(PKGS_LABEL) != project.package_set_id():
        log.info("the cache %s was built for another package set; only what both share is reused", where)
    age = datetime.datetime.now(datetime.UTC) - image.created
    log.info("using the cache image %s (%s, built %s ago)", where, image.id[7:19], _days(age))
    if age > datetime.timedelta(days=settings.max_age_days):
        _warn(f"the cache image is {_days(age)} old, more than {settings.max_age_days:g} days; "
              "rebuild it with `invoke build-cache`", "stale cache image")
    return image


def _pull(ref: str, local: str, public_key: Path | None = None) -> docker.Image | None:
    """Pull the registry's cache; None, saying why, when it cannot be had. With `public_key`, only
    the manifest whose signature it verifies is pulled, by digest; an unsigned one is refused."""
    log.info("no local cache image; pulling %s", ref)
    try:
        if public_key is not None:
            from . import verify

            ref = verify.require(ref, public_key)
        image = docker.pull(ref, credentials.for_registry(parse_image_ref(ref).registry or "docker.io"))
    except (RegistryError, NetworkUnavailable) as exc:
        _warn(f"cannot use the cache image: {exc.message}; building without it", "unusable cache image")
        return None
    if image.architecture != docker.engine_architecture():
        docker.remove_image(ref)
        _warn(f"the cache image {ref} is for {image.architecture or 'an unknown platform'}, "
              f"not this engine's {docker.engine_architecture()}; building without it", "unusable cache image")
        return None
    try:
        _check_role(image, ref)
    except ToolkitError:
        docker.remove_image(ref)
        raise
    docker.tag(image.id, local)
    return image


def _warn(message: str, title: str) -> None:
    """A log line, and on GitHub an annotation too."""
    log.warning("warning: %s", message)
    github.warning(message, title)


def missing(settings: CacheSettings) -> None:
    """Say that there is no cache image, so that everything is built."""
    _warn(f"no cache image: building {settings.base} and {settings.cache} first (invoke build-cache)", "no cache image")


def _check_role(image: docker.Image, where: str) -> None:
    if image.labels.get(docker.LABEL) != ROLE:
        raise ConfigError(
            f"{where} is not a cache image made by build-cache (it has no {docker.LABEL}={ROLE} label)",
            "give the namespace `invoke build-cache --push` wrote to, or remove the image and run `invoke build-cache`",
        )


def _days(age: datetime.timedelta) -> str:
    days = age.total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{age.total_seconds() / 3600:.1f} hours"
