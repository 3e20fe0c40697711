"""What a build reads: the project directory, its package set and its images
file, and the identities derived from their content."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from docker.utils.build import exclude_paths

from .core import process, resources
from .core.errors import CommandFailed, ConfigError, ToolMissing, quoted
from .labels import Settings as LabelSettings

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
    labels: LabelSettings = LabelSettings()  # source, licenses, version of the images (ci.labels)

    def __post_init__(self) -> None:
        for what, relative in (("package set", self.pkgs), ("images file", self.images)):
            if not (self.root / relative).exists():
                raise ConfigError(
                    f"the {what} {relative} does not exist under {self.root}",
                    f"set web.{'pkgs' if what == 'package set' else 'images'} in invoke.yaml to a file of the project",
                )

    def dockerfile(self, name: str) -> str:
        """The project's images/NAME.Dockerfile when it has one, else the toolkit's."""
        own = self.root / "images" / f"{name}.Dockerfile"
        return str(own if own.is_file() else resources.shipped(f"{name}.Dockerfile"))

    def buildargs(self, dockerfile: str, **extra: str) -> dict[str, str]:
        """The build arguments `dockerfile` declares, from the project and `extra`."""
        declared = {name for name, _ in _args(self._steps(dockerfile))}
        offered = {"PKGS": self.pkgs, "IMAGES": self.images, **extra}
        return {name: value for name, value in offered.items() if name in declared}

    def default_arg(self, dockerfile: str, name: str) -> str:
        """The default of `ARG name=...` in a Dockerfile: pins live there, once."""
        default = next((value for declared, value in _args(self._steps(dockerfile))
                        if declared == name and value is not None), None)
        if default is None:
            raise ConfigError(f"{dockerfile}.Dockerfile has no default for {name}", f"add `ARG {name}=...` to it")
        return default

    def one_container_build(self, dockerfile: str, buildargs: dict[str, str]) -> OneContainerBuild | None:
        """`dockerfile` as one container can run it, when it is one stage of ARG steps, one
        `COPY . /DEST` and RUN steps (shell form); None when it needs docker build."""
        steps = self._steps(dockerfile)
        start = next((i for i, (instruction, _) in enumerate(steps) if instruction != "ARG"), len(steps))
        if start == len(steps) or steps[start][0] != "FROM":
            return None
        image = _substituted(steps[start][1], _values(_args(steps[:start]), buildargs))
        environment: dict[str, str] = {}
        context_to: str | None = None
        runs: list[str] = []
        for instruction, value in steps[start + 1:]:
            words = value.split()
            if instruction == "ARG" and not runs:
                environment.update(_values(_args([(instruction, value)]), buildargs))
            elif instruction == "COPY" and context_to is None and not runs and len(words) == 2 \
                    and words[0] == "." and words[1].startswith("/"):
                context_to = words[1]
            elif instruction == "RUN" and not value.lstrip().startswith("["):
                runs.append(value)
            else:
                return None
        if image is None or context_to is None or not runs:
            return None
        return OneContainerBuild(image, context_to, environment, runs)

    def _steps(self, dockerfile: str) -> list[tuple[str, str]]:
        return _instructions(self.dockerfile(dockerfile))

    @cached_property
    def context_files(self) -> list[str]:
        """The files docker sends as build context (after .dockerignore), sorted."""
        ignore = self.root / ".dockerignore"
        # No .dockerignore: everything but git's own files (a new commit alone changes no image).
        patterns = [line.strip() for line in ignore.read_text().splitlines()] if ignore.exists() else [".git"]
        patterns = [p for p in patterns if p and not p.startswith("#")]
        included = exclude_paths(str(self.root), patterns)
        files = sorted(p for p in included if not (self.root / p).is_dir() or (self.root / p).is_symlink())
        _check_links(self.root, files)
        return files

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
            commit = process.run("git", ["-C", str(self.root), "rev-parse", "--short=8", "HEAD"]).output.strip()
        except (ToolMissing, CommandFailed):
            return date
        return f"{date}-{commit}"


@dataclass(frozen=True)
class OneContainerBuild:
    """A Dockerfile that one container can run: the classic builder would make a container
    and an image for each of its steps; ci.build makes one container, and no image."""

    image: str  # FROM, with the build arguments in it
    context_to: str  # where `COPY .` puts the build context
    environment: dict[str, str]  # the stage's ARGs, as its RUN steps see them
    runs: list[str]  # the RUN steps, in order, each for /bin/sh -c


def _check_links(root: Path, files: list[str]) -> None:
    """ConfigError naming the first symbolic link of the build context that leads out of it. The
    build follows a link inside its container, where a path outside the context is the builder's
    own file (a page linked to /etc/shadow would serve the builder's), and the identity would not
    cover what it reads."""
    real_root = root.resolve()
    sent = set(files)
    hint = "the build reads only the build context: copy the file in, or link to a file of the context with a relative path"
    for relative in files:
        path = root / relative
        if not path.is_symlink():
            continue
        target = os.readlink(path)
        resolved = path.resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(real_root):
            raise ConfigError(f"{relative} in the build context is a symbolic link to {quoted(target)}, "
                              f"which is {'an absolute path' if os.path.isabs(target) else 'outside the project'}", hint)
        inside = str(resolved.relative_to(real_root))
        if inside not in sent and not any(name.startswith(f"{inside}/") for name in sent):
            raise ConfigError(f"{relative} in the build context is a symbolic link to {quoted(target)}, "
                              f"which the build context leaves out (.dockerignore)", hint)


@cache  # a build reads the same Dockerfile for its identity, its arguments and its steps
def _instructions(path: str) -> list[tuple[str, str]]:
    """The instructions of the Dockerfile at `path` (continued lines joined, comments left out)."""
    from dockerfile_parse import DockerfileParser

    parsed = DockerfileParser(path, env_replace=False).structure
    return [(step["instruction"], step["value"]) for step in parsed if step["instruction"] != "COMMENT"]


def _args(steps: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(name, default or None) of each ARG in `steps`: `ARG A=1 B` declares two."""
    declared = []
    for instruction, value in steps:
        if instruction == "ARG":
            for word in shlex.split(value):
                name, equals, default = word.partition("=")
                declared.append((name, default if equals else None))
    return declared


def _values(declared: list[tuple[str, str | None]], buildargs: dict[str, str]) -> dict[str, str]:
    """The value of each declared ARG: the build argument, else its default; unset without either."""
    values = {name: buildargs.get(name, default) for name, default in declared}
    return {name: value for name, value in values.items() if value is not None}


def _substituted(value: str, arguments: dict[str, str]) -> str | None:
    """FROM's image with $NAME and ${NAME} replaced; None for flags, AS, or anything unresolved."""
    image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: arguments.get(m[1] or m[2], "$"), value.strip())
    return None if not image or "$" in image or image.startswith("--") or " " in image else image


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
