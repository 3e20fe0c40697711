"""Nix remote builders for the builds the toolkit runs in a builder container.

The user names builders in Nix's own `builders` syntax; the toolkit adds what
only it can: the SSH private key, written into the container as a private file
(0600, never on a command line, in a log or in an image layer, gone with the
container), pinned host keys with strict checking, and the nix.conf lines
(`builders`, `builders-use-substitutes`, `max-jobs = 0` when nothing is to be
built here). Before a build, one short container asks each builder's store for
its version (`nix store info`), so that a builder that does not answer, or
whose host key changed, is one line instead of Nix's "unable to start any
build".

Where a derivation is built changes neither its output nor the image: none of
this enters an image's identity. Remote builds happen only where the toolkit
runs the container itself (build-web's one-container flow, bundle, build-vm,
and build-cache's pre-build); `docker build` steps never see the key.

It is longer than the other modules (about 580 lines) because it is one
concept with several small parts that only make sense together: the builders
syntax, the SSH key and host keys, the probe, and the share of what a build
added; split, each would need the others' private details.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import logging
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core import credentials
from .core.errors import BuildFailed, ConfigError, ToolkitError
from .core.files import read_input

if TYPE_CHECKING:
    from .bundles import Substituter

log = logging.getLogger(__name__)

# Where the key and settings go in the builder container: root's alone, removed with it.
DIRECTORY = "/.nix-ci-remote"
KEY = f"{DIRECTORY}/id"
KNOWN_HOSTS = f"{DIRECTORY}/known_hosts"
SSH_CONFIG = f"{DIRECTORY}/ssh_config"
NIX_CONF = f"{DIRECTORY}/nix.conf"

# Nix's machines syntax: URI, systems, SSH key, max jobs, speed factor, supported and mandatory features, host key.
FIELDS = 8
SCHEMES = ("ssh-ng", "ssh")
_URI = re.compile(r"^(?P<scheme>ssh-ng|ssh)://(?:(?P<user>[A-Za-z0-9._-]+)@)?"
                  r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?(?P<query>\?[^\s]*)?$")
_SYSTEM = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+$")
_FEATURE = re.compile(r"^[A-Za-z0-9._-]+$")
# The engine's architecture (docker version's Arch) as Nix names the system.
SYSTEMS = {"amd64": "x86_64-linux", "x86_64": "x86_64-linux", "arm64": "aarch64-linux", "aarch64": "aarch64-linux"}

BUILDERS_HINT = ("write each builder as Nix does: `ssh-ng://USER@HOST[:PORT] SYSTEMS - MAX-JOBS SPEED FEATURES`, "
                 "entries separated by ';' or new lines")
KEYSCAN_HINT = ("pin it in remote.known_hosts (a known_hosts file) or remote.host_keys: `ssh-keyscan [-p PORT] HOST` "
                "prints it; check its fingerprint against what the builder's admin gives you")


@dataclass(frozen=True)
class Builder:
    """One entry of the builders setting."""

    scheme: str
    user: str | None
    host: str  # as written; [::1] for IPv6
    port: int | None
    query: str
    systems: tuple[str, ...]
    max_jobs: int = 1
    speed_factor: int = 1
    supported: tuple[str, ...] = ()
    mandatory: tuple[str, ...] = ()
    host_key: str | None = None  # a known_hosts key (TYPE BASE64), from the entry's eighth field

    @property
    def uri(self) -> str:
        """The store URI as Nix is given it: Nix 2.26's ssh stores take no port, the SSH config carries it."""
        return f"{self.scheme}://{self.user + '@' if self.user else ''}{self.host}{self.query}"

    @property
    def name(self) -> str:
        """How messages name it: as the user wrote it, with its port."""
        return f"{self.scheme}://{self.user + '@' if self.user else ''}{self.host}{f':{self.port}' if self.port else ''}"

    @property
    def known_host(self) -> str:
        """The name ssh looks up in known_hosts: HOST, or [HOST]:PORT off port 22."""
        bare = self.host.strip("[]")
        return f"[{bare}]:{self.port}" if self.port and self.port != 22 else bare

    def machine(self) -> str:
        """Its line for Nix's builders setting, with the container's key file."""
        return " ".join([self.uri, ",".join(self.systems), KEY, str(self.max_jobs), str(self.speed_factor),
                         ",".join(self.supported) or "-", ",".join(self.mandatory) or "-", "-"])


