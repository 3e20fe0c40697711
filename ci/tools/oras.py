"""OCI artifacts in registries, through oras-py: push files as an artifact
with their own media types and artifact type, pull them back with every
digest checked.

oras-py (0.2.x) does the registry conversation: HTTP, upload sessions,
chunked uploads, token and basic authentication, docker auth files. The
manifest is written here, not by `oras.provider.Registry.push`, because that
one cannot set `artifactType`, wants every file under the current directory,
and reads each file whole into memory; and pulls are checked here, because
oras-py does not verify what it downloads.

Manifests follow OCI image-spec 1.1 for artifacts: `artifactType` names the
kind of artifact, the config is the empty descriptor, and each file is a
layer with its own media type and its file name as title annotation.

A registry is not trusted to send what it should. A pulled manifest is read
only up to MAX_MANIFEST_BYTES and its shape is checked (`parse_manifest`)
before any of it is used: every descriptor has a media type, a sha256 digest
(the one algorithm checked here) and a size within bounds, every title is a
plain file name used once. Each blob is read only up to its declared size,
while it streams, and the artifact as a whole must fit the free space of the
disk it goes to. Nothing is written where the caller asked until every file
has been checked, by digest and by the caller's own check.

TLS is verified for every registry but loopback ones, which are spoken to in
plain HTTP; --insecure turns verification off for the others. Credentials
come from ci.core.credentials (the environment's pair only for the registry
REGISTRY_HOST names), or else from that registry's entry in the auth files
it lists; they are never logged. What a registry's answer means is said by
ci.tools.registry.

It is longer than the other modules (about 480 lines) because pushing,
pulling and checking what a registry sends share one registry session and one
set of descriptor rules; the referrers (ci.tools.referrers) build on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import oras.container
import oras.provider
import requests

from ..core import credentials
from ..core.errors import ConfigError, DiskFull, RegistryError
from ..core.files import human_size, writable_directory
from ..core.refs import ImageRef, is_loopback, parse_image_ref
from . import registry as registry_errors

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
CHUNK_SIZE = 16 * 1024 * 1024  # bytes per upload request: large files never sit whole in memory
PROBE_TIMEOUT = 10  # seconds to wait for /v2/ before saying the registry does not answer
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the bound the distribution registry and containerd put on a manifest
MAX_LAYERS = 10_000  # far more than any artifact of the toolkit has
MAX_BLOB_BYTES = 1 << 50  # a declared size beyond this (1 PiB) is a lie, whatever the disk
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_ALGORITHM = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):")


@dataclass(frozen=True)
class Blob:
    """A file to push, and how the artifact describes it."""

    path: Path
    media_type: str
    title: str = ""  # the name it is pulled back under; default: the file's name
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Descriptor:
    """A layer (or the config) as the manifest lists it."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.annotations.get(TITLE, "")

    def to_json(self) -> dict:
        data: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data

    @classmethod
    def from_json(cls, data: object, what: str = "a descriptor", where: str = "the manifest") -> Descriptor:
        """A descriptor of a pulled manifest, its shape checked; IntegrityError naming `what` when it is wrong."""
        def bad(detail: str) -> Exception:
            return registry_errors.malformed(where, f"{what} {detail}")

        if not isinstance(data, dict):
            raise bad("is not a JSON object")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise bad("has no mediaType")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            algorithm = _ALGORITHM.match(digest) if isinstance(digest, str) else None
            if algorithm and algorithm[1] != "sha256":
                raise bad(f"has a {algorithm[1][:20]} digest; only sha256 digests are checked")
            raise bad("has no valid sha256 digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad("has no valid size")
        if size > MAX_BLOB_BYTES:
            raise bad(f"claims {size} bytes, more than any file the toolkit pulls")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in annotations.items()):
            raise bad("has annotations that are not text")
        return cls(media_type, digest, size, dict(annotations))


