"""umoci: unpacking OCI layouts into root filesystems."""

from __future__ import annotations

from pathlib import Path

from ..core import process


def raw_unpack(layout: Path, tag: str, rootfs: Path) -> None:
    """Unpack the image `tag` of the OCI layout into a plain root filesystem."""
    process.run("umoci", ["raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)])
