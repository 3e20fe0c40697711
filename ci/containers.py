"""Images run as containers on this machine, their ports published: start one
and return once every port answers HTTP; stop it. run-web and
`start --container` both start theirs here, each with its own hints."""

from __future__ import annotations

import errno
import logging
import socket
import time
from dataclasses import dataclass

import requests

from .core.errors import PortInUse, ToolkitError
from .tools import docker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    container: str  # its name
    urls: tuple[str, ...]  # one per published port, each answered HTTP


@dataclass(frozen=True)
class Hints:
    """What to tell the user, in the words of the task that starts the container."""

    no_image: str  # the image is not built
    exists: str  # a container of that name exists already
    port_taken: str  # a host port is taken; {inside} is the container's port
    no_answer: str  # it runs but does not answer in time


WEB_HINTS = Hints(
    no_image="build it first: invoke build-web",
    exists="stop it with `invoke stop-web` first",
    port_taken="stop what uses it (`invoke stop-web` if it is the web container) or pass --port",
    no_answer="its log is above; check the port the image listens on (web.container_port)",
)


def check_port_free(host: str, port: int,
                    hint: str = "stop what uses it (`invoke stop-web` if it is the web container) or pass --port") -> None:
    """PortInUse unless something could listen on `host:port` now; `hint` says how to free it.

    SO_REUSEADDR, as the engine binds: connections of an earlier container
    still closing (TIME_WAIT) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(f"port {port} on {host} is already taken", hint) from None


def start(image: str, *, name: str, host: str, ports: tuple[tuple[int, int], ...], timeout: float,
          hints: Hints) -> Started:
    """Start `image` as container `name`, each (host port, container port) of `ports` published
    on `host`; return once each answers HTTP. Removed again if it does not."""
    docker.require_image(image, hints.no_image)
    if docker.container_state(name) is not None:
        raise ToolkitError(f"a container named {name} already exists", hints.exists)
    for outside, inside in ports:
        check_port_free(host, outside, hints.port_taken.format(inside=inside))
    docker.run_detached(image, name=name, ports={f"{inside}/tcp": (host, outside) for outside, inside in ports},
                        no_image=hints.no_image)
    urls = tuple(f"http://{host}:{outside}/" for outside, _ in ports)
    try:
        for url in urls:
            wait_for_http(url, name, timeout, hint=hints.no_answer)
    except BaseException:
        docker.remove_container(name, timeout=1)
        raise
    log.info("%s answers on %s", name, " ".join(urls))
    return Started(name, urls)


def run_web(image: str, *, name: str, host: str, port: int, container_port: int, timeout: float) -> Started:
    """Start the web image as container `name`, published on host:port; return once it answers HTTP."""
    return start(image, name=name, host=host, ports=((port, container_port),), timeout=timeout, hints=WEB_HINTS)


def wait_for_http(url: str, name: str, timeout: float, *, hint: str) -> int:
    """Poll `url` until it answers; ToolkitError with the container's log if it exits or stays silent.

    `hint` says what to check when it does not answer in time."""
    deadline = time.monotonic() + timeout
    while True:
        state = docker.container_state(name)
        if state is None or not state.get("Running"):
            code = state.get("ExitCode") if state else "?"
            raise ToolkitError(
                f"container {name} exited (code {code}) before answering on {url}",
                "its log is above; fix the image's command",
                details=docker.container_logs(name),
            )
        try:
            return requests.get(url, timeout=2).status_code
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ToolkitError(f"container {name} did not answer on {url} within {timeout:.0f} s", hint,
                               details=docker.container_logs(name))
        time.sleep(0.1)


def stop_web(name: str) -> bool:
    """Stop and remove the web container; False when none was running."""
    return docker.remove_container(name)
