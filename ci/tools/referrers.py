"""Artifacts attached to an image: OCI 1.1 referrers, and the fallback tag.

An attached artifact (an SBOM, a provenance statement) is an OCI artifact
manifest whose `subject` is the image's manifest descriptor. It is pushed by
digest, under no tag of its own. A registry with the referrers API (OCI
distribution-spec 1.1) indexes it itself and says so with an `OCI-Subject`
header; for one without (distribution 2.8, used here), the referrers tag
schema applies: the tag `sha256-<hex of the subject digest>` holds an image
index listing the referrers, which is read, extended and written back.

Reading goes the same two ways: GET /v2/<name>/referrers/<digest>, else the
fallback tag. Every manifest read is checked against its digest, and an
attached artifact whose subject is not the image asked about is refused: a
referrer cannot be moved from one image to another.

The registry conversation (HTTP, authentication, TLS, errors) is ci.oras's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import IntegrityError, RegistryError
from ..core.refs import ImageRef, parse_image_ref
from . import oras

log = logging.getLogger(__name__)

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MEDIA_TYPES = (oras.MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPE, DOCKER_MANIFEST, DOCKER_LIST)


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry serves it: its bytes, checked against its digest."""

    media_type: str
    digest: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)

    def json(self) -> dict:
        return json.loads(self.body)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Referrer:
    """One entry of an image's referrers: an artifact manifest that names the image as its subject."""

    digest: str
    size: int
    artifact_type: str
    annotations: Mapping[str, str] = field(default_factory=dict)


def manifest(reference: str, *, insecure: bool = False) -> Manifest:
    """The manifest `reference` (tag or digest) names now, of any image or artifact media type."""
    ref = parse_image_ref(reference, need_registry=True)
    found = _get_manifest(ref, ref.digest or ref.tag or "latest", insecure)
    if found is None:
        raise RegistryError(f"{reference} does not exist", "check the name and tag, or push it first")
    return found


def attach(repository: str, subject: Manifest, path: Path, *, media_type: str, artifact_type: str,
           annotations: Mapping[str, str] | None = None, insecure: bool = False) -> Manifest:
    """Push `path` as an artifact whose subject is `subject`, by digest, and index it as a referrer."""
    ref = parse_image_ref(f"{repository}@{subject.digest}", need_registry=True)
    with oras.session(ref, insecure) as (registry, container):
        layer = oras.describe(oras.Blob(path, media_type))
        oras.upload(registry, container, ref, path, layer)
        config = oras.Descriptor(oras.EMPTY_MEDIA_TYPE, _digest(oras.EMPTY_CONFIG), len(oras.EMPTY_CONFIG))
        with tempfile.TemporaryDirectory(prefix="nix-ci-attach-") as work:
            empty = Path(work) / "config.json"
            empty.write_bytes(oras.EMPTY_CONFIG)
            oras.upload(registry, container, ref, empty, config)
        body_json = oras.manifest_json(artifact_type, config, [layer], annotations or {})
        body_json["subject"] = subject.descriptor()
        body = json.dumps(body_json, separators=(",", ":"), sort_keys=True).encode()
        artifact = Manifest(oras.MANIFEST_MEDIA_TYPE, _digest(body), body)
        response = oras.request(registry, ref, "PUT", f"{registry.prefix}://{container.manifest_url(artifact.digest)}",
                                 data=body, headers={"Content-Type": oras.MANIFEST_MEDIA_TYPE})
        oras.expect(response, ref, f"the {artifact_type} manifest upload", (201,))
        if response.headers.get("OCI-Subject") == subject.digest:
            log.info("%s indexes referrers itself (OCI-Subject)", ref.registry)
            return artifact
        entry = Referrer(artifact.digest, artifact.size, artifact_type, dict(annotations or {}))
        _add_to_fallback(registry, container, ref, subject.digest, entry)
    return artifact


