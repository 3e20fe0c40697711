"""skopeo: copying images between the engine, registries, OCI layouts and archives.

Every copy uses the policy file shipped in images/ (never --insecure-policy),
verifies TLS for every registry but loopback ones, and takes credentials from
an auth file, never from the command line.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import credentials, runner
from .errors import CommandFailed, RegistryError
from .refs import is_loopback

POLICY = Path(__file__).resolve().parent.parent / "images" / "policy.json"


@dataclass(frozen=True)
class CopyResult:
    """What one `skopeo copy` did. Blobs are named by their digest at the source."""

    source: str
    destination: str
    digest: str  # of the manifest written at the destination
    uploaded: tuple[str, ...]  # blobs sent
    skipped: tuple[str, ...]  # blobs the destination already had


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
    flag = f"--{option}-tls-verify" if option else "--tls-verify"
    return [f"{flag}={'true' if verify else 'false'}"]


@contextmanager
def auth_file(registries: list[str]) -> Iterator[list[str]]:
    """Auth-file options for skopeo.

    With REGISTRY_USERNAME and REGISTRY_PASSWORD set, they are written to a
    private temporary file for the duration of the copy; otherwise skopeo
    reads the usual files (containers auth.json, then ~/.docker/config.json).
    """
    found = credentials.from_environment()
    if not (found and registries):
        yield []
        return
    token = base64.b64encode(f"{found.username}:{found.password}".encode()).decode()
    with tempfile.TemporaryDirectory(prefix="nix-ci-auth-") as directory:
        path = Path(directory) / "auth.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps({"auths": {r: {"auth": token} for r in registries}}))
        yield [f"--authfile={path}"]


def copy(source: str, destination: str, *, insecure: bool = False,
         on_line: Callable[[str], None] | None = None) -> CopyResult:
    """`skopeo copy source destination`, returning the written manifest's digest.

    skopeo says which blobs it skipped only in its debug output, so it runs
    with --debug; those lines are parsed, never shown.
    """
    registries = [r for r in (registry_of(source), registry_of(destination)) if r]
    with tempfile.TemporaryDirectory(prefix="nix-ci-copy-") as work, auth_file(registries) as auth:
        digest_file = Path(work) / "digest"
        try:
            result = runner.run(
                "skopeo",
                [
                    "--debug",
                    f"--policy={POLICY}",
                    "copy",
                    *auth,
                    *tls_flags("src", source, insecure),
                    *tls_flags("dest", destination, insecure),
                    f"--digestfile={digest_file}",
                    source,
                    destination,
                ],
                on_line=lambda line: on_line(line) if on_line and not _DEBUG.match(line) else None,
            )
        except CommandFailed as exc:
            raise _explain(exc, destination if registry_of(destination) else source) from None
        digest = digest_file.read_text().strip()
    blobs = re.findall(r"^Copying blob (sha256:[0-9a-f]{64})", result.output, re.M)
    skipped = set(re.findall(r"Skipping blob (sha256:[0-9a-f]{64}) \(already present\)", result.output))
    return CopyResult(source, destination, digest,
                      tuple(b for b in blobs if b not in skipped), tuple(b for b in blobs if b in skipped))


def blob_sizes(name: str, *, insecure: bool = False) -> dict[str, int]:
    """Compressed size of each layer of `name`, by its digest and by its diff ID."""
    manifest = json.loads(_inspect(name, insecure, "--raw"))
    config = json.loads(_inspect(name, insecure, "--config", "--raw"))
    layers = manifest.get("layers") or []
    sizes = {layer["digest"]: int(layer["size"]) for layer in layers}
    for diff_id, layer in zip(config.get("rootfs", {}).get("diff_ids") or [], layers, strict=False):
        sizes[diff_id] = int(layer["size"])
    return sizes


def exists(name: str, *, insecure: bool = False) -> bool:
    """True when the registry serves a manifest for `name`."""
    try:
        _inspect(name, insecure, "--raw")
    except RegistryError as exc:
        if "does not exist" in exc.message:
            return False
        raise
    return True


def inspect(name: str, *, insecure: bool = False) -> RemoteImage:
    """The manifest digest and layers of `name` (e.g. docker://host/web:1)."""
    output = _inspect(name, insecure)
    return RemoteImage.from_json(json.loads(output[output.index("{"):]))


def _inspect(name: str, insecure: bool, *options: str) -> str:
    with auth_file([r for r in [registry_of(name)] if r]) as auth:
        try:
            return runner.run("skopeo", ["inspect", *options, *auth, *tls_flags("", name, insecure), name]).output
        except CommandFailed as exc:
            raise _explain(exc, name) from None


def _explain(exc: CommandFailed, name: str) -> Exception:
    """Turn skopeo's messages into the one line a user needs."""
    text = exc.output
    registry = registry_of(name)
    where = registry or name
    if re.search(r"unauthorized|authentication required|invalid username/password|denied", text, re.I):
        return RegistryError(
            f"the registry {where} refused the credentials",
            f"log in with `skopeo login {where}` or set {credentials.USERNAME_VARIABLE} and {credentials.PASSWORD_VARIABLE}",
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
    quiet = "".join(line for line in text.splitlines(keepends=True) if not _DEBUG.match(line))
    return CommandFailed(exc.message, argv=exc.argv, exit_code=exc.returncode, output=quiet)


# skopeo --debug lines, parsed but never shown.
_DEBUG = re.compile(r'^time="[^"]*" level=debug ')
