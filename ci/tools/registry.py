"""What a registry's answer means: the one place where the docker SDK's pull
messages, skopeo's stderr and oras' HTTP answers become the toolkit's errors,
with one message and one hint per cause. The tools say what they saw; this
module says what it means."""

from __future__ import annotations

import re

from ..core.credentials import login_hint
from ..core.errors import IntegrityError, NetworkUnavailable, RegistryError, RegistryUnreachable, ToolkitError, looks_offline

# A registry that is down, or went away in the middle of a request.
_UNREACHABLE = re.compile(
    r"connection refused|connection reset|broken pipe|use of closed network connection|i/o timeout|network is unreachable",
    re.I,
)

# A registry that died mid-request: Go's HTTP client says only EOF.
_DROPPED = re.compile(r'(?:Get|Head|Post|Put|Patch|Delete) \\?"https?://[^"]*\\?": (?:unexpected )?EOF')

_REFUSED = re.compile(r"unauthorized|authentication required|invalid username/password|denied", re.I)
_CORRUPT = re.compile(r"verification failed|digest mismatch|did not match|unexpected EOF|invalid tar header", re.I)
_MISSING = re.compile(r"manifest unknown|name unknown|not found|does not exist", re.I)


def refused(registry: str) -> RegistryError:
    return RegistryError(f"the registry {registry} refused the credentials", login_hint(registry))


def unauthenticated(registry: str) -> RegistryError:
    """The registry wants credentials, and none are configured for it (none in the auth files, and
    REGISTRY_HOST names another registry or none)."""
    return RegistryError(f"the registry {registry} wants credentials, and none are configured for it", login_hint(registry))


def missing(name: str) -> RegistryError:
    return RegistryError(f"{name} does not exist", "check the name and tag, or push it first")


def unreachable(registry: str) -> RegistryUnreachable:
    return RegistryUnreachable(f"the registry {registry} does not answer",
                               "check that it is running and that the host and port are right")


def stopped(registry: str, doing: str = "") -> RegistryUnreachable:
    """The registry went away in the middle of a transfer; `doing` says where it was ("while sending x (...)")."""
    return RegistryUnreachable(f"the registry {registry} stopped answering{f' {doing}' if doing else ''}",
                               "check that it is running, then try again")


def unknown_host(registry: str) -> RegistryError:
    return RegistryError(f"the registry {registry} does not answer (no such host)", "check the host name")


def offline(registry: str) -> NetworkUnavailable:
    return NetworkUnavailable(f"the registry {registry} cannot be reached (no network?)")


def untrusted(registry: str) -> RegistryError:
    return RegistryError(f"the registry {registry} has a certificate that cannot be verified",
                         "install its CA certificate, or pass --insecure if you trust it")


def plain_http(registry: str) -> RegistryError:
    return RegistryError(f"the registry {registry} speaks plain HTTP", "use HTTPS, or pass --insecure if you trust it")


def not_a_registry(registry: str, status: int) -> RegistryError:
    return RegistryError(f"{registry} does not answer like a registry (HTTP {status} on /v2/)", "check the host and port")


def corrupt(what: str, detail: str) -> IntegrityError:
    """What a registry sent does not match the digest that names it."""
    return IntegrityError(f"{what} is corrupt: {detail}", "push it again, or check the registry's storage")


def malformed(what: str, detail: str) -> IntegrityError:
    """What a registry sent is not shaped as the toolkit writes it: a crafted or foreign artifact."""
    return IntegrityError(f"{what} is not a well-formed artifact: {detail}",
                          "push it again with the toolkit, and check who can push to that repository")


def from_text(text: str, *, registry: str, name: str, unknown_host_is_offline: bool = False) -> ToolkitError | None:
    """The error a tool's message about `name` at `registry` means; None when it names no known cause.

    An unknown host is most likely misspelt, unless the caller knows the
    name is a pinned public one (`unknown_host_is_offline`): then DNS, so the
    network, is missing."""
    if _REFUSED.search(text):
        return refused(registry)
    if _UNREACHABLE.search(text) or _DROPPED.search(text):
        return unreachable(registry)
    if re.search(r"no such host", text, re.I):
        return offline(registry) if unknown_host_is_offline else unknown_host(registry)
    if "http: server gave HTTP response to HTTPS client" in text:
        return plain_http(registry)
    if re.search(r"x509|certificate", text):
        return untrusted(registry)
    if _CORRUPT.search(text):
        return corrupt(name, "the registry sent data that does not match its digest")
    if _MISSING.search(text):
        return missing(name)
    if looks_offline(text):
        return offline(registry)
    return None


def from_status(status: int, *, registry: str, name: str, doing: str, message: str) -> RegistryError:
    """The error an HTTP status other than the expected ones means, `doing` something with `name`."""
    if status in (401, 403):
        return refused(registry)
    if status == 404:
        return missing(name)
    return RegistryError(f"{doing} to {registry} failed: HTTP {status} {message}", "check the registry's log")
