"""The toolkit's one exception family.

Every failure a user can cause or fix is a ToolkitError carrying one line that
says what failed and a hint saying what to do. The task edge (ci.edge) turns
it into that line and a non-zero exit; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


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


def _tail(output: str, lines: int = 20) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])
