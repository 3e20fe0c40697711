"""Files of this machine, said the same way everywhere: a file the user gives,
the place a result goes, and how big a thing is, for people.

Every task that writes a file or a directory asks `output` first. The rules:
- only regular files are written: a device, socket, FIFO or symbolic link in
  the way is refused, never replaced;
- a directory gets a layout (an OCI layout, a binary cache) only when it is
  empty or already holds one; a root filesystem only a new directory;
- the place must be writable, which is tried before any work starts;
- a refusal is one line, and a task that fails leaves nothing: `output`
  removes the directories it made for the result (its callers write beside
  the result and rename into place).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from .errors import NO_SPACE_HINT, ConfigError, DiskFull, ToolkitError

# What a task writes at a path: a file, a new directory, a directory it fills, or an OCI layout.
Shape = Literal["file", "new-file", "new-directory", "directory", "oci-layout", "file-or-directory"]

_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
          stat.S_IFIFO: "a FIFO", stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a directory", stat.S_IFREG: "a file"}


def read_input(path: Path, what: str, option: str) -> bytes:
    """The bytes of a user-given file, or a one-line ConfigError saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        reason = "it does not exist"
    except IsADirectoryError:
        reason = "it is a directory"
    except PermissionError:
        reason = "permission denied"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise ConfigError(f"cannot read the {what} file {path}: {reason}", f"pass a readable file to {option}")


def writable_directory(directory: Path) -> Path:
    """`directory`, made with its parents when missing, and writable; ConfigError when it cannot be."""
    _make_directories(directory)
    _try_writing(directory)
    return directory


def check_output(path: Path, shape: Shape, option: str) -> None:
    """ConfigError unless a task may write `shape` at `path` (see the rules above); nothing is made.
    `option` names where the path came from, for the hint."""
    kind = _kind(path)
    if kind is None:
        return
    if shape == "file-or-directory" and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise ConfigError(f"{path} is {_KINDS.get(kind, 'neither a file nor a directory')}, not a regular file or directory",
                          f"give {option} the path of a file or directory")
    if shape == "new-file" and kind == stat.S_IFDIR:
        raise ConfigError(f"{path} already exists", f"remove it, or give {option} a new path")
    if shape in ("file", "new-file") and kind != stat.S_IFREG:
        raise ConfigError(f"{path} is {_KINDS.get(kind, 'not a regular file')}, not a regular file",
                          f"the toolkit writes only regular files: give {option} a file path")
    if shape in ("new-file", "new-directory"):
        raise ConfigError(f"{path} already exists", f"remove it, or give {option} a new path")
    if shape in ("directory", "oci-layout") and kind != stat.S_IFDIR:
        raise ConfigError(f"{path} is {_KINDS.get(kind, 'not a directory')}, not a directory",
                          f"give {option} a new or empty directory")
    if shape == "oci-layout" and not _empty(path) and not (path / "oci-layout").is_file():
        raise ConfigError(f"{path} is neither empty nor an OCI layout",
                          f"give {option} a new or empty directory, or an existing OCI layout")


@contextmanager
def output(path: Path, shape: Shape, option: str) -> Iterator[Path]:
    """`path`, absolute, once `check_output` accepts it and its directory is made and writable; when
    the block fails, the directories made here are removed again (when empty)."""
    path = path.absolute()
    check_output(path, shape, option)
    made = _make_directories(path.parent)
    try:
        _try_writing(path.parent)
        yield path
    except BaseException:
        for directory in made:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _kind(path: Path) -> int | None:
    """The file type of `path` itself (a link is not followed); None when nothing is there."""
    try:
        return stat.S_IFMT(path.lstat().st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if exc.errno == errno.ENOTDIR and blocker is not None:
            kind = _KINDS.get(stat.S_IFMT(blocker.lstat().st_mode), "not a directory")
            raise ConfigError(f"cannot write under {path.parent}: {blocker} is {kind}", "choose a writable directory") from None
        raise ConfigError(f"cannot write under {path.parent}: {exc.strerror}", "choose a writable directory") from None


def _empty(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return next(entries, None) is None


def _make_directories(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents; those made, deepest first."""
    missing = []
    for parent in [directory, *directory.parents]:
        kind = _kind(parent)
        if kind is None:
            missing.append(parent)
            continue
        if kind != stat.S_IFDIR and not (kind == stat.S_IFLNK and parent.is_dir()):
            raise ConfigError(f"cannot write under {directory}: {parent} is {_KINDS.get(kind, 'not a directory')}",
                              "choose a writable directory")
        break
    made = []
    try:
        for parent in reversed(missing):
            parent.mkdir()
            made.insert(0, parent)
    except OSError as exc:
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise _cannot_write(directory, exc) from None
    return made


def _cannot_write(directory: Path, exc: OSError) -> ToolkitError:
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"no space left on device under {directory}", NO_SPACE_HINT)
    return ConfigError(f"cannot write under {directory}: {exc.strerror}", "choose a writable directory")


def _try_writing(directory: Path) -> None:
    """ConfigError unless a file can be made in `directory` now (read-only, /proc, no permission)."""
    try:
        probe = tempfile.mkdtemp(prefix=".nix-ci-probe-", dir=directory)
    except OSError as exc:
        raise _cannot_write(directory, exc) from None
    os.rmdir(probe)


def human_size(count: float) -> str:
    """A byte count for logs and summaries: 512 B, 2.5 kB, 61.3 MB, 1.2 GB."""
    amount = float(count)
    for unit in ("B", "kB", "MB"):
        if amount < 1000:
            return f"{amount:.0f} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} GB"
