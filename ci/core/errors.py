"""The toolkit's one exception family.

Every failure a user can cause or fix is a ToolkitError carrying one line that
says what failed and a hint saying what to do. The task edge (ci.edge) turns
it into that line and a non-zero exit; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ToolkitError(Exception):
    """A failure meant for the user: what went wrong, and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", *, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # The tail of a log that explains the failure, shown above the line.
        self.details = details

    def line(self) -> str:
        """The one line shown to the user."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ToolMissing(ToolkitError):
    """An external program is not on PATH."""


class CommandFailed(ToolkitError):
    """An external program exited non-zero."""

    def __init__(self, message: str, hint: str = "", *, argv: list[str] | None = None,
                 exit_code: int | None = None, output: str = "") -> None:
        super().__init__(message, hint, details=_tail(output))
        self.argv = argv or []
        self.returncode = exit_code
        self.output = output


class DockerUnavailable(ToolkitError):
    """The Docker engine cannot be reached."""


class EngineStopped(DockerUnavailable):
    """The Docker engine went away in the middle of a task (stopped, restarted, crashed)."""


class ImageNotFound(ToolkitError):
    """An image is not where it was expected."""


class BadReference(ToolkitError):
    """An image reference, tag or transport is malformed."""


class BuildFailed(ToolkitError):
    """A docker build, or the Nix build inside it, failed."""


class NetworkUnavailable(ToolkitError):
    """Something had to be downloaded and the network is not there."""


class IntegrityError(ToolkitError):
    """Data does not match the digest or signature that names it."""


class RegistryError(ToolkitError):
    """A registry did not answer, refused credentials, or lacks an image."""


class RegistryUnreachable(RegistryError):
    """A registry did not answer or dropped the connection: worth trying again, unlike the other RegistryErrors."""


class PortInUse(ToolkitError):
    """A port the toolkit must publish on is taken."""


class ConfigError(ToolkitError):
    """The configuration or a task argument is invalid."""


class DiskFull(ToolkitError):
    """A write failed for lack of space (ENOSPC)."""


NO_SPACE_HINT = "free space or choose another directory"


def quoted(text: str, limit: int = 80) -> str:
    """`text` as a message quotes it: between quotes, on one line (a newline or other control
    character is written as an escape, never as itself), cut short past `limit` characters."""
    shown = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return f"'{shown[:limit]}...'" if len(shown) > limit else f"'{shown}'"


def no_space(exc: BaseException, directory: Path) -> DiskFull | None:
    """The one line for a write under `directory` that found the disk full (ENOSPC, or a program
    saying so), naming the directory; None for any other failure. A write that went to the
    temporary directory instead (TMPDIR) is named as such."""
    if isinstance(exc, OSError):
        if exc.errno != errno.ENOSPC:
            return None
        written = str(exc.filename or "")
    elif isinstance(exc, ToolkitError):
        text = f"{exc.message}\n{getattr(exc, 'output', '')}"
        if "no space left on device" not in text.lower():
            return None
        found = re.search(r"(/[^\s:\"]+): no space left on device|no space left on device writing (/\S+)", text, re.I)
        written = (found[1] or found[2]) if found else ""
    else:
        return None
    temporary = Path(tempfile.gettempdir())
    if written and not Path(written).is_relative_to(directory) and Path(written).is_relative_to(temporary):
        directory = temporary
    return DiskFull(f"no space left on device under {directory}", NO_SPACE_HINT)


@contextmanager
def naming_full_disk(directory: Path) -> Iterator[None]:
    """Writes under `directory` inside: a full disk becomes DiskFull naming it (see no_space)."""
    try:
        yield
    except (ToolkitError, OSError) as exc:
        full = no_space(exc, directory)
        if full is None:
            raise
        raise full from None


def _tail(output: str, lines: int = 20) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


# What a log says when something could not be downloaded for lack of network.
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
