"""What a build reads: the project directory, its package set and its images file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Project:
    """The build context and the two Nix files the Dockerfiles are told about.

    `pkgs` and `images` are relative to `root`, which is the docker build
    context; .dockerignore decides what of it the builds see.
    """

    root: Path
    pkgs: str  # the package set: nix/pkgs.nix (pinned nixpkgs) or a stand-in
    images: str  # the images file: a function returning { web; web-cmd; }

    def __post_init__(self) -> None:
        for what, relative in (("package set", self.pkgs), ("images file", self.images)):
            if not (self.root / relative).is_file():
                raise ConfigError(
                    f"the {what} {relative} does not exist under {self.root}",
                    f"set web.{'pkgs' if what == 'package set' else 'images'} in invoke.yaml to a file of the project",
                )

    def dockerfile(self, name: str) -> str:
        return str(self.root / "images" / f"{name}.Dockerfile")

    def buildargs(self, dockerfile: str, **extra: str) -> dict[str, str]:
        """The build arguments `dockerfile` declares, from the project and `extra`."""
        declared = set(re.findall(r"^ARG (\w+)", Path(self.dockerfile(dockerfile)).read_text(), re.M))
        offered = {"PKGS": self.pkgs, "IMAGES": self.images, **extra}
        return {name: value for name, value in offered.items() if name in declared}

    def default_arg(self, dockerfile: str, name: str) -> str:
        """The default of `ARG name=...` in a Dockerfile: pins live there, once."""
        text = Path(self.dockerfile(dockerfile)).read_text()
        match = re.search(rf"^ARG {name}=(\S+)$", text, re.M)
        if not match:
            raise ConfigError(f"{dockerfile}.Dockerfile has no default for {name}", f"add `ARG {name}=...` to it")
        return match[1]
