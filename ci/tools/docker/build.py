"""`docker build` with the engine's classic builder, and the parser of its progress.

The SDK does not speak BuildKit, so Dockerfiles here use no BuildKit-only
syntax. Build output is streamed to the log as it arrives; failures become
one-line BuildFailed errors with the log tail; a failed or interrupted build
removes what it made."""

from __future__ import annotations

import logging
import os
import re
import tarfile
from collections.abc import Generator, Mapping
from typing import Any

import docker
import docker.errors
import docker.utils
from docker.api.build import process_dockerfile

from ...core.errors import (
    BuildFailed,
)
from .client import BUILD_TAIL, _api_error, _quietly, client
from .images import Image, drop_replaced, inspect_image

log = logging.getLogger(__name__)


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
            _quietly(lambda: client().api.remove_container(self.running, force=True), container=self.running)
        for image in reversed(self.created):
            _quietly(lambda image=image: client().api.remove_image(image), image=image)


# The classic builder's bookkeeping lines, shown only with debug logging.
_BUILD_CHATTER = (" ---> ", "Removing intermediate container", "Successfully built", "[Warning] One or more build-args")


def _log_build_line(line: str) -> None:
    if not line.strip():
        return
    log.log(logging.DEBUG if line.startswith(_BUILD_CHATTER) else logging.INFO, "%s", line)
