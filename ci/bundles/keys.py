"""The key pair that signs bundles: made in a container of the builder, read and checked on this machine."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import socket
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..builder import BUILDER_HINT
from ..core.errors import BuildFailed, ConfigError
from ..tools import docker

log = logging.getLogger(__name__)


NO_KEY_HINT = "make a key pair with `invoke bundle-key`, or set bundle.secret_key to the secret key file of yours"
_KEY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<key>[A-Za-z0-9+/]+={0,2})$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class KeyPair:
    """A signing key pair on this machine: the secret key file and the public key."""

    name: str
    secret: Path
    public: Path
    public_key: str  # NAME:BASE64, safe to print


def default_key_name() -> str:
    """NAME of NAME-1, as Nix's documentation names keys: the host that signs."""
    return f"{socket.gethostname().split('.')[0] or 'nix-ci'}-1"


def generate_key(*, builder: str, name: str, secret: Path, public: Path, force: bool = False,
                 project: Path | None = None) -> KeyPair:
    """`nix-store --generate-binary-cache-key` in a container of `builder`; write the pair to `secret` and `public`.

    The secret key file is made mode 0600 in a directory of mode 0700 (when
    the toolkit makes it), never inside `project`, and replaced only with `force`.
    """
    if project is not None and secret.absolute().is_relative_to(project.absolute()):
        raise ConfigError(f"the secret key {secret} would be inside the project {project}",
                          "keep it out of the repository: set bundle.secret_key to e.g. ~/.config/nix-ci/bundle-key.sec")
    if not _KEY_NAME.match(name):
        raise ConfigError(f"'{name}' is not a usable key name", "use letters, digits, '.', '_' and '-', e.g. ci.example.org-1")
    for path in (secret, public):
        if path.exists() and not force:
            raise ConfigError(f"{path} already exists",
                              "pass --force to replace the key pair; runners that trust only the old key then refuse new bundles")
    docker.require_image(builder, BUILDER_HINT)
    files = _tar({"keys/": None})
    command = ["nix-store", "--generate-binary-cache-key", name, "/keys/secret", "/keys/public"]
    with docker.one_off_container(builder, command, files=files, no_image=BUILDER_HINT) as container:
        finished = container.run(lambda line: log.debug("%s", line))
        if finished.status != 0:
            raise BuildFailed(f"nix-store --generate-binary-cache-key failed in {builder} (exit {finished.status})",
                              "the end of its log is above", details=finished.stderr_tail)
        made = _read_small_tar(container.copy_out("/keys"))
    secret_text = made.get("keys/secret", b"").decode().strip()
    public_text = made.get("keys/public", b"").decode().strip()
    _check_key(secret_text, 64, "the generated secret key")
    _check_key(public_text, 32, "the generated public key")
    secret.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    public.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(secret, (secret_text + "\n").encode(), 0o600)
    _write_atomically(public, (public_text + "\n").encode(), 0o644)
    return KeyPair(name, secret, public, public_text)


def read_secret_key(path: Path) -> bytes:
    """The secret key file's content, checked; its content is never shown."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no secret key at {path}", NO_KEY_HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the secret key {path}: {getattr(exc, 'strerror', None) or 'not a text file'}",
                          NO_KEY_HINT) from None
    if _key_length(text) == 32:
        raise ConfigError(f"{path} is a public key, not a secret one", "give the secret half of the pair (bundle.secret_key)")
    if _key_length(text) != 64:
        raise ConfigError(f"{path} is not a Nix secret key (NAME:BASE64 of 64 bytes)", NO_KEY_HINT)
    if path.stat().st_mode & 0o077:
        log.warning("warning: the secret key %s can be read by other users; chmod 600 it", path)
    return (text + "\n").encode()


def public_keys(key_files: Iterable[str | Path], keys: Iterable[str] = ()) -> tuple[str, ...]:
    """The trusted public keys: those in `key_files` (one per line) and `keys`, checked; duplicates dropped."""
    found: list[str] = []
    for name in key_files:
        path = Path(name).expanduser()
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            raise ConfigError(f"no public key at {path}", "make a key pair with `invoke bundle-key`, "
                              "or set bundle.public_key to the signer's public key") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the public key {path}: {getattr(exc, 'strerror', None) or 'not a text file'}",
                              "give the file nix-store --generate-binary-cache-key wrote the public key to") from None
        found += [_public_key(word, f"word {n} of {path}") for n, word in enumerate(lines, 1)]
    words = [key for text in keys for key in text.split()]
    found += [_public_key(word, f"word {n} of bundle.trusted_keys") for n, word in enumerate(words, 1)]
    return tuple(dict.fromkeys(found))


def _public_key(text: str, where: str) -> str:
    """`text`, checked to be a Nix public key. It is never shown: a file given here by mistake may hold a
    secret (a secret key, a password file), and error lines reach logs and CI annotations."""
    if _key_length(text) == 64:
        raise ConfigError(f"{where} is a secret key where a public key belongs",
                          "give the public half of the pair; keep the secret key out of configuration that is shared")
    if _key_length(text) != 32:
        raise ConfigError(f"{where} is not a Nix public key",
                          "give NAME:BASE64, as nix-store --generate-binary-cache-key writes it")
    return text


def _key_length(text: str) -> int:
    match = _KEY.match(text)
    if not match:
        return 0
    try:
        return len(base64.b64decode(match["key"], validate=True))
    except ValueError:
        return 0


def _check_key(text: str, length: int, what: str) -> None:
    if _key_length(text) != length:
        raise BuildFailed(f"{what} is not a Nix key", "check the builder's Nix (nix-store --generate-binary-cache-key)")


def _tar(entries: Mapping[str, bytes | None]) -> bytes:
    """A tar archive of directories (name/: None) and small files (name: content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in entries.items():
            entry = tarfile.TarInfo(name.rstrip("/"))
            if content is None:
                entry.type, entry.mode = tarfile.DIRTYPE, 0o700
                archive.addfile(entry)
            else:
                entry.size, entry.mode = len(content), 0o600
                archive.addfile(entry, io.BytesIO(content))
    return buffer.getvalue()


def _read_small_tar(stream: Iterator[bytes]) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
