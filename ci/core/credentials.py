"""Registry credentials from the environment, for CI jobs that hold a token.

They go to tools through files or API headers, never on a command line or
in a log. Without them, skopeo and the engine read their usual auth files.
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


def from_environment() -> Credentials | None:
    user, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    return Credentials(user, password) if user and password else None
