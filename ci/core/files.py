"""Files of this machine, said the same way everywhere: a file the user gives,
the directory a result goes under, and how big a thing is, for people."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


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
    """`directory`, made with its parents when missing; ConfigError when it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write under {directory}: {exc.strerror}", "choose a writable directory") from None
    return directory


def human_size(count: float) -> str:
    """A byte count for logs and summaries: 512 B, 2.5 kB, 61.3 MB, 1.2 GB."""
    amount = float(count)
    for unit in ("B", "kB", "MB"):
        if amount < 1000:
            return f"{amount:.0f} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} GB"
