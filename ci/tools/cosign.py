"""Signatures on what the toolkit pushes, through cosign, stored the sigstore way.

cosign signs a manifest digest and stores the signature beside it in the
same repository, under the tag `sha256-<hex>.sig` (sigstore attachments):
`cosign verify --key` and containers/image's `sigstoreSigned` policies
(skopeo, podman, with `use-sigstore-attachments: true`) read it there.

Keys are a cosign key pair: an encrypted private key, whose passphrase comes
from COSIGN_PASSWORD (cosign's own variable; never an argument, never
logged), and a PEM public key. Signing is offline and key-based: nothing
goes to a transparency log (--tlog-upload=false), and verification does not
ask one (--insecure-ignore-tlog). Registry credentials reach cosign as a
private temporary docker config, as they reach skopeo (ci.tools.skopeo.auth_file).

Only pinned references (NAME@sha256:...) are signed or verified, so that
what was checked is what gets used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core import credentials, process
from ..core.errors import CommandFailed, ConfigError, IntegrityError, ToolkitError
from ..core.refs import ImageRef, is_loopback, parse_image_ref
from . import registry

log = logging.getLogger(__name__)

PASSWORD_VARIABLE = "COSIGN_PASSWORD"
INSTALL_HINT = "install cosign (bash .ci/setup fetches Debian 13's)"


class SignatureRefused(IntegrityError):
    """A signature is missing, made with another key, or does not cover this manifest."""

    exit_code = 3


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@dataclass(frozen=True)
class Verified:
    """What `cosign verify` proved: this manifest digest of this repository, signed by this key."""

    repository: str  # registry/repository
    digest: str
    key: str  # the public key's file
    fingerprint: str  # sha256 of the public key's DER bytes, for people to compare
    signatures: int  # how many signatures by the key cover the digest

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"


def generate_key_pair(prefix: Path, *, force: bool = False) -> KeyPair:
    """`cosign generate-key-pair`: PREFIX.key (encrypted with COSIGN_PASSWORD) and PREFIX.pub.

    Written in a private directory beside them and moved into place: never
    a half-written pair. An existing pair is replaced only with `force`.
    """
    pair = KeyPair(prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub"))
    existing = [p for p in (pair.private, pair.public) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists",
                          "pass --force to replace the key pair (what it signed then verifies only with the old key)")
    if os.environ.get(PASSWORD_VARIABLE) is None:
        raise ConfigError(f"{PASSWORD_VARIABLE} is not set",
                          f"export {PASSWORD_VARIABLE} with the passphrase that is to encrypt the private key")
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".cosign-key-", dir=prefix.parent) as work:
            os.chmod(work, 0o700)
            process.run("cosign", ["generate-key-pair", "--output-key-prefix", "pair"], cwd=work)
            os.chmod(Path(work) / "pair.key", 0o600)
            os.replace(Path(work) / "pair.pub", pair.public)
            os.replace(Path(work) / "pair.key", pair.private)
    except OSError as exc:
        raise ConfigError(f"cannot write the key pair under {prefix.parent}: {exc.strerror}",
                          "choose a writable directory (signing.key)") from None
    return pair


def check_private_key(path: Path) -> None:
    """Refuse, before anything is pushed, a signing key that cannot be read or is not cosign's."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc.strerror}",
                          "make one with `invoke sign-key`, or set signing.key (--sign-key) to a readable cosign key") from None
    if "PRIVATE KEY-----" not in text:
        raise ConfigError(f"{path} is not a cosign private key",
                          "give the .key file `invoke sign-key` (cosign generate-key-pair) wrote")


def unlock(key: Path) -> str:
    """Check, before anything is pushed, that COSIGN_PASSWORD decrypts `key`; returns its public key (PEM)."""
    check_private_key(key)
    try:
        result = process.run("cosign", ["public-key", "--key", str(key)],
                            env={PASSWORD_VARIABLE: os.environ.get(PASSWORD_VARIABLE, "")})
    except CommandFailed as exc:
        raise _explain(exc, parse_image_ref("localhost/key@sha256:" + "0" * 64), key, signing=True) from None
    return result.output


