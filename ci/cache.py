"""The cache image (nix-cache): found locally or pulled from a registry, and
checked before a build trusts it.

build-cache pushes it as NAMESPACE/nix-cache, tagged by date and by the
package set's hash (pkgs-<hash>); build-web pulls the tag of its own package
set when the local image is missing. A cache that cannot be had is not fatal:
the build goes on without it. A cache that is not one (foreign) or is corrupt
is refused. A pulled cache passes `check_signature` before it is used: the
hook where its signature will be checked (issue 13).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

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
        image = _pull(where, settings.cache)
    if image is None:
        return None
    _check_role(image, where)
    if image.labels.get(PKGS_LABEL) != project.package_set_id():
        log.info("the cache %s was built for another package set; only what both share is reused", where)
    age = datetime.datetime.now(datetime.UTC) - image.created
    log.info("using the cache image %s (%s, built %s ago)", where, image.id[7:19], _days(age))
    if age > datetime.timedelta(days=settings.max_age_days):
        log.warning("warning: the cache image is %s old, more than %g days; rebuild it with `invoke build-cache`",
                    _days(age), settings.max_age_days)
    return image


def _pull(ref: str, local: str) -> docker.Image | None:
    """Pull the registry's cache; None, saying why, when it cannot be had."""
    log.info("no local cache image; pulling %s", ref)
    try:
        image = docker.pull(ref, credentials.for_registry(parse_image_ref(ref).registry or "docker.io"))
    except (RegistryError, NetworkUnavailable) as exc:
        log.warning("warning: cannot use the cache image: %s; building without it", exc.message)
        return None
    if image.architecture != docker.engine_architecture():
        docker.remove_image(ref)
        log.warning("warning: the cache image %s is for %s, not this engine's %s; building without it",
                    ref, image.architecture or "an unknown platform", docker.engine_architecture())
        return None
    try:
        _check_role(image, ref)
        check_signature(ref, image)
    except ToolkitError:
        docker.remove_image(ref)
        raise
    docker.tag(image.id, local)
    return image


def check_signature(ref: str, image: docker.Image) -> None:
    """The one place where a cache pulled from a registry is checked to be signed, before any build uses it.

    Today it checks nothing: the label (`_check_role`) says what the image claims to be, and anyone who
    can push to the namespace can make that claim. The signatures work (issue 13) fills this in: with a
    public key configured, a cache whose signature by that key cannot be verified raises an IntegrityError
    here, and the pulled image is removed. It must stay the only call, so that no path of --cache-from
    (or builder.registry) trusts a cache without it.
    """
    del ref, image  # not used until signatures are checked


def _check_role(image: docker.Image, where: str) -> None:
    if image.labels.get(docker.LABEL) != ROLE:
        raise ConfigError(
            f"{where} is not a cache image made by build-cache (it has no {docker.LABEL}={ROLE} label)",
            "give the namespace `invoke build-cache --push` wrote to, or remove the image and run `invoke build-cache`",
        )


def _days(age: datetime.timedelta) -> str:
    days = age.total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{age.total_seconds() / 3600:.1f} hours"
