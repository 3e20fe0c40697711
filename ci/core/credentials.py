"""Credentials: the one place that reads them (registries; the remote builders' SSH key).

CI jobs that hold a token set REGISTRY_USERNAME and REGISTRY_PASSWORD; every
tool gets them from `for_registry`, never from the environment itself. They
go to tools through files or API headers, never on a command line or in a
log. Without them, each tool reads the usual auth files (`docker login`'s
~/.docker/config.json, which skopeo and oras-py read too).

One pair serves every registry for now; `for_registry` takes the registry's
host so that a lookup per host can take its place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

USERNAME_VARIABLE = "REGISTRY_USERNAME"
PASSWORD_VARIABLE = "REGISTRY_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password by accident
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def for_registry(registry: str) -> Credentials | None:  # noqa: ARG001 - one pair for all registries, for now
    """The credentials to present to `registry` (host[:port]); None: the tool's own auth files decide."""
    user, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    return Credentials(user, password) if user and password else None


def login_hint(registry: str) -> str:
    """What to do when `registry` refused the credentials, whichever tool was speaking to it."""
    return f"log in with `docker login {registry}` or set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}"


# The SSH private key for Nix's remote builders (ci.remote), when no key file is configured.
BUILDERS_KEY_VARIABLE = "NIX_CI_BUILDERS_SSH_KEY"


def builders_ssh_key() -> bytes | None:
    """The remote builders' SSH private key from the environment (a CI secret); None when unset."""
    value = os.environ.get(BUILDERS_KEY_VARIABLE, "")
    return value.encode() if value.strip() else None
