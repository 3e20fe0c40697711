"""Running the web image locally: start it, wait until it answers, stop it."""

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
class Running:
    container: str
    url: str
    status: int  # the HTTP status of the first answer


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


def run_web(image: str, *, name: str, host: str, port: int, container_port: int, timeout: float) -> Running:
    """Start `image` as container `name`, published on host:port; return once it answers HTTP."""
    docker.require_image(image, "build it first: invoke build-web")
    if docker.container_state(name) is not None:
        raise ToolkitError(f"a container named {name} already exists", "stop it with `invoke stop-web` first")
    check_port_free(host, port)
    container = docker.run_detached(image, name=name, ports={f"{container_port}/tcp": (host, port)})
    url = f"http://{host}:{port}/"
    try:
        status = wait_for_http(url, name, timeout,
                               hint="its log is above; check the port the image listens on (web.container_port)")
    except BaseException:
        docker.remove_container(name, timeout=1)
        raise
    log.info("%s answers on %s", name, url)
    return Running(container, url, status)


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
