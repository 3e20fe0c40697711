"""OCI labels and annotations: what an image says about where it comes from.

Labels go into the image config, so they take part in the image ID: only
facts that stay the same for the same inputs go there (source, title,
description, licenses, version). Facts that change with every commit
(revision, created) would give the same files a new ID at each commit; they
go into the manifest's annotations, written at push time, with `created`
taken from the commit date (or SOURCE_DATE_EPOCH), never from the clock.

An image built FROM another inherits its labels. nix-base and nix-cache are
built FROM the nixos/nix image, whose labels name NixOS/nix as the source:
every org.opencontainers.image.* key the base sets is overridden here, with
our value or, when we have none, with an empty one.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .core import process
from .core.errors import CommandFailed, ConfigError, ToolMissing

log = logging.getLogger(__name__)

PREFIX = "org.opencontainers.image."
SOURCE, TITLE, DESCRIPTION = f"{PREFIX}source", f"{PREFIX}title", f"{PREFIX}description"
LICENSES, VERSION = f"{PREFIX}licenses", f"{PREFIX}version"
REVISION, CREATED = f"{PREFIX}revision", f"{PREFIX}created"


@dataclass(frozen=True)
class Settings:
    """The labels configuration (labels.* in invoke.yaml)."""

    source: str | None = None  # the repository URL; None: GitHub's repository, else the git remote origin
    licenses: str | None = None  # an SPDX expression for the images the images file builds
    version: str | None = None  # the version of those images


@dataclass(frozen=True)
class Origin:
    """Where the project comes from: its repository, and the commit a push publishes."""

    source: str  # https URL of the repository; "" when unknown
    revision: str  # full commit hash; "" outside a git checkout
    created: str  # RFC 3339 date of that commit (or SOURCE_DATE_EPOCH); "" when unknown

    def annotations(self) -> dict[str, str]:
        """The per-commit facts, for the manifest."""
        return {key: value for key, value in ((REVISION, self.revision), (CREATED, self.created)) if value}


def origin(root: Path, configured_source: str | None = None) -> Origin:
    """The project's origin and the commit checked out (GITHUB_SHA on GitHub)."""
    revision = os.environ.get("GITHUB_SHA") or _git(root, "rev-parse", "HEAD")
    return Origin(source(root, configured_source), revision, _created(root))


@functools.cache
def source(root: Path, configured: str | None = None) -> str:
    """The repository URL: labels.source, else GitHub's repository, else the git remote `origin`; "" when none.

    A configured source must be a URL. A remote that is not one (a clone of a local
    directory, a path) gives no source label rather than failing every build: it says
    nothing a consumer of the image could follow."""
    found = configured or _github_repository()
    if found:
        return normalise_source(found)
    remote = _git(root, "remote", "get-url", "origin")
    try:
        return normalise_source(remote) if remote else ""
    except ConfigError:
        log.debug("the git remote origin is not a repository URL: the images get no source label (labels.source sets one)")
        return ""


# What the builder images are, for their labels (the images file says what web and services are).
DESCRIPTIONS = {
    "nix-base": "Nix builder with the pinned package set in its store",
    "nix-cache": "Nix builder with the tools and the web closure pre-built",
}


def builder_labels(root: Path, settings: Settings, name: str, *, version: str,
                   inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OCI labels of nix-base or nix-cache, blanking those of the image they are built FROM.
    (licenses and version of the settings are the web images'; a builder is many packages.)"""
    return image_labels(title=name, description=DESCRIPTIONS[name], source=source(root, settings.source),
                        version=version, inherited=inherited)


def images_file_labels(root: Path, settings: Settings) -> dict[str, str]:
    """What the toolkit passes to the images file: where the image comes from. The images file
    adds what the image is (title, description)."""
    return image_labels(title="", description="", source=source(root, settings.source),
                        licenses=settings.licenses, version=settings.version)


def normalise_source(url: str) -> str:
    """A browsable https URL of a git remote, without credentials or `.git`:
    git@github.com:o/r.git and https://user:token@github.com/o/r.git both give https://github.com/o/r."""
    text = url.strip()
    scp = re.match(r"^(?:ssh://)?[\w.-]+@([\w.-]+)[:/](.+)$", text)
    if scp:
        text = f"https://{scp[1]}/{scp[2]}"
    text = re.sub(r"^(https?://)[^/@]*@", r"\1", text)  # never a user name or token in a label
    text = re.sub(r"^git://", "https://", text)
    if not re.match(r"^https?://[^/]+/", text):
        raise ConfigError(f"the source {url.split('@')[-1]!r} is not a repository URL",
                          "set labels.source in invoke.yaml to the repository's https URL")
    return re.sub(r"\.git/?$", "", text).rstrip("/")


def image_labels(*, title: str, description: str, source: str, licenses: str | None = None,
                 version: str | None = None, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OCI labels of an image: ours, and an empty value for every other OCI key the base image set."""
    ours = {SOURCE: source, TITLE: title, DESCRIPTION: description, LICENSES: licenses or "", VERSION: version or ""}
    overridden = {key: "" for key in (inherited or {}) if key.startswith(PREFIX)}
    return {**overridden, **{key: value for key, value in ours.items() if value}}


def as_nix_argument(labels: Mapping[str, str]) -> str:
    """Labels for an images file's `labels` argument (a JSON string: `--argstr labels`)."""
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


def _created(root: Path) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or _git(root, "log", "-1", "--format=%ct")
    if not epoch:
        return ""
    try:
        moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds",
                          "set it to a Unix time, e.g. $(git log -1 --format=%ct)") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _github_repository() -> str:
    server, repository = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    return f"{server}/{repository}" if server and repository else ""


def _git(root: Path, *args: str) -> str:
    try:
        return process.run("git", ["-C", str(root), *args]).output.strip()
    except (ToolMissing, CommandFailed):
        return ""
