"""Nix on the host: checks that need no nixpkgs.

Builds happen inside the builder image (see ci.build); on the host the
toolkit only parses expressions, which works with no nixpkgs at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core import process
from ..core.errors import BuildFailed, CommandFailed, ConfigError, NetworkUnavailable, ToolkitError, looks_offline


def parse(path: Path) -> None:
    """`nix-instantiate --parse`: a syntax error becomes a one-line ConfigError."""
    try:
        process.run("nix-instantiate", ["--parse", str(path)])
    except CommandFailed as exc:
        first = next((line for line in exc.output.splitlines() if line.startswith("error:")), exc.message)
        raise ConfigError(f"{path} does not parse: {first.removeprefix('error: ')}",
                          "fix the expression; `nix-instantiate --parse FILE` shows where",
                          details=exc.details) from None


def parse_all(root: Path, folders: tuple[str, ...] = ("nix", "tests")) -> list[Path]:
    """Parse every .nix file at the top of `root` (shell.nix) and under its `folders`, but
    for the deliberately broken test fixtures (in folders named `broken`); returns the files checked."""
    nested = (p for folder in folders for p in (root / folder).rglob("*.nix"))
    files = sorted(p for p in (*root.glob("*.nix"), *nested) if "broken" not in p.parts)
    for path in files:
        parse(path)
    return files


def first_error(log_tail: str) -> str:
    """The first `error: ...` line Nix printed (later ones are its consequences), or ""."""
    errors = re.findall(r"^error:\s*(.+)$", log_tail, re.M)
    return errors[0].strip() if errors else ""


def build_error(what: str, log_tail: str, *, fallback: str, offline: str, offline_hint: str) -> ToolkitError:
    """The one line for a failed Nix build of `what`: no network, or Nix's first error.

    `fallback` stands in for Nix's error when it printed none (an exit code);
    `offline` and `offline_hint` say what a missing download means here."""
    if looks_offline(log_tail):
        return NetworkUnavailable(f"{offline}: {first_error(log_tail) or fallback}", offline_hint, details=log_tail)
    return BuildFailed(f"{what} failed: {first_error(log_tail) or fallback}",
                       "fix the Nix expression; the end of the build log is above", details=log_tail)
