"""Moving a local image out of the engine: push it to registries or OCI
layouts, or extract it to an archive, a layout or a root filesystem."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .core.errors import ConfigError, naming_full_disk, quoted
from .core.files import check_output, human_size, output
from .core.refs import Destination, check_tag, parse_destination
from .project import IDENTITY_PREFIX
from .tools import docker, skopeo, umoci

if TYPE_CHECKING:
    from . import publish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pushed:
    destination: str
    digest: str
    bytes_uploaded: int  # compressed layer bytes sent
    bytes_skipped: int  # compressed layer bytes the destination already had

    def line(self) -> str:
        """destination, digest, then what moved: one line per destination on stdout."""
        return f"{self.destination} {self.digest} uploaded={self.bytes_uploaded} skipped={self.bytes_skipped}"


def local_image(image: str, known: list[str]) -> str:
    """name:tag of a local image the toolkit builds (NAME or NAME:TAG, latest by default);
    refuses names it does not know."""
    name, _, tag = image.partition(":")
    if name not in known:
        raise ConfigError(f"unknown image {quoted(name)}", f"known images: {', '.join(known)}")
    ref = f"{name}:{check_tag(tag or 'latest')}"
    docker.require_image(ref, f"build it first: invoke build-{name}")
    return ref


def push(image: str, targets: list[str], *, insecure: bool = False, options: publish.Options | None = None) -> list[Pushed]:
    """Copy the local `image` to every target; returns each destination's digest.

    A registry target without a tag gets every tag the image has under its
    name (its input identity id-…, its date, then latest, last). The image
    leaves the engine once, into an OCI layout whose manifest gets the
    commit's annotations; each repository gets it by digest, signed and with
    its SBOM and provenance when `options` has a key, and only then its tags
    (ci.publish says why in that order). When a repository already holds the
    image's identity tag, nothing but tags is written.
    """
    from . import labels, publish

    if not targets:
        raise ConfigError("push needs at least one destination",
                          "pass --to docker://REGISTRY/NAME[:TAG] or --to oci:DIR[:TAG]")
    options = options or publish.Options(labels.Origin("", "", ""))
    tags = _own_tags(image)
    destinations = [d for t in targets for d in _expand(t, tags)]
    for destination in destinations:
        if destination.transport == "oci":
            check_output(Path(destination.target).absolute(), "oci-layout", "--to oci:")
    publish.check_signable(destinations, options)
    identity = publish.identity_of(tags)
    repositories: dict[str, list[Destination]] = {}
    for destination in destinations:
        if destination.transport == "docker":
            repositories.setdefault(destination.image.name, []).append(destination)
    results: dict[int, Pushed] = {}
    with contextlib.ExitStack() as stack:
        stages: list[publish.Staged] = []

        def stage() -> publish.Staged:
            if not stages:
                stages.append(stack.enter_context(publish.staged(image, options.origin, _progress)))
            return stages[0]

        for repository, group in repositories.items():
            existing = publish.holding(group[0], identity, insecure)
            digest, copied = publish.push_repository(None if existing else stage(), repository, group, options,
                                                     existing=existing, identity=identity, insecure=insecure,
                                                     progress=_progress)
            sizes = publish.layer_sizes(repository, digest, insecure)
            total = sum(sizes.values())
            uploaded = sum(sizes.get(b, 0) for b in copied.uploaded) if copied else 0
            if copied and copied.uploaded:
                log.info("uploaded %s in %d layers; %s were already there", human_size(uploaded), len(copied.uploaded),
                         human_size(total - uploaded))
            for n, destination in enumerate(group):
                first = n == 0 and copied is not None
                results[destinations.index(destination)] = Pushed(str(destination), digest, uploaded if first else 0,
                                                                  total - uploaded if first else total)
        for n, destination in enumerate(destinations):
            if destination.transport != "docker":
                copied = skopeo.copy(stage().source, destination.skopeo_name(), on_line=_progress)
                results[n] = Pushed(str(destination), copied.digest, 0, 0)
    return [results[n] for n in range(len(destinations))]


def _own_tags(image: str) -> list[str]:
    """The image's tags under its own name: identity and date first, latest last."""
    name = image.rpartition(":")[0]
    found = docker.require_image(image, f"build it first: invoke build-{name}")
    tags = [t.rpartition(":")[2] for t in found.tags if t.rpartition(":")[0] == name]
    return sorted(tags, key=lambda t: (t == "latest", not t.startswith(IDENTITY_PREFIX), t))


def _expand(target: str, tags: list[str]) -> list[Destination]:
    """One destination per tag for a registry target given without a tag."""
    destination = parse_destination(target, allowed=("docker", "oci"), default_tag=None)
    if destination.transport != "docker" or destination.image.tag:
        return [destination]
    return [Destination("docker", str(destination.image.with_tag(tag))) for tag in tags]


def extract(image: str, target: str) -> Destination:
    """Write the local `image` to docker-archive:FILE, oci:DIR[:TAG] or rootfs:DIR.

    Files and directories appear only once complete: the work happens beside
    the destination and is renamed into place (an existing OCI layout gets
    the tag in place). When the disk fills up, nothing is left behind and the
    error names the directory.
    """
    destination = parse_destination(target, allowed=("docker-archive", "oci", "rootfs"),
                                    default_tag=image.rpartition(":")[2])
    shape = {"docker-archive": "new-file", "oci": "oci-layout", "rootfs": "new-directory"}[destination.transport]
    source = f"docker-daemon:{image}"
    with output(Path(destination.target), shape, f"--to {destination.transport}:") as path, \
            naming_full_disk(path.parent), tempfile.TemporaryDirectory(prefix=".extract-", dir=path.parent) as work:
        if destination.transport == "docker-archive":
            partial = Path(work) / "image.tar"
            skopeo.copy(source, f"docker-archive:{partial}:{image}", on_line=_progress)
            os.replace(partial, path)
        elif destination.transport == "oci" and (path / "oci-layout").is_file():
            skopeo.copy(source, f"oci:{path}:{destination.tag}", on_line=_progress)
        elif destination.transport == "oci":  # new, or an empty directory, which os.replace replaces
            skopeo.copy(source, f"oci:{Path(work) / 'layout'}:{destination.tag}", on_line=_progress)
            os.replace(Path(work) / "layout", path)
        else:
            layout = Path(work) / "layout"
            skopeo.copy(source, f"oci:{layout}:image", on_line=_progress)
            umoci.raw_unpack(layout, "image", Path(work) / "rootfs")
            os.replace(Path(work) / "rootfs", path)
            shutil.rmtree(layout)
    return destination


def _progress(line: str) -> None:
    if line.startswith(("Copying", "Writing", "Storing")):
        log.info("%s", line)
