"""FAT filesystem images, made and read without mounting: mkfs.vfat and
fsck.vfat (dosfstools), mcopy and mdir (mtools).

Nothing here needs root or a loop device, so it works in containers and CI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..core import process

# mtools works in local time; UTC makes the dates it writes the same everywhere.
_MTOOLS_ENV = {"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"}


def make(image: Path, *, label: str, size: int, files: Mapping[str, Path]) -> None:
    """Write a FAT image of `size` bytes at `image`, labelled `label`, holding `files` (name in the image -> source).

    --invariant fixes the volume ID and the creation time, and mcopy -m keeps
    the sources' modification times, so the same inputs give the same bytes.
    """
    with open(image, "wb") as disk:
        disk.truncate(size)
    process.run("mkfs.vfat", ["--invariant", "-n", label, str(image)])
    for name, source in files.items():
        process.run("mcopy", ["-m", "-i", str(image), str(source), f"::{name}"], env=_MTOOLS_ENV)


def check(image: Path) -> None:
    """fsck.vfat without repairing: CommandFailed if the filesystem is damaged."""
    process.run("fsck.vfat", ["-n", str(image)])


def label(image: Path) -> str:
    """The volume label, as mdir reports it."""
    output = process.run("mdir", ["-i", str(image), "::"], env=_MTOOLS_ENV).output
    match = re.search(r"^ Volume in drive : is (.*?)\s*$", output, re.M)
    return match[1] if match else ""


def names(image: Path) -> list[str]:
    """The file names (long names) in the root directory."""
    output = process.run("mdir", ["-b", "-i", str(image), "::"], env=_MTOOLS_ENV).output
    return sorted(line.removeprefix("::/") for line in output.splitlines() if line.startswith("::/"))


def extract(image: Path, name: str, destination: Path) -> Path:
    """Copy the file `name` out of the image to `destination`."""
    process.run("mcopy", ["-n", "-i", str(image), f"::{name}", str(destination)], env=_MTOOLS_ENV)
    return destination