@dataclass(frozen=True)
class Artifact:
    """An artifact in a registry: its manifest's digest and what it lists."""

    reference: str  # registry/repository:tag as asked for
    digest: str  # sha256:... of the manifest
    artifact_type: str
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str]

    @property
    def pinned(self) -> str:
        """registry/repository@digest: the reference that can never change."""
        return f"{parse_image_ref(self.reference).name}@{self.digest}"


@dataclass(frozen=True)
class PulledFiles:
    artifact: Artifact
    files: tuple[Path, ...]  # in layer order, each checked against its digest


def push(reference: str, blobs: Sequence[Blob], *, artifact_type: str,
         annotations: Mapping[str, str] | None = None, insecure: bool = False) -> Artifact:
    """Push `blobs` as one artifact tagged `reference`; returns it with the manifest digest the registry confirmed."""
    ref = _tagged(reference)
    if not blobs:
        raise ConfigError("an artifact needs at least one file", "give the files to push")
    layers = []
    with session(ref, insecure) as (registry, container):
        for blob in blobs:
            layer = describe(blob)
            log.info("uploading %s (%s, %s)", blob.path, layer.media_type, human_size(layer.size))
            upload(registry, container, ref, blob.path, layer)
            layers.append(layer)
        config = Descriptor(EMPTY_MEDIA_TYPE, _sha256_bytes(EMPTY_CONFIG), len(EMPTY_CONFIG))
        with tempfile.TemporaryDirectory(prefix="oras-config-") as work:
            empty = Path(work) / "config.json"
            empty.write_bytes(EMPTY_CONFIG)
            upload(registry, container, ref, empty, config)
        manifest = manifest_json(artifact_type, config, layers, annotations or {})
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        digest = _sha256_bytes(body)
        response = request(registry, ref, "PUT", f"{registry.prefix}://{container.manifest_url()}",
                            data=body, headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        expect(response, ref, "the manifest upload", (201,))
        confirmed = response.headers.get("Docker-Content-Digest", digest)
        if confirmed != digest:
            raise RegistryError(f"{ref.registry} stored the manifest as {confirmed}, not {digest}",
                                "the registry rewrote the manifest; push to another registry")
    return Artifact(str(ref), digest, artifact_type, tuple(layers), dict(annotations or {}))


def manifest_json(artifact_type: str, config: Descriptor, layers: Sequence[Descriptor],
                  annotations: Mapping[str, str]) -> dict:
    """An OCI 1.1 artifact manifest."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": artifact_type,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def describe(blob: Blob) -> Descriptor:
    """The layer descriptor of a file: media type, digest, size, title."""
    try:
        size = blob.path.stat().st_size
        digest = f"sha256:{_sha256_file(blob.path)}"
    except OSError as exc:
        raise ConfigError(f"cannot read {blob.path}: {exc.strerror}", "check the path") from None
    return Descriptor(blob.media_type, digest, size, {TITLE: blob.title or blob.path.name, **blob.annotations})


def inspect(reference: str, *, insecure: bool = False) -> Artifact:
    """The artifact at `reference` (tag or @digest), its manifest checked against its digest."""
    with opened(reference, insecure=insecure) as remote:
        return remote.artifact


def pull(reference: str, directory: Path, *, insecure: bool = False) -> PulledFiles:
    """Download every layer of the artifact at `reference` into `directory` (see Remote.download)."""
    with opened(reference, insecure=insecure) as remote:
        return remote.download(directory)


class Remote:
    """An artifact in a registry, its manifest fetched and checked once: look at it
    (`artifact`), then download its layers in the same registry session."""

    def __init__(self, registry: oras.provider.Registry, container: oras.container.Container, ref: ImageRef) -> None:
        self._registry, self._container, self._ref = registry, container, ref
        self.artifact = _fetch_manifest(registry, container, ref)

    def download(self, directory: Path, check: Callable[[Sequence[tuple[Descriptor, Path]]], None] | None = None
                 ) -> PulledFiles:
        """Every layer into `directory`, under its title.

        Each file is written under a temporary name, checked against its size and
        digest, then all of them by `check` (given each layer and its file, it
        raises to refuse them), and only then renamed: a failed pull leaves no
        file behind, and replaces none.
        """
        names = file_names(self.artifact)
        directory = writable_directory(directory.absolute())
        _check_space(directory, sum(layer.size for layer in self.artifact.layers), str(self._ref))
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=directory) as work:
            partials = []
            for layer, name in zip(self.artifact.layers, names, strict=True):
                log.info("downloading %s (%s, %s)", name, layer.media_type, human_size(layer.size))
                partial = Path(work) / name
                download(self._registry, self._container, self._ref, layer, partial)
                partials.append(partial)
            if check is not None:
                check(list(zip(self.artifact.layers, partials, strict=True)))
            files = []
            for partial, name in zip(partials, names, strict=True):
                os.replace(partial, directory / name)
                files.append(directory / name)
        return PulledFiles(self.artifact, tuple(files))


@contextmanager
def opened(reference: str, *, insecure: bool = False) -> Iterator[Remote]:
    """One registry session for the artifact at `reference` (tag or @digest): its manifest is
    fetched and parsed once, and its layers can be downloaded without asking again."""
    ref = parse_image_ref(reference, need_registry=True)
    with session(ref, insecure) as (registry, container):
        yield Remote(registry, container, ref)


def _tagged(reference: str) -> ImageRef:
    ref = parse_image_ref(reference, need_registry=True)
    if ref.digest:
        raise ConfigError(f"'{reference}' pins a digest", "push to a tag; the digest is printed after the push")
    return ref if ref.tag else ref.with_tag("latest")


class _Registry(oras.provider.Registry):
    """oras-py's client without its retry loop, which sleeps up to two minutes
    on any error: a registry that refuses or stops answering is reported at once."""

    do_request = oras.provider.Registry.do_request.__wrapped__


@contextmanager
def session(ref: ImageRef, insecure: bool) -> Iterator[tuple[oras.provider.Registry, oras.container.Container]]:
    """An oras-py client for the registry of `ref`, with the right scheme, TLS check and credentials."""
    loopback = is_loopback(ref.registry)
    verify = not (insecure or loopback)
    scheme = "http" if loopback else "https"
    challenge = _probe(ref.registry, scheme, verify)
    # Registries behind htpasswd answer "Basic", token servers "Bearer".
    backend = "basic" if challenge.lower().startswith("basic") else "token"
    registry = _Registry(hostname=ref.registry, insecure=loopback, tls_verify=verify, auth_backend=backend)
    container = registry.get_container(f"{ref.registry}/{ref.repository}:{ref.tag or 'latest'}")
    found = credentials.for_registry(ref.registry)
    if found:
        registry.auth.set_basic_auth(found.username, found.password)
    else:
        registry.auth.load_configs(container, configs=credentials.auth_files())
        if backend == "basic" and not getattr(registry.auth, "_basic_auth", None):
            raise registry_errors.unauthenticated(ref.registry)
    try:
        yield registry, container
    finally:
        registry.session.close()


def _probe(host: str, scheme: str, verify: bool) -> str:
    """GET /v2/ once, quickly: the registry's auth challenge, or RegistryError if it does not answer."""
    try:  # streamed and closed unread: only the status and headers matter, whatever body follows
        with requests.get(f"{scheme}://{host}/v2/", timeout=PROBE_TIMEOUT, verify=verify, stream=True) as response:
            pass
    except requests.exceptions.SSLError:
        raise registry_errors.untrusted(host) from None
    except requests.RequestException:
        raise registry_errors.unreachable(host) from None
    if response.status_code not in (200, 401):
        raise registry_errors.not_a_registry(host, response.status_code)
    return response.headers.get("Www-Authenticate", "")


def request(registry: oras.provider.Registry, ref: ImageRef, method: str, url: str, **kwargs) -> requests.Response:
    try:
        return registry.do_request(url, method, **kwargs)
    except requests.RequestException as exc:
        raise registry_errors.stopped(ref.registry, f"({type(exc).__name__})") from None
    except ValueError:  # oras-py: authentication was asked for and could not be given
        raise registry_errors.refused(ref.registry) from None


def expect(response: requests.Response, ref: ImageRef, what: str, statuses: tuple[int, ...]) -> None:
    if response.status_code in statuses:
        return
    raise registry_errors.from_status(response.status_code, registry=ref.registry, name=str(ref), doing=what,
                                      message=_registry_message(response))


def _registry_message(response: requests.Response) -> str:
    """The registry's own words for an error, from at most the first 64 kB of its answer."""
    try:
        body = next(response.iter_content(chunk_size=1 << 16), b"")
        errors = json.loads(body).get("errors") or []
        said = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:200]
        return re.sub(r"[\x00-\x1f\x7f]+", " ", said)  # one line, whatever the registry wrote
    except (ValueError, AttributeError, TypeError, RecursionError, requests.RequestException):
        return response.reason or ""


