"""GitHub Actions' conventions, followed only when GITHUB_ACTIONS is set.

A task's log folds into a group (`::group::`), its failure becomes an
annotation (`::error::`), and the images it builds or pushes are written to
the step's outputs ($GITHUB_OUTPUT, for later steps) and to the job summary
($GITHUB_STEP_SUMMARY, a markdown table). Elsewhere every function here does
nothing, so the tasks behave the same on a laptop.

Nothing written here may carry a credential: every value is scrubbed of
registry passwords and tokens found in the environment, and of user:password@
in URLs.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .core.credentials import PASSWORD_VARIABLE
from .core.errors import ConfigError
from .core.files import human_size

# Environment variables whose values must never be written out.
SECRET_VARIABLES = (PASSWORD_VARIABLE, "GITHUB_TOKEN", "ACTIONS_RUNTIME_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN")

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


@dataclass(frozen=True)
class ImageRecord:
    """An image a task built or pushed, as the summary and outputs show it."""

    image: str  # name or destination, e.g. web or docker://ghcr.io/o/r/web
    tags: tuple[str, ...] = ()
    id: str = ""  # the local image id (config digest)
    digest: str = ""  # the manifest digest a registry or layout holds
    size: int | None = None  # bytes, uncompressed
    layers: int | None = None
    bytes_pushed: int | None = None


class PushResult(Protocol):
    """What a push reports (ci.transfer.Pushed)."""

    destination: str
    digest: str
    bytes_uploaded: int


class ReportedImage(Protocol):
    """What a build reports (ci.tools.docker.Image, ci.build.BuiltImage)."""

    id: str
    tags: tuple[str, ...]
    size: int

    @property
    def layers(self) -> int | Sequence[str]: ...


def built(name: str, image: ReportedImage) -> ImageRecord:
    """The record of an image built into the local engine."""
    layers = image.layers if isinstance(image.layers, int) else len(image.layers)
    return ImageRecord(name, image.tags, id=image.id, size=image.size, layers=layers)


def pushed(result: PushResult) -> ImageRecord:
    """The record of one push: its destination is the tag it wrote."""
    return ImageRecord(result.destination, (result.destination,), digest=result.digest,
                       bytes_pushed=result.bytes_uploaded)


def active() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


# The group being shown: GitHub does not nest groups, so a new one ends it.
_open_group: str | None = None
# Records reported by this process, per summary title: later rows join the same table.
_records: dict[str, list[ImageRecord]] = {}


@contextmanager
def group(title: str) -> Iterator[None]:
    """Fold what is logged inside into one group of the job's log."""
    global _open_group
    if not active():
        yield
        return
    end_group()
    _command(f"::group::{scrub(title)}")
    _open_group = title
    try:
        yield
    finally:
        if _open_group == title:
            end_group()


def end_group() -> None:
    """End the open group, so that what follows (results, errors) stays in sight."""
    global _open_group
    if _open_group is not None:
        _command("::endgroup::")
        _open_group = None


def error(message: str, title: str = "") -> None:
    """An error annotation on the run, holding the one-line message."""
    if not active():
        return
    properties = f" title={_escape_property(scrub(title))}" if title else ""
    _command(f"::error{properties}::{_escape_data(scrub(message))}")


def warning(message: str, title: str = "") -> None:
    """A warning annotation on the run: shown on the run's page, not only inside a folded group."""
    if not active():
        return
    properties = f" title={_escape_property(scrub(title))}" if title else ""
    _command(f"::warning{properties}::{_escape_data(scrub(message))}")


def set_outputs(values: Mapping[str, str]) -> None:
    """Append step outputs to $GITHUB_OUTPUT; multi-line values use a heredoc delimiter."""
    if not active() or not os.environ.get("GITHUB_OUTPUT"):
        return
    lines = []
    for name, value in values.items():
        value = scrub(value)
        if "\n" in value:
            delimiter = f"ghadelimiter_{uuid.uuid4().hex}"  # random: no value can end it early
            lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            lines.append(f"{name}={value}\n")
    _append("GITHUB_OUTPUT", "".join(lines))


def add_summary(markdown: str) -> None:
    """Append markdown to the job summary."""
    if active() and os.environ.get("GITHUB_STEP_SUMMARY"):
        _append("GITHUB_STEP_SUMMARY", scrub(markdown))


def report(title: str, record: ImageRecord) -> None:
    """Outputs and a summary row for an image a task built or pushed.

    Outputs: id, digest, size, layers, bytes-pushed of this image (whichever
    are known), and tags: every tag reported under `title` by this process,
    one per line (GitHub keeps the last value written for a name).
    """
    if not active():
        return
    records = _records.setdefault(title, [])
    records.append(record)
    outputs = {"image": record.image, "id": record.id, "digest": record.digest,
               "size": _number(record.size), "layers": _number(record.layers),
               "bytes-pushed": _number(record.bytes_pushed)}
    tags = list(dict.fromkeys(tag for r in records for tag in r.tags))
    set_outputs({**{k: v for k, v in outputs.items() if v}, "tags": "\n".join(tags)})
    # The blank line first ends any table an earlier task of the step wrote.
    header = (f"\n### {title}\n\n| image | tags | digest | size | layers | bytes pushed |\n"
              "|---|---|---|---|---|---|\n") if len(records) == 1 else ""
    add_summary(header + _row(record))


def scrub(text: str) -> str:
    """`text` without secrets from the environment, nor user:password@ in URLs."""
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:  # shorter values would mangle ordinary words
            text = text.replace(secret, "***")
    return _USERINFO.sub("***@", text)


def _row(record: ImageRecord) -> str:
    cells = [
        f"`{record.image}`",
        "<br>".join(f"`{tag}`" for tag in record.tags) or "–",
        f"`{record.digest}`" if record.digest else f"`{record.id}` (id)" if record.id else "–",
        _size(record.size),
        _number(record.layers) or "–",
        _size(record.bytes_pushed),
    ]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |\n"


def _size(value: int | None) -> str:
    return "–" if value is None else human_size(value)


def _number(value: int | None) -> str:
    return "" if value is None else str(value)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(line: str) -> None:
    # stderr, where the logs go: the runner reads commands on both streams,
    # and one stream keeps a group's start and end in order with its lines.
    print(line, file=sys.stderr, flush=True)


def _append(variable: str, text: str) -> None:
    path = os.environ[variable]
    try:
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write ${variable} ({path}): {exc.strerror}",
                          "GitHub sets it for each step; unset GITHUB_ACTIONS outside GitHub") from None
