"""Containers: run one detached with published ports, read its state and
log, remove it; and one-off containers for a single command, with files in
before it starts and files out after it ends."""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.utils

from ...core.errors import (
    ImageNotFound,
    ToolkitError,
)
from .client import BUILD_TAIL, LABEL, _api_error, _quietly, client

log = logging.getLogger(__name__)


def run_detached(image: str, *, name: str, ports: Mapping[str, tuple[str, int]], no_image: str = "") -> str:
    """Create and start container `name` of `image`, `ports` published; its ID.
    `no_image` hints what to do when the image is missing."""
    try:
        container = client().api.create_container(
            image,
            name=name,
            labels={LABEL: "run"},
            ports=list(ports),
            host_config=client().api.create_host_config(port_bindings=dict(ports)),
        )["Id"]
    except docker.errors.ImageNotFound:
        raise ImageNotFound(f"image {image} is not in the local Docker engine", no_image) from None
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot create container {name}") from None
    try:
        client().api.start(container)
    except docker.errors.APIError as exc:
        _quietly(lambda: client().api.remove_container(container, force=True), container=container)
        raise _api_error(exc, f"cannot start container {name}") from None
    return str(container)


def container_state(name: str) -> Mapping[str, Any] | None:
    try:
        return client().api.inspect_container(name)["State"]
    except docker.errors.NotFound:
        return None


def container_logs(name: str, lines: int = BUILD_TAIL) -> str:
    try:
        return client().api.logs(name, tail=lines).decode(errors="replace")
    except docker.errors.NotFound:
        return ""


def remove_container(name: str, *, timeout: int = 10) -> bool:
    """Stop and remove container `name`; False when there was none."""
    api = client().api
    try:
        api.stop(name, timeout=timeout)
        api.remove_container(name, force=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot remove container {name}") from None
    return True


@contextmanager
def _holding_ctrl_c() -> Iterator[None]:
    """Ctrl-C (SIGINT) held back until the block ends, then raised: an engine call that creates
    something completes, so that what it made is known and can be removed. The main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: held.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt


def _stderr_lines(container: str) -> Iterator[str]:
    """The lines a container writes to stderr, until it stops."""
    pending = b""
    for chunk in client().api.logs(container, stdout=False, stderr=True, stream=True, follow=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace")


@dataclass(frozen=True)
class Finished:
    """A one-off container that ran to its end."""

    status: int
    stdout: str
    stderr_tail: str


class OneOffContainer:
    """A container made for one command: files go in before it starts, its
    stderr is streamed to a callback, files come out after it ends."""

    def __init__(self, container_id: str) -> None:
        self.id = container_id

    def run(self, on_line: Callable[[str], None]) -> Finished:
        api = client().api
        tail: list[str] = []
        try:
            api.start(self.id)
            for line in _stderr_lines(self.id):
                tail = (tail + [line])[-BUILD_TAIL:]
                on_line(line)
            status = api.wait(self.id)["StatusCode"]
            stdout = api.logs(self.id, stdout=True, stderr=False).decode(errors="replace")
        except docker.errors.APIError as exc:
            raise _api_error(exc, "running the build container failed") from None
        return Finished(status, stdout, "\n".join(tail))

    def copy_out(self, path: str) -> Iterator[bytes]:
        """A tar stream of `path` in the (stopped) container."""
        try:
            stream, _ = client().api.get_archive(self.id, path, chunk_size=1 << 20)
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"cannot copy {path} out of the build container") from None
        return stream


@contextmanager
def one_off_container(image: str, command: list[str], *, files: bytes | None = None,
                      devices: Sequence[str] = (), no_image: str = "", environment: Mapping[str, str] | None = None,
                      network: str | None = None, private_files: bytes | None = None) -> Iterator[OneOffContainer]:
    """A container of `image` for `command`, with the tar archive `files` unpacked
    at / and the host `devices` passed in; removed on leaving, whatever happened.
    `no_image` hints what to do when the image is missing; `network` is its network
    mode (None: the engine's default); `private_files` (ci.remote's key and settings)
    is unpacked at / after `files`."""
    api = client().api
    container = f"nix-ci-one-off-{uuid.uuid4().hex[:16]}"
    try:
        with _holding_ctrl_c():  # the engine finishes creating it, so that it is removed below
            api.create_container(
                image, command=command, labels={LABEL: "one-off"}, name=container, environment=dict(environment or {}),
                host_config=api.create_host_config(devices=[f"{d}:{d}:rwm" for d in devices], network_mode=network),
            )
    except docker.errors.ImageNotFound:
        raise ImageNotFound(f"image {image} is not in the local Docker engine", no_image) from None
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot create a container of {image}") from None
    except KeyboardInterrupt:
        _quietly(lambda: api.remove_container(container, force=True), container=container)
        raise
    try:
        if files is not None and not api.put_archive(container, "/", files):
            raise ToolkitError(f"cannot copy the build inputs into a container of {image}")
        if private_files is not None and not api.put_archive(container, "/", private_files):
            raise ToolkitError(f"cannot copy the remote builders' settings into a container of {image}")
        yield OneOffContainer(container)
    finally:
        _quietly(lambda: api.remove_container(container, force=True), container=container)