def upload(registry: oras.provider.Registry, container: oras.container.Container, ref: ImageRef, path: Path,
            layer: Descriptor) -> None:
    try:
        # Skips blobs the registry already has (a HEAD first), then POST, PATCHes and PUT.
        response = registry.upload_blob(str(path), container, layer.to_json(), do_chunked=True, chunk_size=CHUNK_SIZE)
    except requests.RequestException as exc:
        raise registry_errors.stopped(ref.registry, f"({type(exc).__name__})") from None
    except ValueError as exc:
        if "authentication" in str(exc).lower():
            raise registry_errors.refused(ref.registry) from None
        raise RegistryError(f"uploading {path.name} to {ref.registry} failed: {str(exc)[:200]}",
                            "check the registry's log") from None
    expect(response, ref, f"uploading {path.name}", (200, 201, 202))


def _fetch_manifest(registry: oras.provider.Registry, container: oras.container.Container, ref: ImageRef) -> Artifact:
    url = f"{registry.prefix}://{container.manifest_url(ref.digest or ref.tag or 'latest')}"
    response = request(registry, ref, "GET", url, headers={"Accept": MANIFEST_MEDIA_TYPE}, stream=True)
    with response:
        expect(response, ref, "reading the manifest", (200,))
        body = _read_bounded(response, ref, MAX_MANIFEST_BYTES, "the manifest")
    digest = _sha256_bytes(body)
    for claimed, source in ((ref.digest, "the reference"), (response.headers.get("Docker-Content-Digest"), "the registry")):
        if claimed and claimed != digest:
            raise registry_errors.corrupt(f"the manifest of {ref}", f"its digest is {digest}, but {source} says {claimed}")
    artifact_type, layers, annotations = parse_manifest(body, f"the manifest of {ref}")
    return Artifact(str(ref), digest, artifact_type, layers, annotations)


