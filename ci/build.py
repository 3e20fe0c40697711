"""Building the builder, the cache image and the web image.

The chain is the seed's: a builder with Nix (nix-base) gets the pinned
package set, a cache image (nix-cache) pre-builds the tools and the web
closure, and the web image is built on top of the cache, either streamed out
of a builder container into the engine (the default flow) or assembled by one
multi-stage docker build (the complete flow).

build-web does nothing when an image built from the same inputs exists: its
identity is a hash of everything the build reads (the build context, the
Dockerfile, the flow) and of the cache image it builds on.
"""

from __future__ import annotations

import datetime
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import cache as cache_images
from .cache import CacheSettings
from .core.errors import BuildFailed, ConfigError, NetworkUnavailable, ToolkitError, looks_offline
from .project import IDENTITY_PREFIX, Project
from .tools import docker

# debian, nix, reproducible and transfer are imported where they are used: a
# build that finds its image up to date needs none of them (see bench/).

if TYPE_CHECKING:  # ci.bundles loads oras; builds without a substituter do not need it
    from collections.abc import Callable

    from .bundles import Substituter
    from .publish import Options as PushOptions
    from .remote import RemoteBuilders, Share
    from .reproducible import Verdict
    from .transfer import Pushed

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "offline: make the builder from this machine's Debian packages with `invoke build-base --from-debian`, "
    "or `docker load` a saved builder image and set builder.image, and point web.pkgs at a package set "
    "whose sources are already in the builder's store"
)

TOO_OLD_HINT = (
    "use a builder with Nix {minimum} or newer: `invoke build-base --from-debian` makes one from Debian 13 "
    "(builder.suite trixie, Nix 2.26), or set builder.image to such an image"
)


@dataclass(frozen=True)
class BuilderSettings:
    """Where nix-base comes from."""

    image: str | None  # builder image; None: the digest-pinned default of nix-base.Dockerfile
    from_debian: bool  # make the builder from this machine's Debian packages instead
    tool: str  # mmdebstrap or debootstrap, for from_debian
    refresh: bool = False  # make the Debian builder anew even if one exists
    suite: str = "trixie"  # the Debian release of the builder made from_debian


@dataclass(frozen=True)
class BuiltImage:
    """An image of the images file, built (or found up to date) on the cache image: web, services."""

    id: str
    tags: tuple[str, ...]  # identity, date, latest
    layers: int
    size: int
    flow: str  # "load" or "complete"
    built: bool  # False when an image with the same inputs already existed


@docker.needs_engine("building {base}")
def build_base(project: Project, builder: BuilderSettings, *, base: str) -> docker.Image:
    """Build nix-base from the builder image, or from a builder made of Debian packages."""
    project.context_files  # noqa: B018 - a link out of the build context is refused before any work
    source = builder.image or project.default_arg("nix-base", "BUILDER_IMAGE")
    if builder.from_debian:
        from . import debian

        suite = debian.check_suite(builder.suite, "builder.suite (--suite)")
        source = debian.builder_image(suite=suite, tool=builder.tool, refresh=builder.refresh).id
    elif docker.inspect_image(source) is None:
        log.info("pulling the builder image %s", source)
        try:
            docker.pull(source)
        except NetworkUnavailable as exc:
            raise NetworkUnavailable(f"cannot download the builder image {source}: no network", OFFLINE_HINT) from exc
    log.info("building %s from %s", base, source)
    try:
        labels = {docker.LABEL: "base", **_builder_labels(project, "nix-base", source)}
        return _build(project, "nix-base", tag=base, labels=labels, BUILDER_IMAGE=source)
    except NetworkUnavailable as exc:
        raise NetworkUnavailable(
            f"cannot download the pinned nixpkgs ({project.pkgs}) while building {base}: no network",
            OFFLINE_HINT,
            details=exc.details,
        ) from None


@docker.needs_engine("building {settings.cache}")
def build_cache(project: Project, builder: BuilderSettings, settings: CacheSettings, *,
                substituter: Substituter | None = None, remote: RemoteBuilders | None = None) -> docker.Image:
    """build-cache: nix-base, then nix-cache on top of it. With `remote` (ci.remote), the cache's closure is
    built on the remote builders first, in a container the toolkit runs, and docker build substitutes it:
    the SSH key never enters a docker build."""
    if remote is not None and substituter is not None:
        raise ConfigError("build-cache takes remote builders or a substituter, not both",
                          "drop --substituter: the remote builders substitute from their own caches")
    base = build_base(project, builder, base=settings.base)
    log.info("building %s from %s", settings.cache, settings.base)
    labels = {**cache_images.labels(project), **_builder_labels(project, "nix-cache", base.id)}
    if remote is None:
        return _build(project, "nix-cache", tag=settings.cache, labels=labels, substituter=substituter, BASE_IMAGE=base.id)
    from . import remote as remote_builders

    with remote_builders.prebuilt(remote, base.id, root=project.root, context=project.context_files, pkgs=project.pkgs,
                                  images=project.images) as results:
        return _build(project, "nix-cache", tag=settings.cache, labels=labels, substituter=results, BASE_IMAGE=base.id)


