"""The order of a push, so that no tag ever names an unsigned or half-attached image.

1. The image leaves the engine once, into a private OCI layout (skopeo),
   where its manifest gets the annotations that change with every commit
   (org.opencontainers.image.revision and .created, from the commit date),
   besides the image's OCI labels: the image ID stays what the build made.
2. For each repository, the manifest is pushed by digest, under no tag
   (skopeo; only the blobs the registry lacks are sent).
3. With a signing key: cosign signs that digest (tag sha256-<hex>.sig), the
   SBOM and the provenance statement are attached as referrers (ci.tools.referrers)
   and each of them is signed too.
4. Only then are the tags written, the input identity (id-) first and
   latest last, each pointing at the digest of step 2.

A failure in 2 or 3 stops the push before any tag moves: a consumer who
follows a tag sees the previous image, fully signed, or the new one, fully
signed. What steps 2 and 3 left (a manifest without tag, a signature) is
inert and is reused by the next push. When a repository already holds the
image's identity tag, steps 2 and 3 are skipped for it (only what is
missing is signed or attached) and only tags are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import labels
from .core.errors import ConfigError, naming_full_disk
from .core.refs import Destination
from .project import IDENTITY_PREFIX
from .tools import docker, skopeo

# Signing, attaching and the documents are imported where they are used: an unsigned push
# needs none of them (ci.tools.referrers loads oras-py and jsonschema, half a second of CPU).
if TYPE_CHECKING:
    from . import provenance

log = logging.getLogger(__name__)

SBOM_ARTIFACT = "application/vnd.cyclonedx+json"  # ci.sbom.MEDIA_TYPE
PROVENANCE_ARTIFACT = "application/vnd.in-toto+json"  # ci.provenance.MEDIA_TYPE
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"


@dataclass(frozen=True)
class Options:
    """What a push adds to the image."""

    origin: labels.Origin  # source, revision and created of the commit pushed
    key: Path | None = None  # the cosign private key: sign, attach and sign the SBOM and provenance
    inputs: provenance.Inputs | None = None  # for the provenance statement


@dataclass(frozen=True)
class Staged:
    layout: Path
    digest: str  # of the annotated manifest
    labels: dict[str, str]  # the image's OCI labels

    @property
    def source(self) -> str:
        return f"oci:{self.layout}:image"


@contextlib.contextmanager
def staged(image: str, origin: labels.Origin, progress) -> Iterator[Staged]:
    """The local `image` as an OCI layout whose manifest carries the annotations; removed afterwards.

    skopeo's own conversion to OCI would rewrite the image config (so the image ID a pull gives
    would not be the one built): the image is copied as it is (`dir:`, layers gzipped), and the
    OCI manifest is written here around the same config and layer blobs.
    """
    local = docker.require_image(image, f"build it first: invoke build-{image.rpartition(':')[0]}")
    oci_labels = {k: v for k, v in local.labels.items() if k.startswith(labels.PREFIX) and v}
    work_root = Path(tempfile.gettempdir())
    with naming_full_disk(work_root), tempfile.TemporaryDirectory(prefix="nix-ci-push-") as work:
        layout = Path(work) / "layout"
        skopeo.copy(f"docker-daemon:{image}", f"dir:{layout}", on_line=progress, options=("--dest-compress",))
        digest = _as_oci_layout(layout, {**oci_labels, **origin.annotations()})
        yield Staged(layout, digest, oci_labels)


_OCI_LAYER = {"application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar"}


def _as_oci_layout(directory: Path, annotations: dict[str, str]) -> str:
    """Turn skopeo's `dir:` copy into an OCI layout holding an OCI manifest with `annotations`, around the
    same config and layer blobs (so the same image ID); returns the manifest digest."""
    source = json.loads((directory / "manifest.json").read_text())
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for descriptor in [source["config"], *source["layers"]]:
        hex_digest = descriptor["digest"].removeprefix("sha256:")
        (directory / hex_digest).replace(blobs / hex_digest)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {**_plain(source["config"]), "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [{**_plain(layer), "mediaType": _OCI_LAYER.get(layer["mediaType"], layer["mediaType"])}
                   for layer in source["layers"]],
        "annotations": annotations,
    }
    body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    hex_digest = hashlib.sha256(body).hexdigest()
    (blobs / hex_digest).write_bytes(body)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": manifest["mediaType"], "digest": f"sha256:{hex_digest}", "size": len(body),
        "annotations": {"org.opencontainers.image.ref.name": "image"}}]}))
    return f"sha256:{hex_digest}"


def _plain(descriptor: dict) -> dict:
    return {key: descriptor[key] for key in ("digest", "size") if key in descriptor}


def holding(destination: Destination, identity: str | None, insecure: bool) -> str | None:
    """The digest the destination's repository has under the image's identity tag, if any."""
    if identity is None:
        return None
    name = f"docker://{destination.image.name}:{identity}"
    return skopeo.inspect(name, insecure=insecure).digest if skopeo.exists(name, insecure=insecure) else None


def layer_sizes(repository: str, digest: str, insecure: bool) -> dict[str, int]:
    """Compressed size of each layer of `repository@digest`, by digest."""
    name = f"docker://{repository}@{digest}"
    sizes = skopeo.blob_sizes(name, insecure=insecure)
    return {layer: sizes.get(layer, 0) for layer in skopeo.inspect(name, insecure=insecure).layers}


def push_repository(stage: Staged | None, repository: str, destinations: list[Destination], options: Options, *,
                    existing: str | None, identity: str | None, insecure: bool,
                    progress) -> tuple[str, skopeo.CopyResult | None]:
    """Steps 2 to 4 for one repository; returns the digest its tags now name, and the copy that sent blobs.
    `existing`: the digest the repository holds under the image's `identity` tag, if any."""
    copied = None
    if existing is not None:
        log.info("%s already holds this image (%s): only the tag is written", repository, identity)
        digest = existing
    else:
        if stage is None:
            raise AssertionError("a repository without the image needs it staged")
        log.info("copying %s to %s by digest", stage.digest[7:19], repository)
        copied = skopeo.copy(stage.source, f"docker://{repository}@{stage.digest}", insecure=insecure, on_line=progress)
        digest = stage.digest
    if options.key is not None and not (existing is not None and _signed(destinations[0], digest, insecure)):
        sign_and_attach(repository, digest, options, labels_=stage.labels if stage else {}, insecure=insecure)
    for destination in destinations:  # identity first, latest last
        if existing is not None and destination.image.tag == identity:
            continue
        skopeo.copy(f"docker://{repository}@{digest}", destination.skopeo_name(), insecure=insecure, on_line=progress)
    return digest, copied