def parse_manifest(body: bytes, where: str) -> tuple[str, tuple[Descriptor, ...], dict[str, str]]:
    """The artifact type, layers and annotations of an OCI manifest, its shape checked;
    IntegrityError (or RegistryError for another kind of manifest) naming `where` otherwise."""
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise registry_errors.malformed(where, "it is not JSON") from None
    if not isinstance(manifest, dict):
        raise registry_errors.malformed(where, "it is not a JSON object")
    media_type = manifest.get("mediaType", MANIFEST_MEDIA_TYPE)
    if media_type != MANIFEST_MEDIA_TYPE:
        shown = media_type[:100] if isinstance(media_type, str) else "manifest of no known type"
        raise RegistryError(f"{where.removeprefix('the manifest of ')} is a {shown}, not an OCI manifest",
                            "pull it with skopeo instead")
    if manifest.get("schemaVersion") != 2:
        raise registry_errors.malformed(where, "its schemaVersion is not 2")
    config = Descriptor.from_json(manifest.get("config"), "its config", where)
    artifact_type = manifest.get("artifactType", config.media_type)
    if not isinstance(artifact_type, str):
        raise registry_errors.malformed(where, "its artifactType is not text")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise registry_errors.malformed(where, "it has no list of layers")
    if len(layers) > MAX_LAYERS:
        raise registry_errors.malformed(where, f"it lists {len(layers)} layers, more than {MAX_LAYERS}")
    annotations = manifest.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in annotations.items()):
        raise registry_errors.malformed(where, "its annotations are not text")
    return (artifact_type or config.media_type,
            tuple(Descriptor.from_json(layer, f"layer {n}", where) for n, layer in enumerate(layers, 1)),
            dict(annotations))