def publish_cache(project: Project, settings: CacheSettings, namespace: str,
                  options: Callable[[str], PushOptions] | None = None) -> list[Pushed]:
    """Push nix-base and nix-cache to NAMESPACE/…, tagged by date and package set, then latest of both, last
    (ci.release): a failure leaves both latest tags where they were. `options(image)` says what each
    push adds (annotations, signatures: ci.publish)."""
    from . import release

    tags = [datetime.datetime.now(datetime.UTC).date().isoformat(), f"pkgs-{project.package_set_id()}"]
    members = [release.Member(local, f"{namespace}/{name}")
               for local, name in ((settings.base, "nix-base"), (settings.cache, "nix-cache"))]
    return release.publish(members, tags, options=options)


def build_web(project: Project, builder: BuilderSettings, settings: CacheSettings, *,
              name: str, complete: bool, substituter: Substituter | None = None, attr: str = "web",
              remote: RemoteBuilders | None = None, share: Share | None = None) -> BuiltImage:
    """build-web: the web image (`attr` of the images file, web.attr), by the load flow or the complete flow."""
    return build_image(project, builder, settings, name=name, attr=attr, complete=complete, substituter=substituter,
                       remote=remote, share=share)


@docker.needs_engine("building {name}")
def build_image(project: Project, builder: BuilderSettings, settings: CacheSettings, *,
                name: str, attr: str, complete: bool = False, substituter: Substituter | None = None,
                remote: RemoteBuilders | None = None, share: Share | None = None) -> BuiltImage:
    """Build the image `attr` of the images file on top of the cache image, unless one with the same inputs exists.

    Only the load flow builds images other than web (services). Tags:
    name:id-<inputs> (the image enters the engine with it), name:<date>, then
    name:latest, last, once everything else succeeded. `remote` (ci.remote)
    builds its derivations elsewhere; it is no input: the same inputs give the same image. `share`
    pushes the store paths the build added to a registry's binary cache (load flow).
    """
    if complete and attr != "web":
        raise ConfigError(f"the complete flow builds only the web image, not {attr}", "build it without --complete")
    project.context_files  # noqa: B018 - a link out of the build context is refused before any work
    if complete and (remote is not None or share is not None):
        raise ConfigError(REMOTE_DOCKER_BUILD.format(what="the complete flow (--complete)"), REMOTE_HINT)
    cache_image = cache_images.find(project, settings)
    if cache_image is None:
        cache_images.missing(settings)
        cache_image = build_cache(project, builder, settings, substituter=substituter)
    dockerfile = "web-complete" if complete else "web"
    args = project.buildargs(dockerfile, CACHE_IMAGE=cache_image.id, ATTR=attr, LABELS=_images_file_labels(project))
    identity = project.digest(Path(project.dockerfile(dockerfile)).read_text(), json.dumps(args, sort_keys=True))
    tags = (f"{name}:{IDENTITY_PREFIX}{identity[:24]}", f"{name}:{project.human_tag()}", f"{name}:latest")
    image = docker.inspect_image(tags[0])
    built = image is None
    if image is not None:
        log.info("%s is up to date: nothing it is built from has changed", tags[0])
    else:
        image = _build_image(project, name, dockerfile, args, substituter, tag=tags[0], remote=remote, share=share)
    for tag in tags:  # latest last
        if tag not in image.tags:
            docker.tag(image.id, tag)
    return BuiltImage(image.id, tags, len(image.layers), image.size, "complete" if complete else "load", built)


def verify_reproducible(project: Project, settings: CacheSettings, *, name: str, complete: bool) -> Verdict:
    """Build the image twice from scratch (on nix-base, without the engine's cache) and compare."""
    from . import reproducible

    base = docker.require_image(settings.base, "build it with `invoke build-cache` (offline: add --from-debian)")
    dockerfile = "web-complete" if complete else "web"
    args = project.buildargs(dockerfile, CACHE_IMAGE=base.id)
    built = []
    try:
        for attempt in (1, 2):
            log.info("build %d of 2, from scratch", attempt)
            built.append(f"{name}:reproducible-{attempt}")  # removed below, whatever happens
            _build_image(project, name, dockerfile, args, nocache=True, tag=built[-1])
        return reproducible.compare(*built)
    finally:
        for tag in built:
            docker.untag(tag)


