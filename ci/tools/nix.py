"""Nix: parsing expressions on the host, and what Nix's messages mean.

Builds happen inside the builder image (see ci.build); on the host the
toolkit parses expressions, which works with no nixpkgs at all. Whoever ran
Nix (a build in the builder, the services runner on the host) turns its log
into one line here: Nix's first error, a download with no network, a Nix too
old for the package set, or a machine without Nix's build users.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core import process
from ..core.errors import BuildFailed, CommandFailed, ConfigError, NetworkUnavailable, ToolkitError, looks_offline


def parse(path: Path) -> None:
    """`nix-instantiate --parse`: a syntax error becomes a one-line ConfigError."""
    try:
        process.run("nix-instantiate", ["--parse", str(path)])
    except CommandFailed as exc:
        first = next((line for line in exc.output.splitlines() if line.startswith("error:")), exc.message)
        raise ConfigError(f"{path} does not parse: {first.removeprefix('error: ')}",
                          "fix the expression; `nix-instantiate --parse FILE` shows where",
                          details=exc.details) from None


def parse_all(root: Path, folders: tuple[str, ...] = ("nix", "tests")) -> list[Path]:
    """Parse every .nix file at the top of `root` (shell.nix) and under its `folders`, but
    for the deliberately broken test fixtures (in folders named `broken`); returns the files checked."""
    nested = (p for folder in folders for p in (root / folder).rglob("*.nix"))
    files = sorted(p for p in (*root.glob("*.nix"), *nested) if "broken" not in p.parts)
    for path in files:
        parse(path)
    return files


def first_error(log_tail: str) -> str:
    """The first `error: ...` line Nix printed (later ones are its consequences), or "".

    Nix 2.8 writes `error: MESSAGE`; newer ones may write `error:` alone, then the
    evaluation's context lines (`… while calling …`), then the message as an
    indented `error: MESSAGE`: the first non-empty one is what the user needs."""
    errors = re.findall(r"^[ \t]*error:[ \t]*(\S.*)$", log_tail, re.M)
    return errors[0].strip() if errors else ""


# What nix/nixpkgs/default.nix throws when the Nix evaluating it is older than the pin needs.
TOO_OLD = re.compile(r"needs Nix (\S+) or newer, and this is Nix (\S+)")


def too_old(log_tail: str, what: str, hint: str) -> ConfigError | None:
    """The one line for a Nix too old for the package set, if that is what the log shows;
    `hint` says how to get a newer one where `what` runs ({minimum} is filled in)."""
    found = TOO_OLD.search(first_error(log_tail))
    if found is None:
        return None
    return ConfigError(f"{what}: the package set needs Nix {found[1]} or newer, and the Nix there is {found[2]}",
                       hint.format(minimum=found[1]), details=log_tail)


# Host Nix as root, when the machine lacks the build users its configuration names.
NO_BUILD_USERS = re.compile(r"the group '([^']+)' specified in 'build-users-group' does not exist")
BUILD_USERS_HINT = ("create Nix's build users as its installer does (groupadd --system {group}, then useradd --system "
                    "--gid {group} {group}1 … {group}8; `bash .ci/setup` does it), or build as root: put "
                    "`build-users-group =` in /etc/nix/nix.conf")


def machine_problem(log_tail: str) -> ConfigError | None:
    """A failure of this machine's Nix set-up rather than of the expression, in one line."""
    found = NO_BUILD_USERS.search(log_tail)
    if found is None:
        return None
    return ConfigError(f"this machine's Nix cannot build: the group '{found[1]}' that its build-users-group names "
                       "does not exist", BUILD_USERS_HINT.format(group=found[1]), details=log_tail)


def build_error(what: str, log_tail: str, *, fallback: str, offline: str, offline_hint: str,
                too_old_hint: str = "use Nix {minimum} or newer") -> ToolkitError:
    """The one line for a failed Nix build of `what`: no network, a Nix too old, or Nix's first error.

    `fallback` stands in for Nix's error when it printed none (an exit code);
    `offline` and `offline_hint` say what a missing download means here."""
    old = too_old(log_tail, what, too_old_hint)
    if old is not None:
        return old
    if looks_offline(log_tail):
        return NetworkUnavailable(f"{offline}: {first_error(log_tail) or fallback}", offline_hint, details=log_tail)
    return BuildFailed(f"{what} failed: {first_error(log_tail) or fallback}",
                       "fix the Nix expression; the end of the build log is above", details=log_tail)