def referrers(repository: str, subject_digest: str, *, artifact_type: str | None = None,
              insecure: bool = False) -> list[Referrer]:
    """The artifacts attached to `subject_digest`: the referrers API's answer, else the fallback tag's index."""
    ref = parse_image_ref(f"{repository}@{subject_digest}", need_registry=True)
    with oras.session(ref, insecure) as (registry, container):
        url = f"{registry.prefix}://{ref.registry}/v2/{ref.repository}/referrers/{subject_digest}"
        response = oras.request(registry, ref, "GET", url, headers={"Accept": INDEX_MEDIA_TYPE})
        if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(INDEX_MEDIA_TYPE):
            index = response.json()
        else:
            found = _get_manifest(ref, fallback_tag(subject_digest), insecure, (registry, container))
            index = found.json() if found is not None else {"manifests": []}
    listed = [Referrer(m["digest"], int(m["size"]), m.get("artifactType", ""), dict(m.get("annotations") or {}))
              for m in index.get("manifests") or []]
    return [r for r in listed if artifact_type is None or r.artifact_type == artifact_type]


def fetch(repository: str, subject_digest: str, referrer: Referrer, *, insecure: bool = False) -> tuple[Manifest, bytes]:
    """An attached artifact's manifest and its one file, both checked against their digests, and its
    subject checked to be `subject_digest`."""
    ref = parse_image_ref(f"{repository}@{referrer.digest}", need_registry=True)
    with oras.session(ref, insecure) as (registry, container):
        found = _get_manifest(ref, referrer.digest, insecure, (registry, container))
        if found is None:
            raise IntegrityError(f"the {referrer.artifact_type} {referrer.digest} attached to {repository}@{subject_digest} "
                                 "is missing", "attach it again (push the image again)")
        data = found.json()
        subject = (data.get("subject") or {}).get("digest")
        if subject != subject_digest:
            raise IntegrityError(f"the {referrer.artifact_type} listed for {repository}@{subject_digest} belongs to "
                                 f"{subject or 'no image'}", "it was moved from another image; do not use it")
        layers = data.get("layers") or []
        if len(layers) != 1:
            raise IntegrityError(f"the {referrer.artifact_type} {referrer.digest} has {len(layers)} files, not one",
                                 "it was not attached by this toolkit")
        layer = oras.Descriptor.from_json(layers[0])
        with tempfile.TemporaryDirectory(prefix="nix-ci-attached-") as work:
            target = Path(work) / "blob"
            oras.download(registry, container, ref, layer, target)  # checks size and digest
            return found, target.read_bytes()


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for `digest`: sha256:abc... becomes sha256-abc..."""
    return digest.replace(":", "-")


def _add_to_fallback(registry, container, ref: ImageRef, subject_digest: str, entry: Referrer) -> None:
    """Read the fallback index (none yet: an empty one), add `entry` (replacing one of the same digest), write it back."""
    tag = fallback_tag(subject_digest)
    found = _get_manifest(ref, tag, False, (registry, container))
    index = found.json() if found is not None else {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    listed = [m for m in index.get("manifests") or [] if m.get("digest") != entry.digest]
    descriptor: dict = {"mediaType": oras.MANIFEST_MEDIA_TYPE, "digest": entry.digest, "size": entry.size,
                        "artifactType": entry.artifact_type}
    if entry.annotations:
        descriptor["annotations"] = dict(entry.annotations)
    index["manifests"] = [*listed, descriptor]
    body = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    response = oras.request(registry, ref, "PUT", f"{registry.prefix}://{container.manifest_url(tag)}",
                             data=body, headers={"Content-Type": INDEX_MEDIA_TYPE})
    oras.expect(response, ref, "the referrers index (fallback tag) upload", (201,))


def _get_manifest(ref: ImageRef, reference: str, insecure: bool, client=None) -> Manifest | None:
    """GET a manifest by tag or digest; None when the registry has none; its digest checked."""
    def get(registry, container) -> Manifest | None:
        url = f"{registry.prefix}://{container.manifest_url(reference)}"
        response = oras.request(registry, ref, "GET", url, headers={"Accept": ", ".join(IMAGE_MEDIA_TYPES)})
        if response.status_code == 404:
            return None
        oras.expect(response, ref, "reading a manifest", (200,))
        digest = _digest(response.content)
        claimed = reference if reference.startswith("sha256:") else response.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise IntegrityError(f"the manifest {ref.name}@{reference} has digest {digest}, not {claimed}",
                                 "the registry served other content than asked for; do not use it")
        media_type = response.json().get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
        return Manifest(media_type, digest, response.content)

    if client is not None:
        return get(*client)
    with oras.session(ref, insecure) as (registry, container):
        return get(registry, container)


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