def parse_builders(spec: str, source: str = "remote.builders") -> tuple[Builder, ...]:
    """Nix's builders syntax, checked: entries separated by ';' or new lines, '#' starts a comment."""
    builders = []
    for raw in re.split(r"[;\n]", spec):
        entry = raw.split("#", 1)[0].strip()
        if entry:
            builders.append(_parse_entry(entry, source))
    if not builders:
        raise ConfigError(f"{source} names no builder", BUILDERS_HINT)
    ports: dict[str, int | None] = {}
    for builder in builders:
        if ports.setdefault(builder.host, builder.port) != builder.port:
            raise ConfigError(f"{source} names {builder.host} with two ports", "give each host one port")
    return tuple(builders)


def _parse_entry(entry: str, source: str) -> Builder:
    words = entry.split()
    uri = _URI.match(words[0])
    if uri is None:
        shown = words[0] if len(words[0]) <= 60 else words[0][:57] + "..."
        raise ConfigError(f"'{shown}' in {source} is not an ssh-ng:// or ssh:// builder", BUILDERS_HINT)
    name = words[0]
    if len(words) > FIELDS:
        raise ConfigError(f"the builder {name} in {source} has {len(words)} fields, Nix's syntax at most {FIELDS}",
                          BUILDERS_HINT)
    if "ssh-key=" in (uri["query"] or ""):
        raise ConfigError(f"the builder {name} in {source} names an SSH key in its URI",
                          "give the key with remote.ssh_key_file (--builders-key) or NIX_CI_BUILDERS_SSH_KEY instead")
    fields = [None if word == "-" else word for word in words[1:]] + [None] * (FIELDS - len(words))
    systems, key, jobs, speed, supported, mandatory, host_key = fields
    if systems is None:
        raise ConfigError(f"the builder {name} in {source} names no system", "give its systems, e.g. x86_64-linux")
    for system in systems.split(","):
        if not _SYSTEM.match(system):
            raise ConfigError(f"'{system}' of the builder {name} in {source} is not a Nix system",
                              "use names such as x86_64-linux or aarch64-linux")
    if key is not None:
        raise ConfigError(f"the builder {name} in {source} names an SSH key ({key}) in its third field",
                          "write '-' there: the toolkit passes the key of remote.ssh_key_file (--builders-key) "
                          "or NIX_CI_BUILDERS_SSH_KEY; " + BUILDERS_HINT)
    features = [tuple(f for f in (words or "").split(",") if f) for words in (supported, mandatory)]
    for feature in (*features[0], *features[1]):
        if not _FEATURE.match(feature):
            raise ConfigError(f"'{feature}' of the builder {name} in {source} is not a feature name", BUILDERS_HINT)
    port = int(uri["port"]) if uri["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"the builder {name} in {source} has no valid port", "use a port between 1 and 65535")
    return Builder(uri["scheme"], uri["user"], uri["host"], port, uri["query"] or "", tuple(systems.split(",")),
                   _count(jobs, "maximum jobs", name, source, 1), _count(speed, "speed factor", name, source, 1),
                   features[0], features[1], _host_key(host_key, name, source) if host_key else None)


def _count(word: str | None, what: str, name: str, source: str, default: int) -> int:
    if word is None:
        return default
    if not word.isdigit():
        raise ConfigError(f"the {what} of the builder {name} in {source} is '{word}', not a number", BUILDERS_HINT)
    return int(word)


def _host_key(encoded: str, name: str, source: str) -> str:
    """Nix's eighth field: the builder's public host key line, base64-encoded."""
    try:
        key = base64.b64decode(encoded, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        key = ""
    if not _key_words(key.split()):
        raise ConfigError(f"the host key of the builder {name} in {source} is not a base64 public host key",
                          "give `base64 -w0` of its /etc/ssh/ssh_host_ed25519_key.pub, or '-' and remote.known_hosts")
    return " ".join(key.split()[:2])


def _key_words(words: list[str]) -> bool:
    return len(words) >= 2 and re.match(r"^(ssh-|ecdsa-|sk-)", words[0]) is not None \
        and re.match(r"^[A-Za-z0-9+/]+={0,3}$", words[1]) is not None


@dataclass(frozen=True)
class RemoteBuilders:
    """The builders, and what the builder container needs to use them."""

    builders: tuple[Builder, ...]
    key: bytes = field(repr=False)  # the SSH private key
    known_hosts: tuple[str, ...]  # known_hosts lines
    local_builds: bool = True  # False: max-jobs = 0, nothing is built in the builder container
    fallback: bool = False  # when no builder answers: build in the container (True) or fail
    network: str | None = None  # the build container's network; None: the engine's default

    def __repr__(self) -> str:  # never show the key
        return f"RemoteBuilders({', '.join(b.name for b in self.builders)}, local_builds={self.local_builds})"

    def nix_conf(self) -> str:
        lines = [f"builders = {' ; '.join(b.machine() for b in self.builders)}", "builders-use-substitutes = true"]
        if not self.local_builds:
            lines.append("max-jobs = 0")
        return "\n".join(lines) + "\n"

    def ssh_config(self) -> str:
        """Strict host key checking against the pinned keys alone, the toolkit's key alone, no prompts."""
        lines = []
        for builder in self.builders:
            if builder.port:
                lines += [f"Host {builder.host.strip('[]')}", f"  Port {builder.port}"]
        lines += ["Host *", f"  IdentityFile {KEY}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {KNOWN_HOSTS}",
                  "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes", "  UpdateHostKeys no",
                  "  BatchMode yes", "  ConnectTimeout 10", "  ServerAliveInterval 15", "  ForwardAgent no"]
        return "\n".join(lines) + "\n"

    def contents(self) -> dict[str, bytes]:
        """The private files the container gets (see private_files)."""
        return {KEY: self.key, KNOWN_HOSTS: ("\n".join(self.known_hosts) + "\n").encode(),
                SSH_CONFIG: self.ssh_config().encode(), NIX_CONF: self.nix_conf().encode()}

    def files(self) -> bytes:
        return private_files(self.contents())

    def environment(self) -> dict[str, str]:
        """Nix reads the settings as its user configuration, and passes ssh the toolkit's SSH config (-F: no other)."""
        return {"NIX_USER_CONF_FILES": NIX_CONF, "NIX_SSHOPTS": f"-F {SSH_CONFIG}"}

    def for_system(self, system: str) -> RemoteBuilders:
        """Only the builders of `system`; none: ConfigError (another system's builder cannot help this build)."""
        usable = tuple(b for b in self.builders if system in b.systems)
        for builder in self.builders:
            if builder not in usable:
                log.warning("warning: the builder %s builds %s, not %s: not used for this build", builder.name,
                            ",".join(builder.systems), system)
        if not usable:
            names = ", ".join(f"{b.name} ({','.join(b.systems)})" for b in self.builders)
            raise ConfigError(f"no remote builder builds {system}, the system of this build: {names}",
                              f"name a builder of {system} in remote.builders (--builders)")
        return replace(self, builders=usable)


def private_files(contents: Mapping[str, bytes]) -> bytes:
    """A tar archive to unpack at / in a container: DIRECTORY (0700) and `contents` (path: bytes) in it, each
    0600 and root's."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directory = tarfile.TarInfo(DIRECTORY.lstrip("/"))
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        archive.addfile(directory)
        for name, data in contents.items():
            entry = tarfile.TarInfo(name.lstrip("/"))
            entry.size, entry.mode = len(data), 0o600
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


# The shell command that removes the key and settings once Nix is done with them.
FORGET = f"rm -rf {DIRECTORY}"


def settings(*, builders: str | None, key_file: str | Path | None = None, known_hosts_file: str | Path | None = None,
             host_keys: str | Iterable[str] | None = None, local_builds: bool = True, fallback: bool = False,
             network: str | None = None) -> RemoteBuilders | None:
    """The checked remote builder settings; None without builders. Every builder needs a pinned host key."""
    if not builders or not str(builders).strip():
        return None
    parsed = parse_builders(str(builders))
    key = read_key(Path(key_file).expanduser() if key_file else None)
    lines = _known_hosts(known_hosts_file, host_keys)
    lines += [f"{b.known_host} {b.host_key}" for b in parsed if b.host_key]
    for builder in parsed:
        if not any(_names(line, builder.known_host) for line in lines):
            raise ConfigError(f"no host key is pinned for the builder {builder.name} ({builder.known_host})",
                              KEYSCAN_HINT)
    if network not in (None, "", "default", "bridge", "host"):
        raise ConfigError(f"remote.network is '{network}'", "use host, or leave it unset for the engine's default")
    return RemoteBuilders(parsed, key, tuple(lines), local_builds, fallback, network or None)


def read_key(path: Path | None) -> bytes:
    """The SSH private key: from `path`, else from NIX_CI_BUILDERS_SSH_KEY; checked to be one, never shown."""
    if path is not None:
        data, source = read_input(path, "SSH key", "--builders-key (remote.ssh_key_file)"), str(path)
    else:
        found = credentials.builders_ssh_key()
        if found is None:
            raise ConfigError("remote builders need an SSH private key, and none is given",
                              f"set remote.ssh_key_file (--builders-key FILE) or {credentials.BUILDERS_KEY_VARIABLE}")
        data, source = found, credentials.BUILDERS_KEY_VARIABLE
    text = data.decode(errors="replace").replace("\r\n", "\n").strip()
    if not re.fullmatch(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\n.*\n-----END [A-Z ]*PRIVATE KEY-----", text, re.S):
        raise ConfigError(f"{source} does not hold an SSH private key",
                          "give the private half of the key the builders accept (ssh-keygen -t ed25519 makes one)")
    if "ENCRYPTED" in text or "bcrypt" in _openssh_kdf(text):
        raise ConfigError(f"the SSH key in {source} is protected by a passphrase",
                          "give the builders a key of their own without one, kept as a CI secret")
    return (text + "\n").encode()


def _openssh_kdf(text: str) -> str:
    """The KDF name of an OpenSSH private key ('none' when unprotected), '' if it cannot be read."""
    body = "".join(line for line in text.splitlines()[1:-1])
    try:
        raw = base64.b64decode(body)
    except binascii.Error:
        return ""
    if not raw.startswith(b"openssh-key-v1\0"):
        return ""
    offset = len(b"openssh-key-v1\0")
    cipher_length = int.from_bytes(raw[offset:offset + 4], "big")
    offset += 4 + cipher_length
    kdf_length = int.from_bytes(raw[offset:offset + 4], "big")
    return raw[offset + 4:offset + 4 + kdf_length].decode(errors="replace")


def _known_hosts(path: str | Path | None, inline: str | Iterable[str] | None) -> list[str]:
    """The lines of the known_hosts file and of the inline keys, each checked to be a host key line."""
    texts: list[tuple[str, str]] = []
    if path:
        texts.append((read_input(Path(path).expanduser(), "known_hosts", "remote.known_hosts").decode(errors="replace"),
                      str(path)))
    if inline:
        texts.append((inline if isinstance(inline, str) else "\n".join(inline), "remote.host_keys"))
    lines = []
    for text, source in texts:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = line.split()
            if words[0].startswith("@"):
                words = words[1:]
            if not _key_words(words[1:3]):
                raise ConfigError(f"line {number} of {source} is not a known_hosts line",
                                  "write `HOST KEYTYPE KEY` lines, as ssh-keyscan prints them")
            lines.append(line)
    return lines


def _names(line: str, name: str) -> bool:
    """Whether the known_hosts `line` pins a key for `name` (patterns and hashed names too; @revoked pins nothing)."""
    words = line.split()
    if words[0] == "@revoked":
        return False
    if words[0].startswith("@"):
        words = words[1:]
    for pattern in words[0].split(","):
        if pattern.startswith("|1|"):
            try:
                salt, digest = (base64.b64decode(part) for part in pattern[3:].split("|", 1))
            except (binascii.Error, ValueError):
                continue
            if hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest):
                return True
        elif not pattern.startswith("!") and _ssh_pattern(pattern).fullmatch(name):
            return True
    return False


def _ssh_pattern(pattern: str) -> re.Pattern[str]:
    """ssh's host pattern: * and ? are wildcards, everything else (the brackets of [host]:port too) is literal."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.I)


def system_of(architecture: str) -> str:
    """The Nix system the engine's images are for."""
    system = SYSTEMS.get(architecture)
    if system is None:
        raise ConfigError(f"the Docker engine runs on {architecture or 'an unknown CPU'}, which the toolkit "
                          "cannot name as a Nix system", "build without remote builders")
    return system


# --- the check before a build --------------------------------------------------------

# Each builder asked in turn; a line `N ok` or `N failed`, then ssh's and Nix's words as `N | LINE`.
PROBE = """
n=0
for uri in "$@"; do
  n=$((n + 1))
  if out=$(nix --extra-experimental-features nix-command store info --store "$uri" 2>&1 >/dev/null); then
    echo "$n ok"
  else
    echo "$n failed"
    printf '%s\\n' "$out" | while IFS= read -r line; do echo "$n | $line"; done
  fi
done
"""

UNANSWERED = ("connection refused", "timed out", "no route to host", "could not resolve hostname",
              "name or service not known", "network is unreachable", "connection closed", "connection reset")


class Unanswered(BuildFailed):
    """A builder did not answer: the one failure remote.fallback may build here instead of."""


@dataclass(frozen=True)
class Answer:
    """What one builder said to the probe."""

    builder: Builder
    ok: bool
    words: tuple[str, ...] = ()

    def problem(self) -> ToolkitError | None:
        """Why it cannot be used, as one line; None when it answered. Only an Unanswered one may be fallen back from."""
        if self.ok:
            return None
        said = "\n".join(self.words)
        lowered = said.lower()
        name = self.builder.name
        if "has changed and you have requested strict checking" in lowered or "remote host identification has changed" in lowered:
            return BuildFailed(f"the host key of the builder {name} has changed: it is not the pinned one, so it is "
                               "refused", "if the builder was reinstalled, check its new key's fingerprint with its "
                               "admin and pin the new key (remote.known_hosts)", details=said)
        if "host key is known" in lowered or "host key verification failed" in lowered:
            return BuildFailed(f"the builder {name} offered a host key that is not pinned, so it is refused",
                               KEYSCAN_HINT, details=said)
        if "permission denied" in lowered:
            return BuildFailed(f"the builder {name} refused the SSH key", "add its public half to the builder's "
                               "authorized_keys, or give the key it accepts (remote.ssh_key_file)", details=said)
        if "ssh: not found" in lowered or "executable file not found" in lowered or "cannot execute 'ssh'" in lowered:
            return BuildFailed("the builder image has no ssh client, which Nix needs for remote builders",
                               "make it with one: `invoke build-cache --from-debian --refresh-builder` (openssh-client), "
                               "or a builder.image with ssh on PATH", details=said)
        if any(phrase in lowered for phrase in UNANSWERED):
            reason = next((line for line in self.words if line.startswith("ssh:")), "no answer")
            return Unanswered(f"the builder {name} does not answer ({reason.removeprefix('ssh: ')})",
                              "start it, check remote.builders, or allow building here when none answers "
                              "(remote.fallback, --fallback-local)", details=said)
        last = next((line for line in reversed(self.words) if line.strip()), "no answer")
        return BuildFailed(f"the builder {name} cannot be used: {last.removeprefix('error: ')}",
                           "check remote.builders and the builder's Nix (it must run nix-daemon for its SSH user)",
                           details=said)


def checked_options(remote: RemoteBuilders | None, image: str) -> dict[str, Any]:
    """What one_off_container needs for a build in a container of `image` that may use `remote`: the builders
    that answer (see checked), their key and settings; nothing without remote builders, or once fallen back from."""
    if remote is None:
        return {}
    from .tools import docker

    answering = checked(remote, image, system=system_of(docker.engine_architecture()))
    if answering is None:
        return {}
    return {"private_files": answering.files(), "environment": answering.environment(), "network": answering.network}


def answers(remote: RemoteBuilders, stdout: str) -> list[Answer]:
    """The probe's output, per builder (one not mentioned did not answer)."""
    status: dict[int, bool] = {}
    words: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        found = re.match(r"^(\d+) (ok|failed)$", line)
        said = re.match(r"^(\d+) \| (.*)$", line)
        if found:
            status[int(found[1])] = found[2] == "ok"
        elif said:
            words.setdefault(int(said[1]), []).append(said[2])
    return [Answer(builder, status.get(n, False), tuple(words.get(n, ["connection closed"])))
            for n, builder in enumerate(remote.builders, 1)]


def checked(remote: RemoteBuilders, image: str, *, system: str) -> RemoteBuilders | None:
    """The builders that answer from a container of `image` (the builder the build runs in), as the build
    will reach them. None: none answered and remote.fallback lets the build go on here. A changed or
    unpinned host key, or a refused key, always fails."""
    from .tools import docker

    remote = remote.for_system(system)
    command = ["/bin/sh", "-c", PROBE, "probe", *(b.uri for b in remote.builders)]
    with docker.one_off_container(image, command, files=remote.files(), environment=remote.environment(),
                                  network=remote.network) as container:
        finished = container.run(lambda line: log.debug("%s", line))
    problems = [(a.builder, a.problem()) for a in answers(remote, finished.stdout)]
    for _, problem in problems:
        if problem is not None and not isinstance(problem, Unanswered):
            raise problem
    usable = tuple(builder for builder, problem in problems if problem is None)
    for _, problem in problems:
        if problem is not None and usable:
            log.warning("warning: %s; building on the others", problem.message)
    if usable:
        log.info("remote builders: %s%s", ", ".join(b.name for b in usable),
                 "" if remote.local_builds else " (nothing is built here: max-jobs = 0)")
        return replace(remote, builders=usable)
    first = next(problem for _, problem in problems if problem is not None)
    if not remote.fallback:
        raise first
    log.warning("warning: %s; building here instead (remote.fallback)", first.message)
    return None


# --- build-cache: the cache image's closure built remotely first ---------------------

# What the shipped nix-cache.Dockerfile builds, built first in a container the toolkit runs, with the remote
# builders; docker build then substitutes it from a binary cache signed by a key made for this build alone.
PREBUILD = """
set -eu
cd "$1"
nix-store --generate-binary-cache-key nix-ci-remote-prebuild /tmp/prebuild.sec /tmp/prebuild.pub
{ nix-build "$2" --attr skopeo --attr umoci --no-out-link
  nix-build "$3" --arg pkgs "import $1/$2 {}" --attr web --attr web-cmd --no-out-link; } > /tmp/prebuilt
nix --extra-experimental-features nix-command copy \\
  --to "file:///prebuilt?compression=zstd&secret-key=/tmp/prebuild.sec" $(cat /tmp/prebuilt) >&2
rm -f /tmp/prebuild.sec
cat /tmp/prebuild.pub
"""


@contextmanager
def prebuilt(remote: RemoteBuilders, image: str, *, root: Path, context: list[str], pkgs: str,
             images: str) -> Iterator[Substituter | None]:
    """The nix-cache closure of `images` built with `remote` in a container of `image` (nix-base), as a
    binary cache on this machine for docker build to substitute from; None when fallen back from."""
    from .bundles import Substituter
    from .tools import docker, nix
    from .tools.docker import archive

    answering = checked(remote, image, system=system_of(docker.engine_architecture()))
    if answering is None:
        yield None
        return
    with docker.context_archive(root, context, under="/src", extra={}) as files, \
            docker.one_off_container(image, ["/bin/sh", "-c", PREBUILD, "prebuild", "/src", pkgs, images],
                                     files=files.read(), private_files=answering.files(),
                                     environment=answering.environment(), network=answering.network) as container:
        log.info("building the cache's closure on the remote builders first")
        finished = container.run(lambda line: log.info("%s", line))
        if finished.status != 0:
            raise nix.build_error("the remote build of the cache's closure", finished.stderr_tail,
                                  fallback=f"exit {finished.status}", offline="the remote build needs a download",
                                  offline_hint="check that the builders reach their substituters")
        public_key = finished.stdout.strip().splitlines()[-1]
        with tempfile.TemporaryDirectory(prefix="nix-ci-prebuilt-") as work:
            with archive.tar_stream(container.copy_out("/prebuilt")) as tar:
                tar.extractall(work, filter="data")
            yield Substituter("the remote builders' results", Path(work) / "prebuilt", (public_key,))


# --- sharing what a build made through the registry ----------------------------------

SHARE_DIRECTORY = "/.nix-ci-share"  # a directory of this machine, bind-mounted
SHARE_KEY = f"{DIRECTORY}/share.sec"
BEFORE = "/tmp/.nix-ci-store-before"
NIX = "nix --extra-experimental-features nix-command"


@dataclass(frozen=True)
class Share:
    """After a build, the store paths it added, signed into a binary cache and pushed to `reference`
    (as cache-push does), for the next runner's --substituter."""

    reference: str
    secret_key: bytes = field(repr=False)  # bundle.secret_key's content

    def contents(self) -> dict[str, bytes]:
        return {SHARE_KEY: self.secret_key}

    def before(self) -> str:
        """Shell: remember the store's valid paths before the build."""
        return f"{NIX} path-info --all > {BEFORE}"

    def after(self) -> str:
        """Shell: the valid paths the store lacked before, but derivations (what the image is made of, and what
        evaluating it built: import from derivation), with their closures, signed into SHARE_DIRECTORY/cache; a
        failed copy fails the build."""
        return (f"new=$({NIX} path-info --all | grep -vxF -f {BEFORE} | grep -v '[.]drv$' || :); "
                f'if [ -n "$new" ]; then {NIX} copy '
                f'--to "file://{SHARE_DIRECTORY}/cache?compression=zstd&secret-key={SHARE_KEY}" $new >&2 || exit; fi; '
                f"rm -f {SHARE_KEY}")

    def push(self, directory: Path) -> None:
        """Push the binary cache the build wrote under `directory` (bind-mounted at SHARE_DIRECTORY)."""
        cache = directory / "cache"
        if not any(cache.glob("*.narinfo")):
            log.info("nothing new to share: every path of the image was in the store already")
            return
        from .bundles import push_cache

        artifact = push_cache(self.reference, cache)
        log.info("shared %d store paths (the new ones and their closures): %s", len(list(cache.glob("*.narinfo"))),
                 artifact.pinned)