def file_names(artifact: Artifact) -> list[str]:
    """The file name of each layer (its title), each a plain name used once; IntegrityError otherwise."""
    names = [_safe_name(layer, artifact) for layer in artifact.layers]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise registry_errors.malformed(f"the artifact {artifact.reference}", f"two layers are titled {name!r}")
        seen.add(name)
    return names


def _read_bounded(response: requests.Response, ref: ImageRef, limit: int, what: str) -> bytes:
    """The body of `response`, refused past `limit` bytes while it streams."""
    body = bytearray()
    try:
        for chunk in response.iter_content(chunk_size=1 << 16):
            body += chunk
            if len(body) > limit:
                raise registry_errors.malformed(f"{what} of {ref}", f"it is larger than {human_size(limit)}")
    except requests.RequestException as exc:
        raise registry_errors.stopped(ref.registry, f"while sending {what} ({type(exc).__name__})") from None
    return bytes(body)


def _check_space(directory: Path, needed: int, reference: str) -> None:
    """Refuse before downloading what the disk under `directory` cannot hold."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if needed > free:
        raise DiskFull(f"{reference} needs {human_size(needed)}, more than the {human_size(free)} free under {directory}",
                       "free space or choose another directory")


def download(registry: oras.provider.Registry, container: oras.container.Container, ref: ImageRef,
              layer: Descriptor, destination: Path) -> None:
    """Stream one blob to `destination`, checking its size and digest."""
    hasher = hashlib.sha256()
    size = 0
    url = f"{registry.prefix}://{container.get_blob_url(layer.digest)}"
    response = request(registry, ref, "GET", url, stream=True)
    with response:
        expect(response, ref, f"downloading {layer.title or layer.digest}", (200,))
        with open(destination, "wb") as out:
            try:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    size += len(chunk)
                    if size > layer.size:  # refused as it streams: a registry cannot fill the disk past the manifest
                        raise registry_errors.corrupt(f"{layer.title or 'a layer'} of {ref}",
                                                      f"the registry sent more than its {layer.size} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
            except requests.RequestException as exc:  # the connection broke mid-transfer
                raise registry_errors.stopped(ref.registry, f"while sending {layer.title or layer.digest} "
                                              f"({type(exc).__name__} after {size} of {layer.size} bytes)") from None
    digest = f"sha256:{hasher.hexdigest()}"
    if digest != layer.digest or size != layer.size:
        raise registry_errors.corrupt(f"{layer.title or 'a layer'} of {ref}",
                                      f"it came back as {digest} ({size} bytes), not {layer.digest} ({layer.size} bytes)")


def _safe_name(layer: Descriptor, artifact: Artifact | None = None) -> str:
    """The layer's title as a plain file name; a title with a path in it, a hidden name or a control character is refused."""
    name = layer.title
    if (not name or name.startswith(".") or len(name) > 255 or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        where = f"the artifact {artifact.reference}" if artifact else "the artifact"
        raise registry_errors.malformed(where, f"a layer has an unusable file name {name[:80]!r}")
    return name


def _sha256_bytes(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
