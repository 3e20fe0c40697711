"""What the toolkit writes on this machine, said the same way everywhere: the
directory a result goes under, and how big a thing is, for people."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


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
