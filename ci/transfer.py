"""Moving a local image out of the engine: push it to registries or OCI
layouts, or extract it to an archive, a layout or a root filesystem."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .core.errors import ConfigError, naming_full_disk, quoted
from .core.files import check_output, human_size, output
from .core.refs import Destination, check_tag, parse_destination
from .project import IDENTITY_PREFIX
from .tools import docker, skopeo, umoci

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


def push(image: str, targets: list[str], *, insecure: bool = False) -> list[Pushed]:
    """Copy the local `image` to every target; returns each destination's digest.

    A registry target without a tag gets every tag the image has under its
    name (its input identity id-…, its date, then latest, last). The image
    leaves the engine once: later targets are copied from the first, so a
    registry that holds the blobs only receives manifests. When a repository
    already holds the image's identity tag, nothing but tags is written.
    """
    if not targets:
        raise ConfigError("push needs at least one destination",
                          "pass --to docker://REGISTRY/NAME[:TAG] or --to oci:DIR[:TAG]")
    tags = _own_tags(image)
    destinations = [d for t in targets for d in _expand(t, tags)]
    for destination in destinations:
        if destination.transport == "oci":
            check_output(Path(destination.target).absolute(), "oci-layout", "--to oci:")
    identity = next((t for t in tags if t.startswith(IDENTITY_PREFIX)), None)
    first: str | None = None
    sizes: dict[str, int] = {}
    results = []
    for destination in destinations:
        source = first or f"docker-daemon:{image}"
        if destination.transport == "docker" and identity:
            already = f"docker://{destination.image.name}:{identity}"
            if already != destination.skopeo_name() and skopeo.exists(already, insecure=insecure):
                log.info("%s already holds this image (%s): only the tag is written", destination.image.name, identity)
                source = already
        log.info("copying %s to %s", image, destination)
        copied = skopeo.copy(source, destination.skopeo_name(), insecure=insecure, on_line=_progress)
        if destination.transport == "docker" and not {*copied.uploaded, *copied.skipped} <= sizes.keys():
            sizes |= skopeo.blob_sizes(destination.skopeo_name(), insecure=insecure)
        pushed = Pushed(str(destination), copied.digest,
                        sum(sizes.get(b, 0) for b in copied.uploaded), sum(sizes.get(b, 0) for b in copied.skipped))
        if copied.uploaded or copied.skipped:
            log.info("uploaded %s in %d layers; %s in %d layers were already there",
                     human_size(pushed.bytes_uploaded), len(copied.uploaded),
                     human_size(pushed.bytes_skipped), len(copied.skipped))
        results.append(pushed)
        first = first or destination.skopeo_name()
    return results



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
