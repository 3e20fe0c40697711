"""The files the toolkit ships with its code: the Dockerfiles, the skopeo
policy, the Debian builder's files and the runner's scripts (images/).

In this repository they are images/ beside ci/. An installed toolkit carries
the same directory as package data (the wheel's nix_ci/images, see
pyproject.toml), so that another repository needs only its images file and
its page. A project's own images/NAME.Dockerfile takes precedence over the
shipped one (ci.project).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

PACKAGE = "nix_ci"  # the wheel's package that holds tasks.py and images/


@cache
def images() -> Path:
    """The shipped images/ directory."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "images" / "policy.json").is_file():
            return Path(location) / "images"
    return Path(__file__).resolve().parents[2] / "images"  # a checkout, not installed


def shipped(relative: str) -> Path:
    """A shipped file or directory under images/, e.g. policy.json or debian-builder."""
    return images() / relative
