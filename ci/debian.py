"""A Nix builder image made from this machine's own Debian packages.

For machines that cannot reach Docker Hub (air-gapped sites, and this
project's tests): mmdebstrap (or debootstrap) installs Debian's nix-bin,
skopeo and umoci into a root filesystem, and the engine imports it. The
mirror comes from the machine's apt sources at run time, never from the repo.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .core import process
from .core.errors import ConfigError
from .tools import docker

log = logging.getLogger(__name__)

# s6, execline and patchelf: the test stand-in for nixpkgs copies Debian's s6 and execline
# into the store (tests/nixpkgs/host-skaware.nix).
PACKAGES = ("nix-bin", "skopeo", "umoci", "busybox-static", "ca-certificates", "findutils", "coreutils",
            "s6", "execline", "patchelf")

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
OVERLAY = Path(__file__).resolve().parent.parent / "images" / "debian-builder"


@dataclass(frozen=True)
class AptSources:
    """The machine's apt configuration: source files, and the suite it runs."""

    files: tuple[Path, ...]
    suite: str

    def mirror(self) -> str:
        """The first Debian mirror URL, for tools that take one URL (debootstrap)."""
        for path in self.files:
            for match in re.finditer(r"^\s*(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", path.read_text(), re.M):
                if "security" not in match[1]:
                    return match[1]
        raise ConfigError("no Debian mirror found in the apt sources", "add one to /etc/apt/sources.list.d/")


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


REPOSITORY = "nix-builder"


def builder_image(*, tool: str = "mmdebstrap", refresh: bool = False) -> docker.Image:
    """The builder made from Debian packages: nix-builder:debian-<suite>, made if missing or `refresh`."""
    sources = apt_sources()
    ref = f"{REPOSITORY}:debian-{sources.suite}"
    existing = None if refresh else docker.inspect_image(ref)
    if existing is not None and existing.labels.get(PACKAGES_LABEL) != ",".join(PACKAGES):
        log.info("the Debian builder %s was made with other packages; making it anew", ref)
        existing = None
    if existing is not None:
        log.info("using the Debian builder %s (made earlier; --refresh-builder makes it anew)", ref)
        return existing
    return _make_builder_image(sources, REPOSITORY, f"debian-{sources.suite}", tool=tool)


def _make_builder_image(sources: AptSources, repository: str, tag: str, *, tool: str) -> docker.Image:
    """Make the builder's root filesystem with `tool` and import it as repository:tag."""
    with tempfile.TemporaryDirectory(prefix="nix-builder-") as work:
        tarball = Path(work) / "rootfs.tar"
        log.info("making a Debian %s root filesystem with %s", sources.suite, tool)
        if tool == "mmdebstrap":
            _mmdebstrap(sources, tarball)
        elif tool == "debootstrap":
            _debootstrap(sources, Path(work) / "root", tarball)
        else:
            raise ConfigError(f"unknown root filesystem tool '{tool}'", "use mmdebstrap or debootstrap")
        log.info("importing it as %s:%s", repository, tag)
        return docker.import_rootfs(str(tarball), repository, tag,
                                    [*IMAGE_CHANGES, f"LABEL {PACKAGES_LABEL}={','.join(PACKAGES)}"])


def _mmdebstrap(sources: AptSources, tarball: Path) -> None:
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
            sources.suite,
            str(tarball),
            *map(str, sources.files),
        ],
        on_line=_progress,
    )


def _debootstrap(sources: AptSources, root: Path, tarball: Path) -> None:
    process.run(
        "debootstrap",
        ["--variant=minbase", f"--include={','.join(PACKAGES)}", sources.suite, str(root), sources.mirror()],
        on_line=_progress,
    )
    process.run("cp", ["-a", f"{OVERLAY}/.", str(root)])
    (root / "nix" / "var" / "nix").mkdir(parents=True, exist_ok=True)
    process.run("tar", ["--numeric-owner", "-C", str(root), "-cf", str(tarball), "."])


def _progress(line: str) -> None:
    if line.startswith(("I: ", "E: ", "W: ")):
        log.info("%s", line)
