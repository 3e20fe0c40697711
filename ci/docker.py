"""The Docker engine, through the docker SDK.

Builds use the engine's classic builder (the SDK does not speak BuildKit), so
Dockerfiles here use no BuildKit-only syntax. Build output is streamed to the
log as it arrives; failures become one-line ToolkitErrors with the log tail.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.client
import inspect
import logging
import os
import re
import signal
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import IO, Any, TypeVar

import docker
import docker.errors
import docker.utils
import requests
import urllib3.exceptions
from docker.api.build import process_dockerfile

from . import archive
from .credentials import Credentials
from .errors import (
    BuildFailed,
    DockerUnavailable,
    EngineStopped,
    ImageNotFound,
    IntegrityError,
    NetworkUnavailable,
    RegistryError,
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


@dataclass(frozen=True)
class Image:
    """A local image, as the engine describes it."""

    id: str
    tags: tuple[str, ...]
    layers: tuple[str, ...]  # diff IDs, bottom first
    size: int
    config: Mapping[str, Any]
    architecture: str
    created: datetime

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Image:
        return cls(
            id=attrs["Id"],
            tags=tuple(attrs.get("RepoTags") or ()),
            layers=tuple(attrs.get("RootFS", {}).get("Layers") or ()),
            size=int(attrs.get("Size", 0)),
            config=attrs.get("Config") or {},
            architecture=attrs.get("Architecture", ""),
            created=_timestamp(attrs.get("Created", "1970-01-01T00:00:00Z")),
        )

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.get("Labels") or {}


def _timestamp(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def engine_architecture() -> str:
    """The engine's CPU in image terms (amd64, arm64, ...)."""
    return str(client().version().get("Arch", ""))


def inspect_image(ref: str) -> Image | None:
    """The local image `ref` (name:tag or ID), or None."""
    try:
        return Image.from_attrs(client().api.inspect_image(ref))
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot inspect {ref}") from None


def require_image(ref: str, hint: str) -> Image:
    image = inspect_image(ref)
    if image is None:
        raise ImageNotFound(f"image {ref} is not in the local Docker engine", hint)
    return image


