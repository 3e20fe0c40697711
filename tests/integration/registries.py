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
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import requests

POLICY = Path(__file__).resolve().parents[2] / "images" / "policy.json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def registry(directory: Path, *, password: str | None = None) -> Iterator[str]:
    """A real docker-registry on a free loopback port, storing under `directory`.

    With `password`, it wants user alice. Yields host:port; stops it after.
    """
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config: dict = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(directory / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if password:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (directory / "htpasswd").write_text(f"alice:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(directory / "htpasswd")}}
    (directory / "config.yml").write_text(json.dumps(config))
    server = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(requests.RequestException):
                requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def blob_path(directory: Path, digest: str) -> Path:
    """Where docker-registry keeps a blob's bytes."""
    hex_ = digest.removeprefix("sha256:")
    return directory / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


def push_handmade_image(target: str, *, architecture: str, labels: dict[str, str], workdir: Path) -> list[str]:
    """Write a one-layer image as an OCI layout, skopeo-copy it to docker://target; returns its layer digests there."""
    layout = workdir / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        content = b"not a nix store\n" * 4096
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = blob(layer_tar.getvalue())
    config = blob(json.dumps({
        "architecture": architecture, "os": "linux",
        "config": {"Labels": labels, "Cmd": ["/hello"]},
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
    subprocess.run(["skopeo", f"--policy={POLICY}", "copy", "--dest-tls-verify=false",
                    f"oci:{layout}:handmade", f"docker://{target}"], check=True, capture_output=True)
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
