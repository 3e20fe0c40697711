"""One-off Nix builds in a container of the builder image (nix-base), as
bundle-key, bundle and build-vm run them: the project's files that go in, and
what to say when the builder is missing or its build needs the network."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

BUILDER_HINT = "build it with `invoke build-base` (offline: `invoke build-base --from-debian`)"

# A Nix build in the builder that needed a download it could not make.
OFFLINE_HINT = "build the builder with network access (`invoke build-base`), or use a builder whose store holds them"


def inputs_tar(root: Path, paths: list[str], *, under: str, files: Mapping[str, bytes] = {},  # noqa: B006 - never changed
               copies: Mapping[str, Path] = {},  # noqa: B006
               leave_out: Callable[[tarfile.TarInfo], tarfile.TarInfo | None] | None = None) -> bytes:
    """A tar archive to unpack at / in the builder: the folders holding `paths` (relative to
    `root`) under `under`, files of this machine at the paths `copies` names, and `files`
    (path: content) made private (0600). `leave_out` filters what the folders hold."""
    folders = sorted({str(Path(p).parent if (root / p).is_file() else Path(p)) for p in paths})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in folders:
            archive.add(root / folder, arcname=f"{under.lstrip('/')}/{folder}", filter=leave_out)
        for name, source in copies.items():
            archive.add(source, arcname=name.lstrip("/"))
        for name, data in files.items():
            entry = tarfile.TarInfo(name.lstrip("/"))
            entry.size, entry.mode = len(data), 0o600
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()
