"""Nix on the host: checks that need no nixpkgs.

Builds happen inside the builder image (see ci.build); on the host the
toolkit only parses expressions, which works with no nixpkgs at all.
"""

from __future__ import annotations

from pathlib import Path

from . import runner
from .errors import CommandFailed, ConfigError


def parse(path: Path) -> None:
    """`nix-instantiate --parse`: a syntax error becomes a one-line ConfigError."""
    try:
        runner.run("nix-instantiate", ["--parse", str(path)])
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
