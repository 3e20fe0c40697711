"""A second container as a Nix remote builder, for tests: Debian 13's nix-bin and
openssh-server from this machine's apt mirror (mmdebstrap, then docker import), sshd on a
loopback port of its own, with a host key and an authorised client key made by the test.

The image is made once per package list, as the toolkit's Debian builder is; containers go
when the test module ends."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from ci import debian
from tests.conftest import ROOT

IMAGE = "nix-ci-test-remote-builder:trixie"
PACKAGES = ("nix-bin", "openssh-server", "busybox-static", "ca-certificates")
PACKAGES_LABEL = "io.github.nix-ci.test.packages"
OVERLAY = ROOT / "tests" / "fixtures" / "remote-builder"


def image(engine) -> str:
    """The remote builder's image, made from Debian packages when missing."""
    labels = {}
    with contextlib.suppress(docker.errors.ImageNotFound):  # missing: made below
        labels = engine.images.get(IMAGE).labels or {}
    if labels.get(PACKAGES_LABEL) == ",".join(PACKAGES):
        return IMAGE
    sources = debian.apt_sources()
    with tempfile.TemporaryDirectory(prefix="nix-ci-remote-builder-") as work:
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--variant=essential", "--quiet", f"--include={','.join(PACKAGES)}",
                        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                        "--dpkgopt=path-exclude=/usr/share/locale/*", f"--customize-hook=sync-in {OVERLAY} /",
                        '--customize-hook=mkdir -p "$1/nix/var/nix" "$1/root/.ssh"',
                        '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*', "trixie", str(tarball),
                        *sources.lines_for("trixie")], check=True, capture_output=True)
        repository, tag = IMAGE.split(":")
        engine.api.import_image_from_file(str(tarball), repository=repository, tag=tag,
                                          changes=[f"LABEL {PACKAGES_LABEL}={','.join(PACKAGES)}"])
    return IMAGE


@dataclass
class RemoteBuilder:
    container: object
    port: int
    host_key: str  # "ssh-ed25519 AAAA…"
    client_key: Path  # the private key the builder accepts

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key}"

    def spec(self, system: str = "x86_64-linux", port: int | None = None) -> str:
        return f"ssh-ng://root@127.0.0.1:{port or self.port} {system} - 2 1"

    def has(self, store_path: str) -> bool:
        return self.container.exec_run(["test", "-e", store_path]).exit_code == 0


def keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(engine, directory: Path) -> RemoteBuilder:
    """A remote builder listening on 127.0.0.1:PORT (the host's network), with a host key made here."""
    host_key = keygen(directory / "host_key", "remote-builder-host")
    keygen(directory / "client_key", "toolkit-test")
    port = free_port()
    container = engine.containers.create(image(engine), ["/usr/sbin/sshd", "-D", "-e", "-p", str(port),
                                                         "-o", "ListenAddress=127.0.0.1"],
                                         network_mode="host", labels={"io.github.nix-ci.test": "remote-builder"})
    files = io.BytesIO()
    with tarfile.open(fileobj=files, mode="w") as archive:
        privilege_separation = tarfile.TarInfo("run/sshd")  # sshd needs it; the image's /run is empty
        privilege_separation.type, privilege_separation.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(privilege_separation)
        for name, source in (("etc/ssh/ssh_host_ed25519_key", directory / "host_key"),
                             ("root/.ssh/authorized_keys", directory / "client_key.pub")):
            data = source.read_bytes()
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(data), 0o600
            archive.addfile(entry, io.BytesIO(data))
    try:
        container.put_archive("/", files.getvalue())
        container.start()
        _wait_for_ssh(container, port)
    except BaseException:
        container.remove(force=True)
        raise
    return RemoteBuilder(container, port, host_key, directory / "client_key")


def _wait_for_ssh(container, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                if connection.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the remote builder's sshd did not answer: {container.logs().decode()[-500:]}")
        time.sleep(0.2)
