"""The connection to the Docker engine, through the docker SDK, and what every
call to it shares: the label on all the toolkit makes, the engine's times, and
how a failed call becomes one line (or, in a cleanup, is let go)."""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from functools import cache
from typing import Any

import docker
import docker.errors
import docker.utils
import requests

from ...core.errors import (
    DockerUnavailable,
    ToolkitError,
)

log = logging.getLogger(__name__)


# Every container and image the toolkit makes carries this label, so that
# leftovers can be found and tests can prove there are none.
LABEL = "io.github.nix-ci.toolkit"


BUILD_TAIL = 25


@cache
def client() -> docker.DockerClient:
    """A connected client, or DockerUnavailable saying how to start the engine."""
    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise DockerUnavailable(
            f"cannot reach the Docker daemon at {_host()} ({_reason(exc)})",
            "start dockerd (e.g. `sudo systemctl start docker`) or point DOCKER_HOST at a running engine",
        ) from None
    return engine


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for known in ("No such file or directory", "Connection refused", "Permission denied"):
        if known in text:
            return known.lower()
    return text[:120]


def _host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def _timestamp(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def _quietly(action: Any) -> bool:
    """Run a cleanup step; False when it failed. An engine that went away fails it too: the
    failure that caused the cleanup is the one to report (and the next build sweeps)."""
    try:
        action()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.debug("cleanup failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    return True


def _api_error(exc: docker.errors.APIError, what: str) -> ToolkitError:
    text = str(exc.explanation or exc).strip()
    return ToolkitError(f"{what}: {text.splitlines()[0][:300] if text else type(exc).__name__}")
