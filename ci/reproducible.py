"""Checking that the same inputs give the same image: build twice from scratch,
compare, and when the two differ, say where first.

"From scratch" means on nix-base, without the engine's build cache: Nix
builds every path of the images file again (only the package set's sources
come from the store), and the engine runs every step again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from dataclasses import dataclass

from .core.errors import BuildFailed
from .tools import docker


class NotReproducible(BuildFailed):
    """Two builds of the same inputs gave different images."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The outcome of two builds of the same inputs."""

    first: str  # image IDs
    second: str
    difference: str = ""  # where they first differ, for people

    @property
    def reproducible(self) -> bool:
        return self.first == self.second

    def require(self) -> None:
        """NotReproducible, naming the first difference, unless both builds gave one image."""
        if not self.reproducible:
            raise NotReproducible(f"not reproducible: {self.difference}",
                                  "fix the date, order, mtime or owner the build takes from the moment it runs")


def compare(first: str, second: str) -> Verdict:
    """Compare two local images: config, then layers, then the files of the first differing layer."""
    one, two = (docker.require_image(i, "it was just built; is another process removing images?") for i in (first, second))
    if one.id == two.id:
        return Verdict(one.id, two.id)
    for index, (a, b) in enumerate(zip(one.layers, two.layers, strict=False)):
        if a != b:
            return Verdict(one.id, two.id, f"layer {index + 1} of {len(one.layers)} differs ({a[7:19]} vs {b[7:19]}): "
                           + _first_file_difference(one.id, two.id, index))
    if len(one.layers) != len(two.layers):
        return Verdict(one.id, two.id, f"the images have {len(one.layers)} and {len(two.layers)} layers")
    fields = sorted(k for k in set(one.config) | set(two.config) if one.config.get(k) != two.config.get(k))
    created = f"; created {one.created.isoformat()} vs {two.created.isoformat()}" if one.created != two.created else ""
    return Verdict(one.id, two.id, f"same layers, different config: {', '.join(fields) or 'metadata'}{created}")


def _first_file_difference(first: str, second: str, index: int) -> str:
    """The first path whose entry differs between layer `index` of the two images."""
    one, two = _layer_entries(first, index), _layer_entries(second, index)
    for name in sorted(set(one) | set(two)):
        if name not in one or name not in two:
            return f"{name} is only in the {'second' if name not in one else 'first'} build"
        if one[name] != two[name]:
            what = ("content", "mode", "owner", "mtime", "size", "link target")
            changed = [w for w, x, y in zip(what, one[name], two[name], strict=True) if x != y]
            return f"{name} differs in {', '.join(changed)}"
    return "the entries are the same but their order or tar encoding differs"


def _layer_entries(image: str, index: int) -> dict[str, tuple]:
    """name -> (content digest, mode, uid:gid, mtime, size, link) of each entry of one layer."""
    with docker.saved(image) as path, tarfile.open(path) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        entries = {}
        with tarfile.open(fileobj=outer.extractfile(manifest[0]["Layers"][index]), mode="r|") as layer:
            for entry in layer:
                content = layer.extractfile(entry) if entry.isfile() else None
                digest = hashlib.sha256(content.read()).hexdigest() if content else ""
                entries[entry.name] = (digest, entry.mode, f"{entry.uid}:{entry.gid}", entry.mtime,
                                       entry.size, entry.linkname)
        return entries
