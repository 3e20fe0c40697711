"""Moving a local image out of the engine: push it to registries or OCI
layouts, or extract it to an archive, a layout or a root filesystem."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import docker, skopeo, umoci
from .errors import ConfigError
from .refs import Destination, parse_destination

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pushed:
    destination: str
    digest: str
    blobs_copied: int
    blobs_skipped: int


def local_image(name: str, known: list[str], tag: str = "latest") -> str:
    """name:tag of a local image the toolkit builds; refuses names it does not know."""
    if name not in known:
        raise ConfigError(f"unknown image '{name}'", f"known images: {', '.join(known)}")
    ref = f"{name}:{tag}"
    docker.require_image(ref, f"build it first: invoke build-{name}")
    return ref


def push(image: str, targets: list[str], *, insecure: bool = False) -> list[Pushed]:
    """Copy the local `image` to every target; returns each destination's digest.

    The image leaves the engine once: later targets are copied from the
    first, so a registry that already holds the blobs only receives the
    manifest.
    """
    if not targets:
        raise ConfigError("push needs at least one destination", "pass --to docker://REGISTRY/NAME:TAG or --to oci:DIR:TAG")
    default_tag = image.rpartition(":")[2]
    destinations = [parse_destination(t, allowed=("docker", "oci"), default_tag=default_tag) for t in targets]
    results = []
    source = f"docker-daemon:{image}"
    for destination in destinations:
        log.info("copying %s to %s", image, destination)
        copied = skopeo.copy(source, destination.skopeo_name(), insecure=insecure, on_line=_progress)
        results.append(Pushed(str(destination), copied.digest, copied.blobs_copied, copied.blobs_skipped))
        if len(results) == 1:
            source = destination.skopeo_name()
    return results


def extract(image: str, target: str) -> Destination:
    """Write the local `image` to docker-archive:FILE, oci:DIR[:TAG] or rootfs:DIR.

    Files and directories appear only once complete: the work happens beside
    the destination and is renamed into place.
    """
    destination = parse_destination(target, allowed=("docker-archive", "oci", "rootfs"),
                                    default_tag=image.rpartition(":")[2])
    path = Path(destination.target).absolute()
    if destination.transport in ("docker-archive", "rootfs") and path.exists():
        raise ConfigError(f"{path} already exists", "remove it or choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write under {path.parent}: {exc.strerror}", "choose a writable directory") from None
    source = f"docker-daemon:{image}"
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=path.parent) as work:
        if destination.transport == "docker-archive":
            partial = Path(work) / "image.tar"
            skopeo.copy(source, f"docker-archive:{partial}:{image}", on_line=_progress)
            os.replace(partial, path)
        elif destination.transport == "oci":
            skopeo.copy(source, f"oci:{path}:{destination.tag}", on_line=_progress)
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