def read_public_key(path: Path) -> str:
    """The fingerprint of a PEM public key; ConfigError when it cannot be read or is not one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc.strerror}",
                          "set signing.public_key (--key) to the .pub file of the signing key pair") from None
    found = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", text, re.S)
    if not found:
        raise ConfigError(f"{path} is not a PEM public key", "give the .pub file `invoke sign-key` wrote")
    try:
        der = base64.b64decode("".join(found[1].split()), validate=True)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM public key", "give the .pub file `invoke sign-key` wrote") from None
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


def sign(pinned: str, key: Path, *, insecure: bool = False) -> None:
    """Sign the manifest `pinned` (NAME@sha256:...) with the private `key`; the signature goes to NAME:sha256-<hex>.sig."""
    ref = _pinned(pinned)
    check_private_key(key)
    log.info("signing %s", pinned)
    with _cosign_environment(ref) as env:
        try:
            process.run("cosign", ["sign", "--key", str(key), "--tlog-upload=false", "--yes", *_registry_flags(ref, insecure),
                                  pinned], env=env)
        except CommandFailed as exc:
            raise _explain(exc, ref, key, signing=True) from None


def verify(pinned: str, public_key: Path, *, insecure: bool = False) -> Verified:
    """Check that `pinned` (NAME@sha256:...) carries a signature by `public_key`; SignatureRefused if not."""
    ref = _pinned(pinned)
    fingerprint = read_public_key(public_key)
    with _cosign_environment(ref) as env:
        try:
            result = process.run("cosign", ["verify", "--key", str(public_key), "--insecure-ignore-tlog=true",
                                           *_registry_flags(ref, insecure), "--output", "json", pinned], env=env)
        except CommandFailed as exc:
            raise _explain(exc, ref, public_key, signing=False) from None
    payloads = _payloads(result.output)
    covered = [p for p in payloads if p.get("critical", {}).get("image", {}).get("docker-manifest-digest") == ref.digest]
    if not covered:  # cosign checks this itself; a second look costs nothing
        raise SignatureRefused(f"no signature of {pinned} by {public_key} covers its digest",
                               "the signature was made for another manifest; sign the image again")
    return Verified(ref.name, str(ref.digest), str(public_key), fingerprint, len(covered))


def _pinned(reference: str) -> ImageRef:
    ref = parse_image_ref(reference, need_registry=True)
    if not ref.digest:
        raise ConfigError(f"'{reference}' is not pinned to a digest", "resolve the tag first (NAME@sha256:...)")
    return ref


def _registry_flags(ref: ImageRef, insecure: bool) -> list[str]:
    """Plain HTTP and no TLS check for loopback registries (as skopeo and oras here), or with --insecure."""
    return ["--allow-insecure-registry"] if insecure or is_loopback(ref.registry) else []


@contextmanager
def _cosign_environment(ref: ImageRef) -> Iterator[dict[str, str]]:
    """cosign's environment: a private docker config holding REGISTRY_USERNAME/PASSWORD when set (else
    the user's own), and an empty COSIGN_PASSWORD when unset, so that cosign never waits for a terminal."""
    env = {PASSWORD_VARIABLE: os.environ.get(PASSWORD_VARIABLE, "")}
    found = credentials.for_registry(ref.registry)
    if found is None:
        yield env
        return
    token = base64.b64encode(f"{found.username}:{found.password}".encode()).decode()
    directory = tempfile.mkdtemp(prefix="nix-ci-cosign-auth-")
    try:
        path = Path(directory) / "config.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps({"auths": {ref.registry: {"auth": token}}}))
        yield {**env, "DOCKER_CONFIG": directory}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _payloads(output: str) -> list[dict]:
    """The simple-signing payloads `cosign verify --output json` prints (one JSON array line)."""
    for line in output.splitlines():
        if line.startswith("["):
            try:
                return [p for p in json.loads(line) if isinstance(p, dict)]
            except ValueError:
                continue
    return []


def _explain(exc: CommandFailed, ref: ImageRef, key: Path, *, signing: bool) -> ToolkitError:
    """cosign's failure in one line, by what it printed."""
    text = exc.output
    pinned = str(ref)
    if "decryption failed" in text:
        return ConfigError(f"cannot decrypt the signing key {key}: wrong passphrase",
                           f"set {PASSWORD_VARIABLE} to the passphrase the key pair was made with")
    if "inappropriate ioctl" in text or "reading password" in text:
        return ConfigError(f"the signing key {key} needs a passphrase", f"set {PASSWORD_VARIABLE}")
    if "invalid pem block" in text or "PEM decoding failed" in text or "unsupported pem type" in text:
        return ConfigError(f"{key} is not a cosign key", "give a key `invoke sign-key` (cosign generate-key-pair) wrote")
    if "no signatures found" in text:
        return SignatureRefused(f"{pinned} is not signed", "sign it when pushing (push --sign-key), or do not use it")
    if "no matching signatures" in text or "invalid signature" in text or ("digest" in text and "claim" in text):
        return SignatureRefused(f"{pinned} is not signed by {key}",
                                "it was signed with another key or altered since; use the right public key or do not use it")
    # What the registry answered means the same whichever tool heard it (ci.tools.registry).
    answered = registry.from_text(text, registry=ref.registry, name=pinned)
    if answered is not None:
        return answered
    action = "signing" if signing else "verifying"
    return ToolkitError(f"{action} {pinned} failed: {exc.message}", "the end of cosign's output is above", details=exc.details)
