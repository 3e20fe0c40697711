"""ISO 9660 images, made and read without mounting: xorriso.

xorriso honours SOURCE_DATE_EPOCH for every date it writes, so the same
files give the same image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..core import process


def make(image: Path, *, volume_id: str, files: Mapping[str, Path], date: int) -> None:
    """Write an ISO 9660 image (with Rock Ridge and Joliet long names) at `image` holding `files` (name -> source)."""
    grafts = [f"{name}={source}" for name, source in files.items()]
    process.run("xorriso", ["-as", "mkisofs", "-quiet", "-output", str(image), "-volid", volume_id,
                           "-joliet", "-rock", "-graft-points", *grafts],
               env={"SOURCE_DATE_EPOCH": str(date)})


def volume_id(image: Path) -> str:
    output = process.run("xorriso", ["-indev", str(image), "-pvd_info"]).output
    match = re.search(r"^Volume Id\s*:\s*(.*?)\s*$", output, re.M)
    return match[1] if match else ""


def names(image: Path) -> list[str]:
    """The file names in the root directory."""
    output = process.run("xorriso", ["-indev", str(image), "-ls", "/"]).output
    return sorted(match[1] for match in re.finditer(r"^'(.+)'$", output, re.M))


def extract(image: Path, name: str, destination: Path) -> Path:
    process.run("xorriso", ["-osirrox", "on", "-indev", str(image), "-extract", f"/{name}", str(destination)])
    return destination


def check(image: Path) -> None:
    """xorriso reads the whole directory tree: CommandFailed if it cannot."""
    process.run("xorriso", ["-indev", str(image), "-find", "/", "-exec", "report_damage"])
