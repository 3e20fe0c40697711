"""skopeo: copying images between the engine, registries, OCI layouts and archives.

Every copy uses the policy file shipped in images/ (never --insecure-policy),
verifies TLS for every registry but loopback ones, and takes credentials from
an auth file, never from the command line.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import runner
from .errors import CommandFailed, RegistryError
from .refs import is_loopback

POLICY = Path(__file__).resolve().parent.parent / "images" / "policy.json"

# Credentials from the environment, for CI jobs that hold a token.
USERNAME_VARIABLE = "REGISTRY_USERNAME"
PASSWORD_VARIABLE = "REGISTRY_PASSWORD"


@dataclass(frozen=True)
class CopyResult:
    """What one `skopeo copy` did."""

    source: str
    destination: str
    digest: str  # of the manifest written at the destination
    blobs_copied: int
    blobs_skipped: int


@dataclass(frozen=True)
class RemoteImage:
    """An image as a registry serves it (`skopeo inspect`)."""

    name: str
    digest: str
    layers: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict) -> RemoteImage:
        return cls(name=data.get("Name", ""), digest=data["Digest"], layers=tuple(data.get("Layers") or ()))


def registry_of(name: str) -> str | None:
    """The registry host of a skopeo name (docker://host/...), else None."""
    if name.startswith("docker://"):
        return name[len("docker://"):].split("/", 1)[0]
    return None


def tls_flags(option: str, name: str, insecure: bool) -> list[str]:
    """TLS is verified except for loopback registries, or when the user says --insecure."""
    registry = registry_of(name)
    if registry is None:
        return []
    verify = not (insecure or is_loopback(registry))
    return [f"--{option}-tls-verify={'true' if verify else 'false'}"]


@contextmanager
def auth_file(registries: list[str]) -> Iterator[list[str]]:
    """Auth-file options for skopeo.

    With REGISTRY_USERNAME and REGISTRY_PASSWORD set, they are written to a
    private temporary file for the duration of the copy; otherwise skopeo
    reads the usual files (containers auth.json, then ~/.docker/config.json).
    """
    user, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if not (user and password and registries):
        yield []
        return
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    with tempfile.TemporaryDirectory(prefix="nix-ci-auth-") as directory:
        path = Path(directory) / "auth.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps({"auths": {r: {"auth": token} for r in registries}}))
        yield [f"--authfile={path}"]


def copy(source: str, destination: str, *, insecure: bool = False, on_line=None) -> CopyResult:
    """`skopeo copy source destination`, returning the written manifest's digest."""
    registries = [r for r in (registry_of(source), registry_of(destination)) if r]
    with tempfile.TemporaryDirectory(prefix="nix-ci-copy-") as work, auth_file(registries) as auth:
        digest_file = Path(work) / "digest"
        try:
            result = runner.run(
                "skopeo",
                [
                    f"--policy={POLICY}",
                    "copy",
                    *auth,
                    *tls_flags("src", source, insecure),
                    *tls_flags("dest", destination, insecure),
                    f"--digestfile={digest_file}",
                    source,
                    destination,
                ],
                on_line=on_line,
            )
        except CommandFailed as exc:
            raise _explain(exc, destination if registry_of(destination) else source) from None
        digest = digest_file.read_text().strip()
    copied = len(re.findall(r"^Copying blob \S+ done", result.output, re.M))
    skipped = len(re.findall(r"^Copying blob \S+ skipped: already exists", result.output, re.M))
    return CopyResult(source, destination, digest, copied, skipped)


def inspect(name: str, *, insecure: bool = False) -> RemoteImage:
    """The manifest digest and layers of `name` (e.g. docker://host/web:1)."""
    with auth_file([r for r in [registry_of(name)] if r]) as auth:
        try:
            result = runner.run("skopeo", ["inspect", *auth, *tls_flags("", name, insecure), name])
        except CommandFailed as exc:
            raise _explain(exc, name) from None
    return RemoteImage.from_json(json.loads(result.output[result.output.index("{"):]))


def _explain(exc: CommandFailed, name: str) -> Exception:
    """Turn skopeo's messages into the one line a user needs."""
    text = exc.output
    registry = registry_of(name)
    where = registry or name
    if re.search(r"unauthorized|authentication required|invalid username/password|denied", text, re.I):
        return RegistryError(
            f"the registry {where} refused the credentials",
            f"log in with `skopeo login {where}` or set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}",
        )
    if re.search(r"connection refused|no such host|i/o timeout|network is unreachable|connection reset", text, re.I):
        return RegistryError(
            f"the registry {where} does not answer",
            "check that it is running and that the host and port are right",
        )
    if re.search(r"http: server gave HTTP response to HTTPS client", text):
        return RegistryError(f"the registry {where} speaks plain HTTP", "use HTTPS, or pass --insecure if you trust it")
    if re.search(r"x509|certificate", text):
        return RegistryError(
            f"the registry {where} has a certificate that cannot be verified",
            "install its CA certificate, or pass --insecure if you trust it",
        )
    if re.search(r"manifest unknown|name unknown|not found", text, re.I):
        return RegistryError(f"{name} does not exist", "check the name and tag")
    return exc
