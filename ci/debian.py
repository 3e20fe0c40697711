"""A Nix builder image made from Debian packages, through this machine's apt mirror.

For machines that cannot reach Docker Hub (air-gapped sites, and this
project's tests): mmdebstrap (or debootstrap) installs Debian's nix-bin,
skopeo and umoci into a root filesystem, and the engine imports it. The
release is Debian 13 (trixie) unless configured: its Nix can evaluate the
pinned nixpkgs. The mirror comes from the machine's apt sources at run
time, never from the repo.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .core import process, resources
from .core.errors import BuildFailed, CommandFailed, ConfigError
from .tools import docker

log = logging.getLogger(__name__)

# s6, execline and patchelf: the test stand-in for nixpkgs copies Debian's s6 and execline
# into the store (tests/nixpkgs/host-skaware.nix). openssh-client: Nix reaches remote builders with ssh.
PACKAGES = ("nix-bin", "skopeo", "umoci", "busybox-static", "ca-certificates", "findutils", "coreutils",
            "s6", "execline", "patchelf", "openssh-client")

# What an image needs to find Nix and its profile.
IMAGE_CHANGES = [
    "ENV PATH=/root/.nix-profile/bin:/nix/var/nix/profiles/default/bin"
    ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV USER=root",
    "ENV HOME=/root",
    f"LABEL {docker.LABEL}=debian-builder",
]
# Names what the builder was made with: a builder made with other packages is made anew.
PACKAGES_LABEL = f"{docker.LABEL}.packages"

# Files laid over the root filesystem: nix.conf for a root, sandbox-less, offline Nix.
OVERLAY = resources.shipped("debian-builder")


# Debian 13: its nix-bin (2.26) evaluates the pinned nixpkgs, which needs Nix 2.18
# or newer; Debian 12's (2.8) does not. builder.suite picks another.
DEFAULT_SUITE = "trixie"


@dataclass(frozen=True)
class AptSources:
    """The machine's apt configuration: source files, and the suite it runs."""

    files: tuple[Path, ...]
    suite: str

    def entries(self) -> list[tuple[str, list[str], list[str], str]]:
        """(URI, suites, components, signed-by) of each deb entry, one-line or deb822."""
        found = []
        for path in self.files:
            text = path.read_text()
            if path.suffix == ".sources":
                for block in re.split(r"\n\s*\n", text):
                    fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", block, re.M))
                    if "deb" in fields.get("Types", "").split() and fields.get("URIs"):
                        for uri in fields["URIs"].split():
                            found.append((uri, fields.get("Suites", "").split(), fields.get("Components", "main").split(),
                                          fields.get("Signed-By", "")))
            else:
                for match in re.finditer(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", text, re.M):
                    signed = re.search(r"signed-by=(\S+)", match[1] or "")
                    found.append((match[2], [match[3]], match[4].split() or ["main"], signed[1] if signed else ""))
        return found

    def mirror(self) -> str:
        """The first Debian mirror URL, for tools that take one URL (debootstrap)."""
        for uri, _suites, _components, _signed in self.entries():
            if "security" not in uri:
                return uri
        raise ConfigError("no Debian mirror found in the apt sources", "add one to /etc/apt/sources.list.d/")

    def lines_for(self, suite: str) -> list[str]:
        """The machine's entries as one-line `deb` sources for `suite`: its own release
        name replaced (bookworm-security becomes trixie-security), mirrors unchanged."""
        lines = []
        for uri, suites, components, signed in self.entries():
            options = f"[signed-by={signed}] " if signed and not signed.lstrip().startswith("-----") else ""
            for name in suites:
                if name == self.suite or name.startswith(f"{self.suite}-"):
                    lines.append(f"deb {options}{uri} {suite}{name[len(self.suite):]} {' '.join(components)}")
        if not lines:
            raise ConfigError(f"no apt source of this machine names its release {self.suite}",
                              "add a Debian mirror to /etc/apt/sources.list.d/")
        return lines


def apt_sources(etc: Path = Path("/etc")) -> AptSources:
    """Read the machine's apt sources and release name."""
    apt = etc / "apt"
    files = [apt / "sources.list"] if (apt / "sources.list").is_file() else []
    files += sorted(p for p in (apt / "sources.list.d").glob("*") if p.suffix in (".list", ".sources"))
    files = [p for p in files if p.read_text().strip() and _has_entries(p)]
    if not files:
        raise ConfigError("this machine has no apt sources to build a Debian builder from",
                          "configure apt (/etc/apt/sources.list.d/) or use a builder image instead of --from-debian")
    release = (etc / "os-release").read_text() if (etc / "os-release").exists() else ""
    suite = re.search(r"^VERSION_CODENAME=(\w+)", release, re.M)
    if not suite:
        raise ConfigError("cannot tell which Debian release this machine runs", "set VERSION_CODENAME in /etc/os-release")
    return AptSources(tuple(files), suite[1])


def _has_entries(path: Path) -> bool:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return any(line and not line.startswith("#") for line in lines)


def check_suite(suite: str, source: str) -> str:
    """A Debian release name (trixie, bookworm, sid): lower-case letters, as apt writes them."""
    if not re.fullmatch(r"[a-z]{2,20}", suite or ""):
        raise ConfigError(f"{source} is '{suite}', which is not a Debian release name",
                          f"use a release name such as {DEFAULT_SUITE} (Debian 13) or bookworm (Debian 12)")
    return suite


REPOSITORY = "nix-builder"


def builder_image(*, suite: str = DEFAULT_SUITE, tool: str = "mmdebstrap", refresh: bool = False) -> docker.Image:
    """The builder made from Debian `suite`'s packages: nix-builder:debian-<suite>, made if missing or `refresh`."""
    sources = apt_sources()
    ref = f"{REPOSITORY}:debian-{suite}"
    existing = None if refresh else docker.inspect_image(ref)
    if existing is not None and existing.labels.get(PACKAGES_LABEL) != ",".join(PACKAGES):
        log.info("the Debian builder %s was made with other packages; making it anew", ref)
        existing = None
    if existing is not None:
        log.info("using the Debian builder %s (made earlier; --refresh-builder makes it anew)", ref)
        return existing
    return _make_builder_image(sources, suite, REPOSITORY, f"debian-{suite}", tool=tool)


def _make_builder_image(sources: AptSources, suite: str, repository: str, tag: str, *, tool: str) -> docker.Image:
    """Make the builder's root filesystem with `tool` and import it as repository:tag."""
    with tempfile.TemporaryDirectory(prefix="nix-builder-") as work:
        tarball = Path(work) / "rootfs.tar"
        log.info("making a Debian %s root filesystem with %s", suite, tool)
        try:
            if tool == "mmdebstrap":
                _mmdebstrap(sources, suite, tarball)
            elif tool == "debootstrap":
                _debootstrap(sources, suite, Path(work) / "root", tarball)
            else:
                raise ConfigError(f"unknown root filesystem tool '{tool}'", "use mmdebstrap or debootstrap")
        except CommandFailed as exc:
            reason = next((line[3:] for line in exc.output.splitlines() if line.startswith("E: ")), exc.message)
            raise BuildFailed(f"making a Debian {suite} root filesystem with {tool} failed: {reason}",
                              f"check that this machine's Debian mirror serves {suite} (builder.suite)",
                              details=exc.details) from None
        log.info("importing it as %s:%s", repository, tag)
        return docker.import_rootfs(str(tarball), repository, tag,
                                    [*IMAGE_CHANGES, f"LABEL {PACKAGES_LABEL}={','.join(PACKAGES)}"])


def _mmdebstrap(sources: AptSources, suite: str, tarball: Path) -> None:
    process.run(
        "mmdebstrap",
        [
            "--variant=essential",
            f"--include={','.join(PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            f"--customize-hook=sync-in {OVERLAY} /",
            '--customize-hook=mkdir -p "$1/nix/var/nix"',
            suite,
            str(tarball),
            *sources.lines_for(suite),
        ],
        on_line=_progress,
    )


def _debootstrap(sources: AptSources, suite: str, root: Path, tarball: Path) -> None:
    process.run(
        "debootstrap",
        ["--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(root), sources.mirror()],
        on_line=_progress,
    )
    process.run("cp", ["-a", f"{OVERLAY}/.", str(root)])
    (root / "nix" / "var" / "nix").mkdir(parents=True, exist_ok=True)
    process.run("tar", ["--numeric-owner", "-C", str(root), "-cf", str(tarball), "."])


def _progress(line: str) -> None:
    if line.startswith(("I: ", "E: ", "W: ")):
        log.info("%s", line)