def _build_image(project: Project, name: str, dockerfile: str, args: dict[str, str],
                 substituter: Substituter | None = None, *, tag: str, nocache: bool = False,
                 remote: RemoteBuilders | None = None, share: Share | None = None) -> docker.Image:
    """One build of either flow; the image enters the engine tagged `tag`, never untagged or under a temporary name."""
    if dockerfile == "web-complete":
        labels = {docker.LABEL: "web", "org.opencontainers.image.title": name, **json.loads(args.get("LABELS", "{}"))}
        built = _build(project, dockerfile, labels=labels, substituter=substituter, nocache=nocache, **args)
        return docker.normalised(built.id, tag)
    return _stream_out(project, name, args, substituter, tag=tag, nocache=nocache, remote=remote, share=share)


# Remote builders (and sharing) need a key in the build's container; docker build would keep it in a layer.
REMOTE_DOCKER_BUILD = ("remote builders and --share cannot be used by {what}: its Nix runs in docker build steps, "
                       "whose layers and history would keep the SSH or signing key")
REMOTE_HINT = ("build without remote builders there; they serve build-web's load flow (web.Dockerfile as shipped), "
               "build-cache, bundle and build-vm")


# What the images file's Nix build leaves in the builder: the script that writes the image.
STREAM = "/result"


def _stream_out(project: Project, name: str, args: dict[str, str],
                substituter: Substituter | None = None, *, tag: str, nocache: bool = False,
                remote: RemoteBuilders | None = None, share: Share | None = None) -> docker.Image:
    """The load flow: Nix builds the image's stream script (web.Dockerfile), whose
    output streams into the engine as `tag`.

    When web.Dockerfile is ARG steps, `COPY .` and RUN steps on one FROM (as
    shipped), one container of the cache image runs its RUN steps, then the
    script: no container and image per step, no commit, no second container.
    Otherwise docker build makes the builder image, a container of it runs
    the script, and the builder is removed. (`nocache` matters to docker
    build only: the one container starts from the cache image as it is.)
    """
    known, accept = docker.known_chains(name), lambda named: _check_named(named, name)
    steps = project.one_container_build("web", project.buildargs("web", **_with_substituter(args, substituter)))
    if steps is None and (remote is not None or share is not None):
        raise ConfigError(REMOTE_DOCKER_BUILD.format(what=f"{project.dockerfile('web')}, which one container cannot run"),
                          "keep web.Dockerfile to ARG steps, `COPY . /DIR` and RUN steps on one FROM, or " + REMOTE_HINT)
    if steps is None:
        builder = _build(project, "web", substituter=substituter, nocache=nocache, **args)
        try:
            return docker.stream_into_load(builder.id, ["/bin/sh", "-c", f"{_record_closure()}; exec {STREAM}"],
                                           known_chains=known, tag=tag, accept=accept, collect=_keep_closure)
        finally:
            docker.remove_image(builder.id)
    extra = substituter.context() if substituter is not None else {}
    remote = _remote_checked(remote, steps.image)
    # Each RUN step as the classic builder runs it; their output goes to stderr, as stdout carries the image.
    script = f'for step in "$@"; do /bin/sh -c "$step" >&2 || exit; done; {_record_closure()}; exec {STREAM}'
    if remote is None and share is None:
        with docker.context_archive(project.root, project.context_files, under=steps.context_to, extra=extra) as files:
            try:
                return docker.stream_into_load(steps.image, ["/bin/sh", "-c", script, "web.Dockerfile", *steps.runs],
                                               known_chains=known, tag=tag, accept=accept, files=files,
                                               environment=steps.environment,
                                               describe=f"web.Dockerfile's RUN steps, then {STREAM}",
                                               collect=_keep_closure)
            except BuildFailed as exc:
                raise _nix_failure(exc, "web") from None
    from . import remote as remote_builders  # loaded only with remote builders or sharing

    # The keys (ci.remote) are gone before the image is written; what the build added is shared first.
    script = (f'{share.before() + "; " if share else ""}for step in "$@"; do /bin/sh -c "$step" >&2 || exit; done; '
              f'{share.after() + "; " if share else ""}{remote_builders.FORGET}; {_record_closure()}; exec {STREAM}')
    private = {**(remote.contents() if remote else {}), **(share.contents() if share else {})}
    with docker.context_archive(project.root, project.context_files, under=steps.context_to, extra=extra) as files, \
            tempfile.TemporaryDirectory(prefix="nix-ci-share-") as shared:
        try:
            image = docker.stream_into_load(
                steps.image, ["/bin/sh", "-c", script, "web.Dockerfile", *steps.runs], known_chains=known, tag=tag,
                accept=accept, files=files, environment={**steps.environment, **(remote.environment() if remote else {})},
                private_files=remote_builders.private_files(private), network=remote.network if remote else None,
                binds={shared: remote_builders.SHARE_DIRECTORY} if share else None,
                describe=f"web.Dockerfile's RUN steps, then {STREAM}", collect=_keep_closure)
        except BuildFailed as exc:
            raise _nix_failure(exc, "web") from None
        if share is not None:
            share.push(Path(shared))
        return image



