"""Credentials: the one place that reads them (registries, and the remote builders' SSH key),
and decides which registry receives which.

CI jobs that hold a token set REGISTRY_USERNAME and REGISTRY_PASSWORD, and
REGISTRY_HOST to the one registry the pair is for (host[:port], e.g.
ghcr.io). `for_registry(host)` gives the pair to that registry and to no
other: a task that also talks to a third-party cache or substituter never
sends it the token. Without REGISTRY_HOST the pair is sent nowhere, and a
warning says so once: a token that goes to every registry is a token any of
them can keep.

Every other registry gets what the usual auth files hold for it, entry by
entry, as docker and skopeo read them (`auth_files` lists them; the tools
read the entry of the registry they talk to). Credentials go to tools
through files or API headers, never on a command line or in a log.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import cache

from .errors import ConfigError

log = logging.getLogger(__name__)

USERNAME_VARIABLE = "REGISTRY_USERNAME"
PASSWORD_VARIABLE = "REGISTRY_PASSWORD"
HOST_VARIABLE = "REGISTRY_HOST"
AUTH_FILE_VARIABLE = "REGISTRY_AUTH_FILE"

# host[:port] as a registry reference writes it: a name or IPv4 address, or [IPv6].
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$")
# Docker Hub answers under several names; a pair for one is for all of them.
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password by accident
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def for_registry(registry: str) -> Credentials | None:
    """The credentials to present to `registry` (host[:port]): the environment's pair when REGISTRY_HOST
    names that registry; None otherwise, and the tool reads that registry's entry in the usual auth files."""
    user, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if not (user and password):
        return None
    host = os.environ.get(HOST_VARIABLE, "")
    if not host:
        _warn_unscoped()
        return None
    return Credentials(user, password) if _same_registry(_checked_host(host), registry) else None


def auth_files() -> list[str]:
    """The auth files a tool that does not find them itself reads, besides ~/.docker/config.json (which
    oras-py and the docker SDK always read): REGISTRY_AUTH_FILE, then skopeo login's containers auth.json."""
    candidates = [os.environ.get(AUTH_FILE_VARIABLE, "")]
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    return [path for path in candidates if path and os.path.isfile(path)]


def login_hint(registry: str) -> str:
    """What to do when `registry` refused the credentials, whichever tool was speaking to it."""
    return (f"log in with `docker login {registry}`, or set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE} "
            f"with {HOST_VARIABLE}={registry}")


def _checked_host(value: str) -> str:
    host = value.strip().lower()
    if not _HOST.match(host):
        raise ConfigError(f"{HOST_VARIABLE} is '{value[:100]}', which is not a registry host[:port]",
                          f"set it to the registry {USERNAME_VARIABLE} and {PASSWORD_VARIABLE} are for, e.g. ghcr.io")
    return host


def _same_registry(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or (a in _DOCKER_HUB and b in _DOCKER_HUB)


@cache
def _warn_unscoped() -> None:
    log.warning("warning: %s is set but %s is not, so the pair is sent to no registry; set %s to the registry it is "
                "for (e.g. ghcr.io)", USERNAME_VARIABLE, HOST_VARIABLE, HOST_VARIABLE)


# The SSH private key for Nix's remote builders (ci.remote), when no key file is configured.
BUILDERS_KEY_VARIABLE = "NIX_CI_BUILDERS_SSH_KEY"


def builders_ssh_key() -> bytes | None:
    """The remote builders' SSH private key from the environment (a CI secret); None when unset."""
    value = os.environ.get(BUILDERS_KEY_VARIABLE, "")
    return value.encode() if value.strip() else None