def _signed(destination: Destination, digest: str, insecure: bool) -> bool:
    """Whether the repository has a signature tag for `digest` (an earlier push signed it)."""
    return skopeo.exists(f"docker://{destination.image.name}:{digest.replace(':', '-')}.sig", insecure=insecure)


def sign_and_attach(repository: str, digest: str, options: Options, *, labels_: dict[str, str], insecure: bool) -> None:
    """Sign `repository@digest`; attach its SBOM and provenance and sign them; skip what is already there and valid."""
    from . import provenance
    from .tools import cosign, referrers

    assert options.key is not None
    pinned = f"{repository}@{digest}"
    cosign.check_private_key(options.key)
    subject = referrers.manifest(pinned, insecure=insecure)
    cosign.sign(pinned, options.key, insecure=insecure)
    present = {r.artifact_type for r in referrers.referrers(repository, digest, insecure=insecure)}
    with tempfile.TemporaryDirectory(prefix="nix-ci-attach-") as work:
        documents = []
        if SBOM_ARTIFACT not in present:
            document = _sbom(options, repository, digest, labels_)
            if document is not None:
                documents.append((SBOM_ARTIFACT, "sbom.cdx.json", document, {}))
        if PROVENANCE_ARTIFACT not in present and options.inputs is not None:
            statement = provenance.statement(options.inputs, repository=repository, digest=digest)
            documents.append((PROVENANCE_ARTIFACT, "provenance.intoto.json", json.dumps(statement, indent=2, sort_keys=True),
                              {PREDICATE_ANNOTATION: provenance.PREDICATE_TYPE}))
        for artifact_type, name, text, annotations in documents:
            path = Path(work) / name
            path.write_text(text)
            attached = referrers.attach(repository, subject, path, media_type=artifact_type, artifact_type=artifact_type,
                                     annotations=annotations, insecure=insecure)
            cosign.sign(f"{repository}@{attached.digest}", options.key, insecure=insecure)
            log.info("attached and signed the %s %s", "SBOM" if artifact_type == SBOM_ARTIFACT else "provenance",
                     attached.digest[7:19])


def _sbom(options: Options, repository: str, digest: str, labels_: dict[str, str]) -> str | None:
    from . import sbom

    image = options.inputs.image if options.inputs else ""
    local = docker.inspect_image(image) if image else None
    record = sbom.load(local.id) if local is not None else None
    if record is None:
        log.warning("warning: no Nix closure is recorded for %s on this machine (nix-base, nix-cache, or built "
                    "elsewhere): it is pushed without an SBOM", image)
        return None
    document = sbom.cyclonedx(record, image_name=repository, image_digest=digest, labels=labels_)
    sbom.validate(document)
    return document


def identity_of(tags: list[str]) -> str | None:
    return next((t for t in tags if t.startswith(IDENTITY_PREFIX)), None)


def check_signable(destinations: list[Destination], options: Options) -> None:
    if options.key is not None and not any(d.transport == "docker" for d in destinations):
        raise ConfigError("signatures are stored in registries; an OCI layout cannot carry them",
                          "push to docker://REGISTRY/NAME to sign, or push without --sign-key")


def options_for(root: Path, image: str, *, key: Path | None, label_settings: labels.Settings, package_set: str,
                package_set_id: str) -> Options:
    """What a push of the local `image` adds: the commit's annotations, and with `key` signatures, SBOM, provenance."""
    origin = labels.origin(root, label_settings.source)
    if key is None:
        return Options(origin)
    from . import provenance, sbom
    from .tools import cosign

    cosign.unlock(key)  # a wrong passphrase stops the push before anything is sent
    local = docker.require_image(image, f"build it first: invoke build-{image.rpartition(':')[0]}")
    name = image.rpartition(":")[0]
    identity = identity_of([t.rpartition(":")[2] for t in local.tags if t.rpartition(":")[0] == name]) or ""
    record = sbom.load(local.id)
    inputs = provenance.Inputs(image=image, identity=identity, source=origin.source, revision=origin.revision,
                               package_set=package_set, package_set_id=f"pkgs-{package_set_id}",
                               pin=provenance.read_pin(root, package_set), builder=record.builder if record else {})
    return Options(origin, key, inputs)
