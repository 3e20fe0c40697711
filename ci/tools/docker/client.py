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


def _quietly(action: Any, *, container: str | None = None, image: str | None = None) -> bool:
    """Run a cleanup step; False when it failed. The failure that caused the cleanup stays the one
    reported, but what the step leaves behind does not go unsaid: a `container` or `image` that
    could not be removed is named in one warning line, with the command that removes it. Something
    already gone is no failure. An engine that went away fails the step too (the next build sweeps)."""
    try:
        action()
    except docker.errors.NotFound:
        return True
    except (docker.errors.DockerException, requests.RequestException) as exc:
        reason = str(getattr(exc, "explanation", None) or exc).strip()
        reason = reason.splitlines()[0][:200] if reason else type(exc).__name__
        if container or image:
            what, command = (f"container {container}", f"docker rm -f {container}") if container else \
                (f"image {image}", f"docker rmi {image}")
            log.warning("warning: could not remove the %s (%s); it is left behind: `%s` removes it", what, reason, command)
        else:
            log.debug("cleanup failed: %s", reason)
        return False
    return True


def _api_error(exc: docker.errors.APIError, what: str) -> ToolkitError:
    text = str(exc.explanation or exc).strip()
    return ToolkitError(f"{what}: {text.splitlines()[0][:300] if text else type(exc).__name__}")
