"""The consuming side: check an image's signature, SBOM and provenance before using it.

`check` resolves a reference to the manifest digest it names now, verifies
the signature on that digest with the public key (cosign), then finds the
SBOM and provenance attached to that digest, checks that each names that
digest as its subject and is signed by the same key, and reads them. What
was verified is what a caller then pulls: the pinned NAME@sha256:...
reference, never the tag again.

`require` is what the toolkit's own pulls call when a public key is
configured (cosign.public_key): the cache image of --cache-from, a
substituter, a bundle. Unsigned, signed by another key, or tampered: one
line, and nothing is pulled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance, sbom
from .core.errors import IntegrityError
from .core.refs import parse_image_ref
from .tools import cosign, referrers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attached:
    """An attached document whose signature and subject were checked."""

    kind: str  # "sbom" or "provenance"
    digest: str
    content: bytes


@dataclass(frozen=True)
class Report:
    image: cosign.Verified
    attached: list[Attached] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"verified {self.image.pinned}: signed by {self.image.key} ({self.image.fingerprint})"]
        for document in self.attached:
            if document.kind == "sbom":
                paths = sbom.store_paths(document.content.decode())
                lines.append(f"sbom: {document.digest} signed, CycloneDX, {len(paths)} store paths")
            else:
                summary = provenance.summary(json.loads(document.content))
                lines.append(f"provenance: {document.digest} signed, {summary[0].removeprefix('provenance: ')}")
                lines += summary[1:]
        return lines


def pin(reference: str, *, insecure: bool = False) -> str:
    """NAME@sha256:... for what `reference` names now."""
    ref = parse_image_ref(reference, need_registry=True)
    return f"{ref.name}@{referrers.manifest(reference, insecure=insecure).digest}"


def require(reference: str, public_key: Path, *, insecure: bool = False) -> str:
    """The pinned reference of `reference`, once its signature by `public_key` is verified; SignatureRefused if not."""
    pinned = pin(reference, insecure=insecure)
    verified = cosign.verify(pinned, public_key, insecure=insecure)
    log.info("%s is signed by %s (%s)", pinned, public_key, verified.fingerprint[:19])
    return pinned


def check(reference: str, public_key: Path, *, insecure: bool = False, attached: bool = True) -> Report:
    """Verify `reference`'s signature, then its attached SBOM and provenance (when `attached`)."""
    cosign.read_public_key(public_key)  # a bad key is the user's mistake, said before any request
    pinned = pin(reference, insecure=insecure)
    verified = cosign.verify(pinned, public_key, insecure=insecure)
    if not attached:
        return Report(verified)
    return Report(verified, _attached(verified.repository, verified.digest, public_key, insecure))


def _attached(repository: str, digest: str, public_key: Path, insecure: bool) -> list[Attached]:
    found = []
    kinds = {sbom.MEDIA_TYPE: "sbom", provenance.MEDIA_TYPE: "provenance"}
    for referrer in referrers.referrers(repository, digest, insecure=insecure):
        kind = kinds.get(referrer.artifact_type)
        if kind is None:
            continue
        try:
            cosign.verify(f"{repository}@{referrer.digest}", public_key, insecure=insecure)
        except cosign.SignatureRefused as exc:
            raise cosign.SignatureRefused(f"the {kind} attached to {repository}@{digest} ({referrer.digest}) is not "
                                           f"signed by {public_key}", "it was altered or attached by someone else; "
                                           "do not trust it") from exc
        _manifest, content = referrers.fetch(repository, digest, referrer, insecure=insecure)
        found.append(Attached(kind, referrer.digest, content))
    return found


def sbom_document(reference: str, public_key: Path | None, *, insecure: bool = False) -> tuple[str, str]:
    """The SBOM attached to what `reference` names: (pinned reference, the document). With `public_key`, the image's
    and the SBOM's signatures are verified first."""
    pinned = pin(reference, insecure=insecure)
    ref = parse_image_ref(pinned)
    if public_key is not None:
        cosign.verify(pinned, public_key, insecure=insecure)
    for referrer in referrers.referrers(ref.name, str(ref.digest), artifact_type=sbom.MEDIA_TYPE, insecure=insecure):
        if public_key is not None:
            cosign.verify(f"{ref.name}@{referrer.digest}", public_key, insecure=insecure)
        _manifest, content = referrers.fetch(ref.name, str(ref.digest), referrer, insecure=insecure)
        return pinned, content.decode()
    raise IntegrityError(f"{pinned} has no SBOM attached",
                         "push it with a signing key (push --sign-key) to attach one; only images built here have one")
