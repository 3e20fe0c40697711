"""A registry that answers what a test tells it to: crafted manifests, blobs that
are not what their descriptors say, bodies that never end. It is the registry
an attacker runs, or one whose namespace anyone can push to.

It speaks just enough of the distribution API for the toolkit's pulls (GET and
HEAD of /v2/, manifests and blobs), over plain HTTP on loopback, and records
every request with its Authorization header: a test can tell whether a
credential reached it. With `password`, it wants HTTP basic auth (any user),
as a private registry does, and answers 401 to every request without it.

Pure Python, in a thread of the test process: no engine, no docker-registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"
ENDLESS_CAP = 256 * 1024 * 1024  # an "endless" body stops here, so that a test that fails still ends

Body = bytes | Callable[[], Iterable[bytes]]


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def endless(chunk: bytes = b"\0" * 65536) -> Callable[[], Iterator[bytes]]:
    """A body that goes on (up to ENDLESS_CAP): what a registry that wants to fill the disk sends."""
    def body() -> Iterator[bytes]:
        for _ in range(ENDLESS_CAP // len(chunk)):
            yield chunk
    return body


@dataclass
class Request:
    method: str
    path: str
    authorization: str  # the header as received, "" when absent

    @property
    def credentials(self) -> str:
        """user:password of a Basic header, else ''."""
        if not self.authorization.lower().startswith("basic "):
            return ""
        try:
            return base64.b64decode(self.authorization.split(" ", 1)[1]).decode(errors="replace")
        except ValueError:
            return "<undecodable>"


@dataclass
class HostileRegistry:
    password: str | None = None
    manifests: dict[str, Body] = field(default_factory=dict)  # "name:tag" or "name@digest"
    blobs: dict[str, Body] = field(default_factory=dict)  # digest
    seen: list[Request] = field(default_factory=list)
    address: str = ""
    root: Body = b"{}"  # the body of GET /v2/
    error_status: int = 404  # the answer for anything it does not hold
    error_body: bytes = b'{"errors": [{"code": "NAME_UNKNOWN", "message": "unknown"}]}'

    def start(self) -> HostileRegistry:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes: any length can be sent

            def log_message(self, *args) -> None:  # quiet: tests read `seen`
                pass

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def do_GET(self) -> None:
                self.answer(head=False)

            def answer(self, head: bool) -> None:
                header = self.headers.get("Authorization", "")
                registry.seen.append(Request(self.command, self.path, header))
                if registry.password is not None and not header:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="hostile"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, content_type = registry.lookup(self.path)
                if body is None and self.path.rstrip("/") == "/v2":
                    body, content_type = registry.root, "application/json"
                if body is None:
                    self.send_response(registry.error_status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    if not head:
                        self.wfile.write(registry.error_body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                try:
                    for chunk in [body] if isinstance(body, bytes) else body():
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what a bounded reader does

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def lookup(self, path: str) -> tuple[Body | None, str]:
        parts = path.split("?", 1)[0].removeprefix("/v2/").split("/")
        if len(parts) >= 3 and parts[-2] == "manifests":
            name, ref = "/".join(parts[:-2]), parts[-1]
            key = f"{name}@{ref}" if ref.startswith("sha256:") else f"{name}:{ref}"
            return self.manifests.get(key), MANIFEST
        if len(parts) >= 3 and parts[-2] == "blobs":
            return self.blobs.get(parts[-1]), "application/octet-stream"
        return None, ""

    # --- what a test puts in it -----------------------------------------------------------

    def blob(self, data: bytes) -> dict:
        """Store `data`; its descriptor (without mediaType)."""
        digest = digest_of(data)
        self.blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    def manifest(self, name: str, tag: str, manifest: dict | bytes) -> str:
        """Serve `manifest` (a dict, or raw bytes) as name:tag and name@digest; the reference by digest."""
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        digest = digest_of(body)
        self.manifests[f"{name}:{tag}"] = body
        self.manifests[f"{name}@{digest}"] = body
        return f"{self.address}/{name}@{digest}"

    def artifact(self, artifact_type: str, files: list[tuple[str, str, bytes]]) -> dict:
        """The manifest of an OCI 1.1 artifact of `files` (media type, title, content), its blobs stored."""
        layers = [{"mediaType": media_type, **self.blob(data), "annotations": {TITLE: title}}
                  for media_type, title, data in files]
        return {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": artifact_type,
                "config": {"mediaType": EMPTY, **self.blob(b"{}")}, "layers": layers}

    def authorizations(self) -> list[str]:
        """Every Authorization header received, decoded where Basic."""
        return [r.credentials or r.authorization for r in self.seen if r.authorization]


# --- small valid contents, to craft from ------------------------------------------------------

STORE_HASH = "a" * 32
STORE_PATH = f"/nix/store/{STORE_HASH}-run"
NAR_NAME = "0" * 52 + ".nar"


def cache_files() -> dict[str, bytes]:
    """A whole (unsigned) binary cache of one store path, as `nix copy --to file://` names its files."""
    return {
        "nix-cache-info": b"StoreDir: /nix/store\nPriority: 10\n",
        f"{STORE_HASH}.narinfo": (f"StorePath: {STORE_PATH}\nURL: nar/{NAR_NAME}\nCompression: none\n"
                                  f"FileSize: 3\nReferences: \n").encode(),
        f"nar/{NAR_NAME}": b"nar",
    }


def bundle_tar(extra: Iterable[dict] = (), *, result: str = STORE_PATH) -> bytes:
    """A bundle as `invoke bundle` writes it (cache/ and the result link), with `extra` members
    (tarfile.TarInfo attributes, and `data` for a file's content) added before the result link."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        def add(name: str, data: bytes | None = None, **attributes) -> None:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            for key, value in attributes.items():
                setattr(info, key, value)
            if data is None and "type" not in attributes:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)

        add("cache")
        add("cache/nar")
        for name, data in cache_files().items():
            add(f"cache/{name}", data)
        for member in extra:
            add(**member)
        add("result", type=tarfile.SYMTYPE, linkname=result)
    return buffer.getvalue()


def bundle_artifact(registry: HostileRegistry, data: bytes | None = None) -> dict:
    """The manifest `invoke cache-push` writes for a bundle (`data`, default bundle_tar()), its blobs stored."""
    from ci import bundles

    return registry.artifact(bundles.BUNDLE_TYPE, [(bundles.BUNDLE_MEDIA_TYPE, "closure.tar", data or bundle_tar())])


def cache_artifact(registry: HostileRegistry) -> dict:
    """The manifest `invoke cache-push --cache` writes for cache_files(), its blobs stored."""
    from ci import bundles

    kinds = {"nix-cache-info": bundles.CACHE_INFO_MEDIA_TYPE, ".narinfo": bundles.NARINFO_MEDIA_TYPE,
             "nar/": bundles.NAR_MEDIA_TYPE}
    files = [(next(t for k, t in kinds.items() if k in name), name.removeprefix("nar/"), data)
             for name, data in cache_files().items()]
    return registry.artifact(bundles.CACHE_TYPE, files)
