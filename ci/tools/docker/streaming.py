"""Streaming an image into the engine: a command in a container writes a
docker-archive to stdout and the engine loads it as it comes, without the
layers it has already (see archive.Forwarding); the output reaches the
toolkit through a FIFO on this machine, else the attach endpoint."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import docker
import docker.errors
import docker.utils
import requests
import urllib3.exceptions

from ...core.errors import (
    BuildFailed,
    ConfigError,
    ToolkitError,
)
from ...core.files import human_size
from . import archive
from .build import _log_build_line
from .client import BUILD_TAIL, LABEL, _api_error, _quietly, client
from .containers import _holding_ctrl_c, _stderr_lines
from .images import Image, load, require_image

log = logging.getLogger(__name__)


# How long a container whose output ended may take to exit before it is taken as stuck.
STOP_WAIT = 30


def stream_into_load(image: str, command: list[str], *, known_chains: set[str], tag: str,
                     accept: Callable[[list[str]], object] = lambda named: None, files: IO[bytes] | None = None,
                     environment: Mapping[str, str] | None = None, describe: str | None = None,
                     collect: Callable[[str, Image], None] | None = None,
                     private_files: bytes | None = None, network: str | None = None,
                     binds: Mapping[str, str] | None = None) -> Image:
    """Run `command` in a container of `image` and `docker load` the archive it writes to stdout.

    `files` (a tar archive) is unpacked at / before the command starts, and
    `environment` is set for it; its stderr is logged as it comes. Layers
    whose chain is in `known_chains` (the engine has them) are left out of
    what the engine receives (see archive.Forwarding). Nothing is loaded unless the
    command succeeded and `accept`, given the tags the archive names, did
    not raise. The image enters the engine as `tag` and under no other
    name: no temporary tag to remove, none left should the run stop right
    after. Returns it; the container is removed, at once when the toolkit
    stops reading (Ctrl-C). `describe` names the command in the log and in errors.
    `collect(container, image)` runs once the image is loaded, before the
    container goes: what the build left in it can still be copied out.
    `private_files` (a tar archive, such as ci.remote's key and settings) is
    unpacked at / after `files`, and goes with the container; `network` is its
    network mode (None: the engine's default); `binds` maps directories of this
    machine to where the container sees them (the engine must run here).
    """
    api = client().api
    describe = describe or " ".join(command)
    log.info("running %s in a container of %s and loading what it writes", describe, image[7:19])
    container = f"nix-ci-stream-{uuid.uuid4().hex[:16]}"
    mounts = {directory: {"bind": inside, "mode": "rw"} for directory, inside in (binds or {}).items()}
    with _output_channel() as channel:
        try:
            with _holding_ctrl_c():  # the engine finishes creating it, so that it is removed below
                api.create_container(image, command=channel.command(command), environment=dict(environment or {}),
                                     labels={LABEL: "stream"}, name=container,
                                     host_config=api.create_host_config(binds={**channel.binds, **mounts},
                                                                        network_mode=network))
            if files is not None:
                _put_context(container, files, image)
            if private_files is not None and not api.put_archive(container, "/", private_files):
                raise ToolkitError(f"cannot copy the remote builders' settings into a container of {image[:19]}")
            output = _Counted(channel.open(container))
            stderr = _Stderr(container)

            def exited(status: int) -> BuildFailed:
                return stderr.failure(f"{describe} exited {status} {'while' if output.count else 'before'} "
                                      f"writing the image, in a container of {image[7:19]}")

            def ready(named: list[str]) -> None:  # the stream has ended; the engine has all but the manifest
                status = channel.wait(container)
                if status != 0:
                    raise exited(status)
                accept(named)

            forwarding = archive.Forwarding(output, known_chains, tags=[tag], ready=ready)
            try:
                load(forwarding)
            except BaseException as exc:  # the load is cut short; the engine has no manifest, so no image
                failure = forwarding.error or exc
                if isinstance(failure, BuildFailed) and output.ended:  # the command stopped writing: why?
                    status = channel.wait(container, timeout=STOP_WAIT)
                    if status:
                        raise exited(status) from None
                _quietly(lambda: api.kill(container))  # nobody reads its output any more: never wait for it
                raise failure from None
            log.info("loaded %s into the engine; %d layers (%s) it has already were left out",
                     human_size(forwarding.bytes_kept), forwarding.layers_dropped, human_size(forwarding.bytes_dropped))
            loaded = require_image(tag, "docker load reported success but the image is missing")
            if collect is not None:
                collect(container, loaded)
            return loaded
        except docker.errors.APIError as exc:
            raise _api_error(exc, "loading the image into Docker failed") from None
        finally:
            _quietly(lambda: api.remove_container(container, force=True), container=container)


def _put_context(container: str, files: IO[bytes], image: str) -> None:
    """The build context into the container, over what its image has at the same place (COPY's rule)."""
    try:
        if client().api.put_archive(container, "/", files):
            return
        text = ""
    except docker.errors.APIError as exc:
        text = str(exc.explanation or exc)
    # The engine unpacks the context over the image's files: a directory where the image has a
    # file (a page made a directory, over the copy of the project the cache image holds) fails.
    clash = re.search(r"open (/\S+?)/[^/\s]+: not a directory", text)
    if clash:
        raise ConfigError(f"{clash[1]} is a directory in the build context, but a file in the image {image[7:19]} "
                          "the context is copied over", "make it a file again (a page is one file), or build "
                          "the cache image anew from this project (invoke build-cache)")
    raise ToolkitError(f"cannot copy the build context into a container of {image[7:19]}"
                       f"{': ' + text.splitlines()[0][:200] if text else ''}")


class _Counted:
    """Chunks passed through, counted: whether a stream that broke had begun, and had ended."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.count = 0
        self.ended = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.count += len(chunk)
            yield chunk
        self.ended = True


class _Stderr:
    """A container's stderr, logged line by line as it comes (the Nix build's progress);
    its tail makes the details of a failure."""

    def __init__(self, container: str) -> None:
        self._tail: list[str] = []
        self._thread = threading.Thread(target=self._follow, args=(container,), daemon=True)
        self._thread.start()

    def _follow(self, container: str) -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException, urllib3.exceptions.HTTPError):
            for line in _stderr_lines(container):
                self._tail = (self._tail + [line])[-BUILD_TAIL:]
                _log_build_line(line)

    def failure(self, message: str) -> BuildFailed:
        self._thread.join(timeout=STOP_WAIT)
        return BuildFailed(message, "the end of its output is above", details="\n".join(self._tail))


def context_archive(root: Path, files: list[str], *, under: str, extra: Mapping[str, str]) -> IO[bytes]:
    """What `COPY . UNDER` puts in an image, as a tar archive to unpack at /: the context
    `files` (relative to `root`) and the `extra` directories (name: directory), owned by root."""
    def owned_by_root(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member

    prefix = under.strip("/")
    data = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in files:
            tar.add(root / relative, arcname=f"{prefix}/{relative}", recursive=False, filter=owned_by_root)
        for name, directory in extra.items():
            tar.add(directory, arcname=f"{prefix}/{name}", filter=owned_by_root)
    data.seek(0)
    return data


@contextmanager
def _output_channel() -> Iterator[_Fifo | _Attach]:
    """How a container's output reaches the toolkit: a FIFO when the engine runs on this
    machine (its attach endpoint carries about 45 MB/s, a FIFO several GB/s), else attach."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        yield _Attach()
        return
    with tempfile.TemporaryDirectory(prefix="nix-ci-stream-") as directory:
        os.mkfifo(os.path.join(directory, "out"), 0o600)
        yield _Fifo(directory)


class _Attach:
    binds: dict[str, dict[str, str]] = {}

    def command(self, command: list[str]) -> list[str]:
        return command

    def open(self, container: str) -> Iterator[bytes]:
        api = client().api
        output = api.attach(container, stdout=True, stderr=False, stream=True, logs=True)
        api.start(container)
        return output

    def wait(self, container: str, timeout: float | None = None) -> int | None:
        try:
            return int(client().api.wait(container, timeout=timeout)["StatusCode"])
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):  # timed out: still running
            if timeout is None:
                raise
            return None


class _Fifo:
    """The container writes to a FIFO bind-mounted from this machine."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "out")
        self.binds = {directory: {"bind": "/.nix-ci-stream", "mode": "rw"}}
        self._status: int | None = None

    def command(self, command: list[str]) -> list[str]:
        return ["/bin/sh", "-c", 'exec "$@" > /.nix-ci-stream/out', "sh", *command]

    def open(self, container: str) -> Iterator[bytes]:
        client().api.start(container)
        # Opening a FIFO blocks until a writer comes; if the container dies
        # before it opens its end, the watcher opens one so that this returns.
        self._watcher = threading.Thread(target=self._watch, args=(container,), daemon=True)
        self._watcher.start()
        stream = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by the generator
        # A pipe holds 64 kB: the writer would wait for every 64 kB read; 1 MB (the usual
        # most an unprivileged process may ask) lets both sides move in larger steps.
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        return self._chunks(stream)

    def _watch(self, container: str) -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):  # removed already
            self._status = int(client().api.wait(container)["StatusCode"])
        with contextlib.suppress(OSError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))

    @staticmethod
    def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
        with stream:
            yield from iter(lambda: stream.read(1 << 20), b"")

    def wait(self, container: str, timeout: float | None = None) -> int | None:
        if self._status is None and timeout is not None:
            self._watcher.join(timeout)
            return self._status
        return self._status if self._status is not None else int(client().api.wait(container)["StatusCode"])
