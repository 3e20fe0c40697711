"""Registries the tests start themselves (with auth, or to tamper with their
storage), and images written by hand as OCI layouts, for inputs the
toolkit cannot produce: another platform, a foreign image."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import requests

POLICY = Path(__file__).resolve().parents[2] / "images" / "policy.json"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class RegistryServer:
    """A real docker-registry process with a fixed address and storage: it can be
    killed and started again on the same port, with the same storage.

    With `password`, it wants user alice; with `tls` (certificate, key), it
    speaks HTTPS.
    """

    def __init__(self, directory: Path, *, password: str | None = None, host: str = "127.0.0.1",
                 tls: tuple[Path, Path] | None = None) -> None:
        self.directory = directory
        self.host, self.port = host, free_port(host)
        self.scheme = "https" if tls else "http"
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        config: dict = {
            "version": 0.1,
            "storage": {"filesystem": {"rootdirectory": str(directory / "data")}},
            "http": {"addr": self.address},
        }
        if tls:
            config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if password:
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (directory / "htpasswd").write_text(f"alice:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(directory / "htpasswd")}}
        (directory / "config.yml").write_text(json.dumps(config))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def storage(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        """The registry's log, every start appended: one access-log line per request it answered."""
        return self.directory / "registry.log"

    def start(self) -> None:
        """Start the registry and return once it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["docker-registry", "serve", str(self.directory / "config.yml")],
                                            stdout=log, stderr=subprocess.STDOUT)
        for _ in range(100):
            with contextlib.suppress(requests.RequestException), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its certificate is not checked here: only whether it answers
                requests.get(f"{self.scheme}://{self.address}/v2/", timeout=1, verify=False)
                return
            time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not answer on {self.address}")

    def kill(self) -> None:
        """SIGKILL: the registry dies at once, in the middle of whatever it does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def registry_server(directory: Path, **options) -> Iterator[RegistryServer]:
    """A started RegistryServer (options as RegistryServer takes them), stopped after."""
    server = RegistryServer(directory, **options)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def registry(directory: Path, *, password: str | None = None) -> Iterator[str]:
    """A real docker-registry on a free loopback port, storing under `directory`.

    With `password`, it wants user alice. Yields host:port; stops it after.
    """
    with registry_server(directory, password=password) as server:
        yield server.address


def self_signed_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A certificate for the IP address `host`, signed by itself (openssl, from ca-certificates' dependencies)."""
    certificate, key = directory / "registry.crt", directory / "registry.key"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(certificate), "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=IP:{host}"], check=True, capture_output=True)
    return certificate, key


def non_loopback_address() -> str | None:
    """This machine's IPv4 address on its default route (or any global one), else None."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.123", 9))  # TEST-NET-1: nothing is sent, the route picks the source address
        address = probe.getsockname()[0]
        if not address.startswith("127."):
            return address
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                               check=True, capture_output=True, text=True).stdout
        for line in shown.splitlines():
            address = line.split()[3].split("/")[0]
            if not address.startswith("127."):
                return address
    return None


def blob_path(directory: Path, digest: str) -> Path:
    """Where docker-registry keeps a blob's bytes."""
    hex_ = digest.removeprefix("sha256:")
    return directory / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


def handmade_layout(layout: Path, *, architecture: str = "amd64", labels: dict[str, str] | None = None,
                    content: bytes = b"not a nix store\n" * 4096) -> str:
    """Write a one-layer image (hello.txt holding `content`) as an OCI layout tagged handmade; its skopeo name."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = blob(layer_tar.getvalue())
    config = blob(json.dumps({
        "architecture": architecture, "os": "linux",
        "config": {"Labels": labels or {}, "Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
    }).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
         "annotations": {"org.opencontainers.image.ref.name": "handmade"}}]}))
    return f"oci:{layout}:handmade"


def push_handmade_image(target: str, *, architecture: str, labels: dict[str, str], workdir: Path) -> list[str]:
    """Write a one-layer image as an OCI layout, skopeo-copy it to docker://target; returns its layer digests there."""
    source = handmade_layout(workdir / "layout", architecture=architecture, labels=labels)
    subprocess.run(["skopeo", f"--policy={POLICY}", "copy", "--dest-tls-verify=false", source, f"docker://{target}"],
                   check=True, capture_output=True)
    pushed = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
                            check=True, capture_output=True, text=True).stdout
    return [layer["digest"] for layer in json.loads(pushed)["layers"]]


def layer_sizes(reference: str) -> dict[str, int]:
    """Compressed size of each layer of docker://reference, by diff ID, as the registry serves it."""
    def inspect(*options: str) -> dict:
        return json.loads(subprocess.run(["skopeo", "inspect", *options, "--tls-verify=false", f"docker://{reference}"],
                                         check=True, capture_output=True, text=True).stdout)
    manifest, config = inspect("--raw"), inspect("--config", "--raw")
    return {diff_id: layer["size"]
            for diff_id, layer in zip(config["rootfs"]["diff_ids"], manifest["layers"], strict=True)}
