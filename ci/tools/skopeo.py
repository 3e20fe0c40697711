"""skopeo: copying images between the engine, registries, OCI layouts and archives.

Every copy uses the policy file shipped in images/ (never --insecure-policy),
verifies TLS for every registry but loopback ones, and takes credentials from
an auth file, never from the command line. A registry that does not answer is
tried again a few times, with growing waits (RETRY); nothing else is.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import tenacity

from ..core import credentials, process, resources
from ..core.errors import NO_SPACE_HINT, CommandFailed, DiskFull, RegistryError, RegistryUnreachable
from ..core.refs import is_loopback
from . import registry

log = logging.getLogger(__name__)

POLICY = resources.shipped("policy.json")

# skopeo --debug lines, parsed but never shown.
_DEBUG = re.compile(r'^time="[^"]*" level=debug ')

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How a copy or inspect is tried again while the registry does not answer."""

    attempts: int  # tries in all
    first_wait: float  # seconds before the second try; each later wait doubles
    max_wait: float  # the longest single wait


# A registry that restarts or drops its connections gets three more tries
# after waits of 1, 2 and 4 s: about 7 s in all. Refused credentials, missing
# images, bad references and certificates are never tried again.
RETRY = Retry(attempts=4, first_wait=1.0, max_wait=4.0)


def with_retries(action: Callable[[], T], what: str, policy: Retry = RETRY) -> T:
    """`action()`, tried again with exponential backoff while it raises RegistryUnreachable.

    Each retry is one warning line; when the last try fails too, its error
    says how many tries there were.
    """
    def say_retry(state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("%s while %s; trying again in %g s (try %d of %d)",
                    getattr(failure, "message", failure), what, wait, state.attempt_number + 1, policy.attempts)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RegistryUnreachable),
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_exponential(multiplier=policy.first_wait, max=policy.max_wait),
        before_sleep=say_retry,
        reraise=True,
    )
    try:
        return retrying(action)
    except RegistryUnreachable as exc:
        if policy.attempts < 2:
            raise
        raise RegistryUnreachable(f"{exc.message} (tried {policy.attempts} times)", exc.hint, details=exc.details) from None


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

    The credentials ci.core.credentials gives for `registries` are written to
    a private temporary file for the duration of the copy; without any,
    skopeo reads the usual files (containers auth.json, then ~/.docker/config.json).
    """
    found = {r: c for r in registries if (c := credentials.for_registry(r))}
    if not found:
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="nix-ci-auth-") as directory:
        path = Path(directory) / "auth.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps({"auths": {r: {"auth": _token(c)} for r, c in found.items()}}))
        yield [f"--authfile={path}"]


def _token(found: credentials.Credentials) -> str:
    return base64.b64encode(f"{found.username}:{found.password}".encode()).decode()


def copy(source: str, destination: str, *, insecure: bool = False,
         on_line: Callable[[str], None] | None = None, options: tuple[str, ...] = ()) -> CopyResult:
    """`skopeo copy source destination`, returning the written manifest's digest.

    skopeo says which blobs it skipped only in its debug output, so it runs
    with --debug; those lines are parsed, never shown. A registry that does
    not answer is tried again (RETRY); blobs it already received are skipped.
    skopeo's temporary files (a whole image, from docker-daemon:) go into the
    toolkit's own temporary directory, which goes away even when skopeo is
    killed.
    """
    registries = [r for r in (registry_of(source), registry_of(destination)) if r]
    with tempfile.TemporaryDirectory(prefix="nix-ci-copy-") as work, auth_file(registries) as auth:
        digest_file = Path(work) / "digest"

        def attempt() -> process.Completed:
            try:
                return process.run(
                    "skopeo",
                    [
                        "--debug",
                        f"--policy={POLICY}",
                        f"--tmpdir={work}",  # not /var/tmp, where a killed skopeo leaves a whole image
                        "copy",
                        *auth,
                        *tls_flags("src", source, insecure),
                        *tls_flags("dest", destination, insecure),
                        *options,  # e.g. --dest-compress
                        f"--digestfile={digest_file}",
                        source,
                        destination,
                    ],
                    on_line=lambda line: on_line(line) if on_line and not _DEBUG.match(line) else None,
                )
            except CommandFailed as exc:
                raise _explain(exc, destination if registry_of(destination) else source) from None

        result = with_retries(attempt, f"copying to {destination}")
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
        def attempt() -> str:
            try:
                return process.run("skopeo", ["inspect", *options, *auth, *tls_flags("", name, insecure), name]).output
            except CommandFailed as exc:
                raise _explain(exc, name) from None

        return with_retries(attempt, f"reading {name}")


def _explain(exc: CommandFailed, name: str) -> Exception:
    """Turn skopeo's messages into the one line a user needs (see ci.tools.registry).

    Only what skopeo says without --debug counts: its debug lines tell of
    steps that went fine (an HTTPS ping answered in HTTP, a 401 before the
    credentials were sent), not of why it failed.
    """
    text = "".join(line for line in exc.output.splitlines(keepends=True) if not _DEBUG.match(line))
    full = re.search(r"(/[^\s:\"]+)?: no space left on device", text, re.I)
    if full:
        return DiskFull(f"no space left on device{f' writing {full[1]}' if full[1] else ''}", NO_SPACE_HINT)
    explained = registry.from_text(text, registry=registry_of(name) or name, name=name)
    if explained:
        return explained
    # skopeo's last word is `time=… level=fatal msg="…"`: that message, once, and the lines before it above.
    fatal = re.search(r'level=fatal msg="((?:[^"\\]|\\.)*)"', text)
    if fatal is None:
        return CommandFailed(exc.message, argv=exc.argv, exit_code=exc.returncode, output=text)
    said = fatal[1].replace('\\"', '"').replace("\\\\", "\\")
    before = "".join(line for line in text.splitlines(keepends=True) if "level=fatal" not in line)
    hint = "check the source and the destination" + ("; skopeo's output is above" if before.strip() else "")
    return CommandFailed(f"skopeo failed: {said}", hint,
                         argv=exc.argv, exit_code=exc.returncode, output=before)