# --- the Nix closure, for the SBOM (ci.sbom) ---

def _record_closure() -> str:
    """The shell step that records, in the build container, what Nix knows of the image's store paths."""
    from . import sbom

    return f"{{ {sbom.RECORD_SCRIPT}; }} >&2"


def _keep_closure(container: str, image: docker.Image) -> None:
    """Copy the record out of the build container before it goes, and keep it beside the image's ID."""
    from . import sbom

    try:
        api = docker.client().api
        builder = api.inspect_container(container)["Image"]
        digests = api.inspect_image(builder).get("RepoDigests") or []
        found = sbom.record_from_container(image.id, docker.OneOffContainer(container).copy_out(sbom.RECORD_DIRECTORY),
                                           {"id": builder, "repo_digests": digests})
    except ToolkitError as exc:
        log.warning("warning: the image's Nix closure was not recorded (%s): it will have no SBOM", exc.message)
        return
    if found is not None:
        sbom.save(found)
        log.info("recorded the %d store paths of the image, for its SBOM", len(found.paths))


# --- OCI labels (ci.labels) ---

def _builder_labels(project: Project, name: str, built_from: str) -> dict[str, str]:
    """nix-base's or nix-cache's OCI labels, blanking every other OCI label of the image it is built from."""
    from . import labels

    base = docker.inspect_image(built_from)
    return labels.builder_labels(project.root, project.labels, name, version=f"pkgs-{project.package_set_id()}",
                                 inherited=base.labels if base is not None else None)


def _images_file_labels(project: Project) -> str:
    """The images file's `labels` argument: where its images come from."""
    from . import labels

    return labels.as_nix_argument(labels.images_file_labels(project.root, project.labels))


def _remote_checked(remote: RemoteBuilders | None, image: str) -> RemoteBuilders | None:
    """The remote builders that answer from a container of `image`; None without any (or fallen back from)."""
    if remote is None:
        return None
    from . import remote as remote_builders  # loaded only with remote builders

    return remote_builders.checked(remote, image, system=remote_builders.system_of(docker.engine_architecture()))


def _check_named(named: list[str], name: str) -> None:
    """The images file must name its image as the toolkit does (web.name), though the tags are the toolkit's."""
    if not any(t.startswith(f"{name}:") for t in named):
        raise BuildFailed(
            f"the images file built {', '.join(named) or 'no tagged image'}, not an image named {name}",
            f"set name = \"{name}\" in the images file's image, or the image name in invoke.yaml (web.name)",
        )


def _build(project: Project, dockerfile: str, *, tag: str | None = None, labels: dict[str, str] | None = None,
           substituter: Substituter | None = None, nocache: bool = False, **args: str) -> docker.Image:
    try:
        return docker.build(str(project.root), project.dockerfile(dockerfile), tag=tag, labels=labels, nocache=nocache,
                            buildargs=project.buildargs(dockerfile, **_with_substituter(args, substituter)),
                            extra_context=substituter.context() if substituter is not None else None)
    except BuildFailed as exc:
        raise _nix_failure(exc, dockerfile) from None


def _with_substituter(args: dict[str, str], substituter: Substituter | None) -> dict[str, str]:
    """A substituter (ci.bundles) goes into the context and NIX_CONFIG; never into the identity of web images."""
    return {**args, "NIX_CONFIG": substituter.nix_config()} if substituter is not None else args


def _nix_failure(exc: BuildFailed, dockerfile: str) -> ToolkitError:
    """A failed build of `dockerfile` in one line: Nix's first error, or no network, when its log shows one."""
    from .tools import nix

    if not nix.first_error(exc.details) and not looks_offline(exc.details):
        return exc
    return nix.build_error(f"the Nix build in {dockerfile}.Dockerfile", exc.details, fallback=exc.message,
                           offline=f"the Nix build in {dockerfile}.Dockerfile needs a download and there is no network",
                           offline_hint=OFFLINE_HINT, too_old_hint=TOO_OLD_HINT)
