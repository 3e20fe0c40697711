"""What a build reads: the project directory, its package set and its images
file, and the identities derived from their content."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from docker.utils.build import exclude_paths

from . import runner
from .errors import CommandFailed, ConfigError, ToolMissing

# Tags that carry an image's identity start with this: name:id-<inputs>.
IDENTITY_PREFIX = "id-"


@dataclass(frozen=True)
class Project:
    """The build context and the two Nix files the Dockerfiles are told about.

    `pkgs` and `images` are relative to `root`, which is the docker build
    context; .dockerignore decides what of it the builds see.
    """

    root: Path
    pkgs: str  # the package set: nix/nixpkgs (pinned nixpkgs) or a stand-in
    images: str  # the images file: a function returning { web; web-cmd; }

    def __post_init__(self) -> None:
        for what, relative in (("package set", self.pkgs), ("images file", self.images)):
            if not (self.root / relative).exists():
                raise ConfigError(
                    f"the {what} {relative} does not exist under {self.root}",
                    f"set web.{'pkgs' if what == 'package set' else 'images'} in invoke.yaml to a file of the project",
                )

    def dockerfile(self, name: str) -> str:
        return str(self.root / "images" / f"{name}.Dockerfile")

    def buildargs(self, dockerfile: str, **extra: str) -> dict[str, str]:
        """The build arguments `dockerfile` declares, from the project and `extra`."""
        lines = re.findall(r"^ARG (.+)$", Path(self.dockerfile(dockerfile)).read_text(), re.M)
        declared = {word.split("=", 1)[0] for line in lines for word in line.split()}
        offered = {"PKGS": self.pkgs, "IMAGES": self.images, **extra}
        return {name: value for name, value in offered.items() if name in declared}

    def default_arg(self, dockerfile: str, name: str) -> str:
        """The default of `ARG name=...` in a Dockerfile: pins live there, once."""
        text = Path(self.dockerfile(dockerfile)).read_text()
        match = re.search(rf"^ARG (?:.* )?{name}=(\S*)", text, re.M)
        if not match:
            raise ConfigError(f"{dockerfile}.Dockerfile has no default for {name}", f"add `ARG {name}=...` to it")
        return match[1]

    @cached_property
    def context_files(self) -> list[str]:
        """The files docker sends as build context (after .dockerignore), sorted."""
        ignore = self.root / ".dockerignore"
        patterns = [line.strip() for line in ignore.read_text().splitlines()] if ignore.exists() else []
        patterns = [p for p in patterns if p and not p.startswith("#")]
        included = exclude_paths(str(self.root), patterns)
        return sorted(p for p in included if not (self.root / p).is_dir() or (self.root / p).is_symlink())

    def digest(self, *extra: str) -> str:
        """sha256 of everything a build reads: the context files and `extra` (Dockerfile, builder ID...)."""
        return _digest(self.root, self.context_files, extra)

    def package_set_id(self) -> str:
        """A short hash of the package set's files: the pin, for tags."""
        base = self.root / self.pkgs
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        return _digest(self.root, [str(p.relative_to(self.root)) for p in files], ())[:16]

    def human_tag(self, today: datetime.date | None = None) -> str:
        """The date, and the commit when the project is a git checkout: 2026-11-25-3f2a1b9c."""
        date = (today or datetime.datetime.now(datetime.UTC).date()).isoformat()
        try:
            commit = runner.run("git", ["-C", str(self.root), "rev-parse", "--short=8", "HEAD"]).output.strip()
        except (ToolMissing, CommandFailed):
            return date
        return f"{date}-{commit}"


def _digest(root: Path, files: Iterable[str], extra: Iterable[str]) -> str:
    """Length-prefixed, so that no two different inputs hash alike."""
    sha = hashlib.sha256()

    def add(data: bytes) -> None:
        sha.update(f"{len(data)}:".encode())
        sha.update(data)

    for part in extra:
        add(part.encode())
    for relative in files:
        path = root / relative
        add(relative.encode())
        if path.is_symlink():
            add(b"link:" + os.readlink(path).encode())
        else:
            add(b"x" if os.access(path, os.X_OK) else b"-")
            add(path.read_bytes())
    return sha.hexdigest()