def build(
    context: str,
    dockerfile: str,
    *,
    tag: str | None = None,
    buildargs: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    nocache: bool = False,
    extra_context: Mapping[str, str] | None = None,
) -> Image:
    """`docker build` with the classic builder, streaming its steps to the log.

    A failed or interrupted build removes the container of the step under
    way and the intermediate images it made, so that nothing of it is left
    behind. `extra_context` adds directories of this machine to the build
    context (name in the context: directory), past .dockerignore.
    """
    api = client().api
    name = os.path.basename(dockerfile)
    progress = _BuildProgress()
    previous = inspect_image(tag) if tag else None
    where = _context_with(context, dockerfile, extra_context) if extra_context else {"path": context, "dockerfile": dockerfile}
    stream: Generator[dict[str, Any], None, None] | None = None
    try:
        stream = api.build(
            **where,
            tag=tag,
            buildargs=dict(buildargs or {}),
            labels=dict(labels or {}),  # each label is one more step: the builder of the load flow has none
            rm=True,
            forcerm=True,  # intermediate containers go even when a step fails
            nocache=nocache,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            progress.feed(chunk)
            if "error" in chunk:
                raise BuildFailed(f"docker build of {name} failed: {chunk['error'].strip().splitlines()[-1]}",
                                  details=progress.tail())
    except docker.errors.APIError as exc:
        progress.discard()
        raise _api_error(exc, f"docker build of {name} failed") from None
    except BaseException:  # Ctrl-C too: the engine stops a build whose client has gone
        if stream is not None:
            stream.close()
        progress.discard()
        raise
    finally:
        if "fileobj" in where:
            where["fileobj"].close()
    image = inspect_image(progress.image_id) if progress.image_id else None
    if image is None:
        raise BuildFailed(f"docker build of {name} gave no image", details=progress.tail())
    drop_replaced(previous, image.id)
    return image


def _context_with(context: str, dockerfile: str, extra: Mapping[str, str]) -> dict[str, Any]:
    """api.build's arguments for the context docker-py would send (.dockerignore applied), plus the `extra` directories."""
    ignore = os.path.join(context, ".dockerignore")
    patterns = []
    if os.path.exists(ignore):
        with open(ignore) as lines:
            patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    name, content = process_dockerfile(dockerfile, context)
    archive_file = docker.utils.tar(context, exclude=patterns, dockerfile=(name, content))
    with tarfile.open(fileobj=archive_file, mode="a") as tar:
        for arcname, directory in extra.items():
            tar.add(directory, arcname=arcname)
    archive_file.seek(0)
    return {"fileobj": archive_file, "custom_context": True, "dockerfile": name}


# The classic builder colours a step's stderr.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _BuildProgress:
    """Follows a classic-builder stream: logs it, keeps its tail, notes the images it makes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.created: list[str] = []  # intermediate images this build made (not cached, not FROM)
        self.running: str | None = None  # the container of the step under way
        self.image_id: str | None = None
        self._step = ""

    def feed(self, chunk: Mapping[str, Any]) -> None:
        for line in _ANSI.sub("", chunk.get("stream", "")).splitlines():
            self.lines.append(line)
            _log_build_line(line)
            if line.startswith("Step "):
                self._step = line
            elif line.startswith(" ---> Using cache"):
                self._step = ""
            elif line.startswith(" ---> Running in "):
                self.running = line[len(" ---> Running in "):].strip()
            elif line.startswith(" ---> ") and self._step and " : FROM " not in self._step:
                self.created.append(line[len(" ---> "):].strip())
                self._step, self.running = "", None
        if "aux" in chunk and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        if "error" in chunk:
            self.lines.append(chunk["error"])

    def tail(self) -> str:
        return "\n".join(self.lines[-BUILD_TAIL:])

    def discard(self) -> None:
        """Remove what the build made: the container of the step under way (the engine
        would remove it too, but later), then the intermediate images."""
        if self.running:
            _quietly(lambda: client().api.remove_container(self.running, force=True))
        for image in reversed(self.created):
            _quietly(lambda image=image: client().api.remove_image(image))


# The classic builder's bookkeeping lines, shown only with debug logging.
_BUILD_CHATTER = (" ---> ", "Removing intermediate container", "Successfully built", "[Warning] One or more build-args")


def _log_build_line(line: str) -> None:
    if not line.strip():
        return
    log.log(logging.DEBUG if line.startswith(_BUILD_CHATTER) else logging.INFO, "%s", line)


def stream_into_load(image: str, command: list[str], *, known_chains: set[str], tag: str,
                     accept: Callable[[list[str]], object] = lambda named: None, files: IO[bytes] | None = None,
                     environment: Mapping[str, str] | None = None, describe: str | None = None,
                     collect: Callable[[str, Image], None] | None = None) -> Image:
    """Run `command` in a container of `image` and `docker load` the archive it writes to stdout.

    `files` (a tar archive) is unpacked at / before the command starts, and
    `environment` is set for it; its stderr is logged as it comes. Layers
    whose chain is in `known_chains` (the engine has them) are left out of
    what the engine receives (see ci.archive). Nothing is loaded unless the
    command succeeded and `accept`, given the tags the archive names, did
    not raise. The image enters the engine as `tag` and under no other
    name: no temporary tag to remove, none left should the run stop right
    after. Returns it; the container is removed, at once when the toolkit
    stops reading (Ctrl-C). `describe` names the command in the log and in errors.
    `collect(container, image)` runs once the image is loaded, before the
    container goes: what the build left in it can still be copied out.
    """
    api = client().api
    describe = describe or " ".join(command)
    log.info("running %s in a container of %s and loading what it writes", describe, image[7:19])
    container = f"nix-ci-stream-{uuid.uuid4().hex[:16]}"
    with _output_channel() as channel:
        try:
            with _holding_ctrl_c():  # the engine finishes creating it, so that it is removed below
                api.create_container(image, command=channel.command(command), environment=dict(environment or {}),
                                     labels={LABEL: "stream"}, name=container,
                                     host_config=api.create_host_config(binds=channel.binds))
            if files is not None and not api.put_archive(container, "/", files):
                raise ToolkitError(f"cannot copy the build context into a container of {image[:19]}")
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
                _load(forwarding)
            except BaseException as exc:  # the load is cut short; the engine has no manifest, so no image
                failure = forwarding.error or exc
                if isinstance(failure, BuildFailed) and output.ended:  # the command stopped writing: why?
                    status = channel.wait(container, timeout=STOP_WAIT)
                    if status:
                        raise exited(status) from None
                _quietly(lambda: api.kill(container))  # nobody reads its output any more: never wait for it
                raise failure from None
            log.info("loaded %.1f MB into the engine; %d layers (%.1f MB) it has already were left out",
                     forwarding.bytes_kept / 1e6, forwarding.layers_dropped, forwarding.bytes_dropped / 1e6)
            loaded = require_image(tag, "docker load reported success but the image is missing")
            if collect is not None:
                collect(container, loaded)
            return loaded
        except docker.errors.APIError as exc:
            raise _api_error(exc, "loading the image into Docker failed") from None
        finally:
            _quietly(lambda: api.remove_container(container, force=True))


# How long a container whose output ended may take to exit before it is taken as stuck.
STOP_WAIT = 30


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


def known_chains(repository: str) -> set[str]:
    """The layer chains of `repository`:latest, what a load of its next version can skip.

    Only latest: the one an everyday change starts from. Inspecting every
    version kept locally would cost a request each, more with every build;
    a layer the engine has under another version is sent, and skipped by the
    engine itself.
    """
    image = inspect_image(f"{repository}:latest")
    return set(archive.chain_ids(image.layers)) if image is not None else set()


def _load(data: Iterator[bytes]) -> list[str]:
    tags = []
    for chunk in client().api.load_image(data):
        if "error" in chunk:
            raise BuildFailed(f"docker load failed: {chunk['error']}")
        text = chunk.get("stream", "")
        for prefix in ("Loaded image: ", "Loaded image ID: "):
            if text.startswith(prefix):
                tags.append(text[len(prefix):].strip())
    return tags


def load_archive(path: str) -> list[str]:
    """`docker load -i path`."""
    with open(path, "rb") as archive:
        return _load(iter(lambda: archive.read(1 << 20), b""))


# The creation date of every image the toolkit writes, as dockerTools' default.
EPOCH = "1970-01-01T00:00:01Z"


def normalised(image: str, tag: str) -> Image:
    """A copy of `image` whose config holds no build time and no build container, tagged `tag`.

    The classic builder stamps both into the config, so that the same layers
    would get another image ID at every build. Only the config is sent back
    to the engine (it has the layers), with its tag: the copy is never
    untagged; `image` itself is removed.
    """
    api = client().api
    found = require_image(image, "it was just built; is another process removing images?")
    try:
        with archive.normalise(api.get_image(found.id), created=EPOCH,
                               known_chains=set(archive.chain_ids(found.layers)), tags=[tag]) as fixed:
            _load(fixed.chunks())
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot rewrite the config of {found.id[:19]}") from None
    result = require_image(tag, "docker load reported success but the image is missing")
    if result.id != found.id:
        remove_image(found.id)
    return result


@contextmanager
def saved(image: str) -> Iterator[str]:
    """`docker save image` into a temporary file, for reading it at random."""
    with tempfile.NamedTemporaryFile(prefix="nix-ci-save-", suffix=".tar") as file:
        try:
            for chunk in client().api.get_image(image):
                file.write(chunk)
        except docker.errors.APIError as exc:
            raise _api_error(exc, f"cannot save {image}") from None
        file.flush()
        yield file.name


def untag(ref: str) -> None:
    """Remove the tag `ref` only; the image stays while other tags name it."""
    try:
        client().api.remove_image(ref, noprune=True)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot remove the tag {ref}") from None


def tag(image: str, ref: str) -> None:
    repository, _, tag_ = ref.rpartition(":")
    try:
        client().api.tag(image, repository, tag_)
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot tag {image[:19]} as {ref}") from None


def remove_image(ref: str) -> None:
    """Remove `ref` if present; untagged parents go with it."""
    try:
        client().api.remove_image(ref, force=True)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot remove image {ref}") from None


def drop_replaced(previous: Image | None, current: str) -> None:
    """Remove `previous`, the image a build just took its tag from, once nothing names or
    uses it: every weekly nix-cache would otherwise stay on disk, untagged. The removal is
    not forced, so the engine keeps it while a container or a child image uses it."""
    if previous is None or previous.id == current:
        return
    try:
        if client().api.inspect_image(previous.id).get("RepoTags"):
            return  # another tag still names it
        client().api.remove_image(previous.id, noprune=False)
        log.info("removed %s, the image %s named before", previous.id[7:19], previous.tags[0] if previous.tags else "")
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.info("kept the previous image %s: %s", previous.id[7:19], str(exc.explanation or exc).strip()[:200])


def import_rootfs(tarball: str, repository: str, tag_: str, changes: list[str]) -> Image:
    """`docker import` a root filesystem tarball; the image it replaces goes (drop_replaced)."""
    previous = inspect_image(f"{repository}:{tag_}")
    try:
        result = client().api.import_image_from_file(tarball, repository=repository, tag=tag_, changes=changes)
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"docker import of {tarball} failed") from None
    if "error" in str(result):
        raise BuildFailed(f"docker import of {tarball} failed: {result}")
    image = require_image(f"{repository}:{tag_}", "docker import reported success but the image is missing")
    drop_replaced(previous, image.id)
    return image


def pull(ref: str, auth: Credentials | None = None) -> Image:
    """Pull `ref`, logging progress.

    NetworkUnavailable without network, RegistryError when the registry does
    not answer, refuses, or lacks the image, IntegrityError when what it
    sends does not match its digests.
    """
    repository, tag_ = ref, None
    if "@" not in ref:
        name, sep, maybe_tag = ref.rpartition(":")
        repository, tag_ = (name, maybe_tag) if sep and "/" not in maybe_tag else (ref, "latest")
    try:
        for chunk in client().api.pull(repository, tag=tag_, stream=True, decode=True,
                                       auth_config={"username": auth.username, "password": auth.password} if auth else None):
            if "error" in chunk:
                raise _pull_error(ref, chunk["error"])
            if chunk.get("status") and not chunk.get("progressDetail"):
                log.info("%s %s", chunk.get("id", ""), chunk["status"])
    except docker.errors.APIError as exc:
        raise _pull_error(ref, str(exc.explanation or exc)) from None
    return require_image(ref, "the pull reported success but the image is missing")


def _pull_error(ref: str, text: str) -> ToolkitError:
    registry = ref.split("/", 1)[0]
    if re.search(r"verification failed|digest mismatch|did not match|unexpected EOF|invalid tar header", text, re.I):
        return IntegrityError(f"{ref} is corrupt: the registry sent data that does not match its digest",
                              "push the image again, or check the registry's storage")
    if re.search(r"unauthorized|authentication required|denied", text, re.I):
        return RegistryError(f"the registry {registry} refused the credentials for {ref}",
                             "log in (docker login) or set REGISTRY_USERNAME and REGISTRY_PASSWORD")
    if re.search(r"manifest unknown|not found|does not exist", text, re.I):
        return RegistryError(f"{ref} does not exist", "check the name and tag, or push it first")
    if re.search(r"connection refused|connection reset", text, re.I):
        return RegistryError(f"the registry {registry} does not answer", "check that it runs, and the host and port")
    if looks_offline(text):
        return NetworkUnavailable(f"cannot pull {ref}: the registry cannot be reached (no network?)")
    return RegistryError(f"cannot pull {ref}: {text.strip().splitlines()[0][:200]}")


OFFLINE_PHRASES = (
    "no such host",
    "Temporary failure in name resolution",
    "network is unreachable",
    "dial tcp",
    "i/o timeout",
    "Could not resolve host",
    "unable to download",
    "Couldn't resolve host",
)


def looks_offline(text: str) -> bool:
    """True when a log says something could not be downloaded for lack of network."""
    return any(phrase.lower() in text.lower() for phrase in OFFLINE_PHRASES)


def run_detached(image: str, *, name: str, ports: Mapping[str, tuple[str, int]]) -> str:
    try:
        container = client().api.create_container(
            image,
            name=name,
            labels={LABEL: "run"},
            ports=list(ports),
            host_config=client().api.create_host_config(port_bindings=dict(ports)),
        )["Id"]
    except docker.errors.ImageNotFound:
        raise ImageNotFound(f"image {image} is not in the local Docker engine", "build it first: invoke build-web") from None
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot create container {name}") from None
    try:
        client().api.start(container)
    except docker.errors.APIError as exc:
        _quietly(lambda: client().api.remove_container(container, force=True))
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


def leftovers() -> list[str]:
    """Containers and dangling images the toolkit made and did not clean up."""
    api = client().api
    found = [f"container {c['Id'][:12]}" for c in api.containers(all=True, filters={"label": f"{LABEL}=stream"})]
    return found


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
                      devices: Sequence[str] = ()) -> Iterator[OneOffContainer]:
    """A container of `image` for `command`, with the tar archive `files` unpacked
    at / and the host `devices` passed in; removed on leaving, whatever happened."""
    api = client().api
    container = f"nix-ci-one-off-{uuid.uuid4().hex[:16]}"
    try:
        with _holding_ctrl_c():  # the engine finishes creating it, so that it is removed below
            api.create_container(
                image, command=command, labels={LABEL: "one-off"}, name=container,
                host_config=api.create_host_config(devices=[f"{d}:{d}:rwm" for d in devices]),
            )
    except docker.errors.ImageNotFound:
        raise ImageNotFound(f"image {image} is not in the local Docker engine",
                            "build it with `invoke build-base` (offline: add --from-debian)") from None
    except docker.errors.APIError as exc:
        raise _api_error(exc, f"cannot create a container of {image}") from None
    except KeyboardInterrupt:
        _quietly(lambda: api.remove_container(container, force=True))
        raise
    try:
        if files is not None and not api.put_archive(container, "/", files):
            raise ToolkitError(f"cannot copy the build inputs into a container of {image}")
        yield OneOffContainer(container)
    finally:
        _quietly(lambda: api.remove_container(container, force=True))
