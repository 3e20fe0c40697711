"""When the engine stops under a build: `needs_engine` turns the engine going
away, whatever form it takes, into one EngineStopped line, and first sweeps
what earlier builds left when the engine stopped under them."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.utils
import requests
import urllib3.exceptions

from ...core.errors import (
    DockerUnavailable,
    EngineStopped,
    ToolkitError,
)
from .client import LABEL, _host, _quietly, _timestamp, client

log = logging.getLogger(__name__)


F = TypeVar("F", bound=Callable[..., Any])


# What the engine going away looks like from here: a connection refused or
# dropped, a stream cut short, or a failure it reported while shutting down
# (a build step or a stream container killed).
_ENGINE_GONE = (ToolkitError, docker.errors.DockerException, requests.RequestException,
                urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def needs_engine(doing: str) -> Callable[[F], F]:
    """For the tasks that build in the engine: first remove what builds left when the engine
    stopped under them (sweep), then run. Should the engine go away meanwhile, the failure,
    whatever form it took, becomes one EngineStopped line saying what was under way: `doing`,
    formatted with the function's arguments ("building {name}")."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                sweep()
                return function(*args, **kwargs)
            except DockerUnavailable:
                raise  # never reached, or already said
            except _ENGINE_GONE as exc:
                if _answers():
                    raise  # the engine is there: the failure is the task's own
                log.debug("the engine went away: %r", exc)
                raise EngineStopped(
                    f"the Docker engine at {_host()} stopped answering while "
                    f"{doing.format_map(signature.bind(*args, **kwargs).arguments)}",
                    "start it again and re-run: the next build removes what this one left in it",
                ) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _answers() -> bool:
    """Whether the engine answers now, on a new connection, within seconds. (A stopping
    engine closes its socket first, then stops its containers: a build step it kills fails
    while this already says no.)"""
    try:
        with contextlib.closing(docker.from_env(timeout=5)) as probe:
            return bool(probe.ping())
    except (docker.errors.DockerException, requests.RequestException):
        return False


@cache  # once per process: build-web may run build-cache, which runs build-base
def sweep() -> None:
    """Remove what builds left when the engine stopped under them, as it left them unfinished:
    the toolkit's containers that are not running (the classic builder's step containers carry
    the label too, from the builder images), and its untagged images that were never tagged
    (a builder image, the steps of a build cut short); only those made before the engine last
    started. Everything a live run makes is younger than that, so concurrent runs are never
    touched; an image a container or a tag still needs is kept by the engine itself. Once a
    sweep has removed all it found, the next ones wait for the engine's next start."""
    api = client().api
    try:
        network = api.inspect_network("bridge")  # the engine makes it anew at every start
    except docker.errors.NotFound:
        return  # dockerd --bridge=none: no way to date its start, so nothing is swept
    stamp = _sweep_stamp()
    if _read(stamp) == network["Id"]:
        return  # swept since this engine started: old images that lost their tag are not inspected again
    started = _timestamp(network["Created"])
    containers = [c["Id"] for c in api.containers(all=True, filters={"label": LABEL, "status": ["created", "exited", "dead"]})
                  if c["Labels"].get(LABEL) != "run"]  # run-web's and start's: the user's to keep or remove
    images = [i["Id"] for i in api.images(filters={"dangling": True, "label": LABEL})]
    # The engine's own times, to the nanosecond: a stopping engine commits a build step within
    # the second before it starts again.
    removed = [_removed(lambda c=c: api.remove_container(c["Id"], force=True), f"container {c['Id'][:12]}")
               for c in _inspected(api.inspect_container, containers) if _timestamp(c["Created"]) < started]
    removed += [_quietly(lambda i=i: api.remove_image(i["Id"]))  # and its untagged parents, the build's steps
                for i in _inspected(api.inspect_image, images) if _timestamp(i["Created"]) < started and _never_tagged(i)]
    if any(removed):
        log.info("removed %d containers and images left by builds the engine stopped under", sum(removed))
    if all(removed):
        with contextlib.suppress(OSError):  # no place to keep it: the next build sweeps again
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(network["Id"])


def _sweep_stamp() -> Path:
    """Where the start of the engine last swept is kept, one file per engine address."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "nix-ci" / f"swept-{hashlib.sha256(_host().encode()).hexdigest()[:16]}"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _inspected(describe: Callable[[str], Mapping[str, Any]], ids: list[str]) -> list[Mapping[str, Any]]:
    found = []
    for ident in ids:
        with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
            found.append(describe(ident))
    return found


def _never_tagged(image: Mapping[str, Any]) -> bool:
    """True for a build's own intermediate images; false for one that lost its tag to a newer one (an old nix-cache)."""
    return str((image.get("Metadata") or {}).get("LastTagTime", "")).startswith("0001-")


def _removed(action: Callable[[], object], what: str) -> bool:
    try:
        action()
    except docker.errors.NotFound:
        pass  # another build's sweep was first
    except (docker.errors.DockerException, requests.RequestException) as exc:
        # e.g. dockerd 20.10 whose data-root is a mount of its own (it makes one when / is not
        # shared): a root filesystem the stopping engine left mounted cannot be removed
        reason = str(getattr(exc, "explanation", None) or exc).strip()
        log.warning("cannot remove %s, left by a build the engine stopped under: %s", what, reason.splitlines()[0][:300])
        return False
    return True
