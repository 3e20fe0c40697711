"""The SBOM of an image, from the Nix closure it was built from.

Each build-web runs in a fresh container of the cache image, whose store
goes with it. So the build records what Nix knows while it still can: in
the container, once the images file's script is built, `nix path-info
--json --recursive` of the script (every path with its NAR hash, size,
references and deriver) and the script's conf.json, whose `store_layers`
name exactly the store paths the image holds (nixpkgs' streamLayeredImage;
the tests' stand-in writes the same). The toolkit copies both out before
the container goes, and keeps them beside the image's ID
($XDG_CACHE_HOME/nix-ci/closures), without touching the image.

`cyclonedx` turns a record into a CycloneDX 1.6 JSON document with
cyclonedx-python-lib: one component per store path of the image (name and
version as Nix splits them, the NAR hash as its SHA-256 hash, the store
path, NAR size and deriver as properties, license and homepage where the
record has the package's meta), and the references between them as the
dependency graph. The image itself is the document's subject.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .core.errors import ConfigError, IntegrityError, ToolkitError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.cyclonedx+json"
RECORD_DIRECTORY = "/.nix-ci-record"

# Run in the build container after the RUN steps, before the script writes the image. A
# failure here never fails the build: the image simply has no SBOM (push says so).
RECORD_SCRIPT = (
    f"mkdir -p {RECORD_DIRECTORY} && "
    f"nix --extra-experimental-features nix-command path-info --json --recursive /result > {RECORD_DIRECTORY}/path-info.json && "
    "for p in $(nix-store --query --references /result); do "
    f"case \"$p\" in *-conf.json) cp \"$p\" {RECORD_DIRECTORY}/conf.json;; esac; done "
    "|| echo 'warning: could not record the Nix closure of the image; it will have no SBOM' >&2"
)


@dataclass(frozen=True)
class StorePath:
    path: str
    nar_hash: str  # hex sha256 of the NAR
    nar_size: int
    references: tuple[str, ...]
    deriver: str

    @property
    def name(self) -> str:
        return split_name(self.path)[0]

    @property
    def version(self) -> str:
        return split_name(self.path)[1]


@dataclass(frozen=True)
class Record:
    """What Nix said about an image's store paths when it built them."""

    image_id: str
    paths: tuple[StorePath, ...]  # exactly the image's store paths, sorted
    builder: Mapping[str, object] = field(default_factory=dict)  # the image the build ran in: id, repo_digests

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "builder": dict(self.builder),
                "paths": [{"path": p.path, "narHash": p.nar_hash, "narSize": p.nar_size,
                           "references": list(p.references), "deriver": p.deriver} for p in self.paths]}

    @classmethod
    def from_json(cls, data: Mapping) -> Record:
        return cls(data["image_id"], tuple(StorePath(p["path"], p["narHash"], int(p["narSize"]), tuple(p["references"]),
                                                     p.get("deriver") or "") for p in data["paths"]),
                   dict(data.get("builder") or {}))


def record_from_container(image_id: str, archive: Iterable[bytes], builder: Mapping[str, object]) -> Record | None:
    """The record from the tar stream of RECORD_DIRECTORY copied out of the build container; None, with a
    warning, when the build could not write it (an images file not made with streamLayeredImage)."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive))) as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[Path(member.name).name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if "path-info.json" not in files or "conf.json" not in files:
        log.warning("warning: the build recorded no %s of the image's script: it will have no SBOM",
                    "conf.json (store_layers)" if "path-info.json" in files else "Nix closure")
        return None
    return replace(parse_record(image_id, files["path-info.json"], files["conf.json"]), builder=dict(builder))


def parse_record(image_id: str, path_info: bytes, conf: bytes) -> Record:
    """The image's store paths (conf.json's store_layers) with what `nix path-info --json` said of each."""
    info = _path_info(json.loads(path_info))
    in_image = sorted({path for layer in json.loads(conf).get("store_layers") or [] for path in layer})
    missing = [p for p in in_image if p not in info]
    if missing:
        raise IntegrityError(f"Nix reported no closure information for {missing[0]} of the image",
                             "rebuild the image (invoke build-web)")
    return Record(image_id, tuple(info[p] for p in in_image))


def _path_info(data: object) -> dict[str, StorePath]:
    """`nix path-info --json`: a list of objects with `path` (Nix < 2.19) or an object keyed by path."""
    entries = data.items() if isinstance(data, dict) else ((e["path"], e) for e in data)  # type: ignore[union-attr]
    found = {}
    for path, entry in entries:
        if entry is None:
            continue
        references = tuple(sorted(r if r.startswith("/") else f"{_store(path)}/{r}" for r in entry.get("references") or []))
        found[path] = StorePath(path, nar_hash_hex(entry["narHash"]), int(entry.get("narSize", 0)), references,
                                entry.get("deriver") or "")
    return found


def _store(path: str) -> str:
    return path.rsplit("/", 1)[0]


# --- where records are kept -------------------------------------------------------------


def record_directory() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nix-ci" / "closures"


def save(record: Record) -> None:
    directory = record_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".{record.image_id[7:]}.json.partial"
        partial.write_text(json.dumps(record.to_json(), sort_keys=True))
        os.replace(partial, directory / f"{record.image_id[7:]}.json")
    except OSError as exc:
        log.warning("warning: cannot keep the Nix closure of %s under %s (%s): it will have no SBOM",
                    record.image_id[7:19], directory, exc.strerror)


def load(image_id: str) -> Record | None:
    """The record of a local image built on this machine; None when there is none."""
    try:
        return Record.from_json(json.loads((record_directory() / f"{image_id.removeprefix('sha256:')}.json").read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise ToolkitError(f"the recorded closure of {image_id[7:19]} cannot be read ({exc})",
                           f"remove it from {record_directory()} and rebuild the image") from None


# --- names and hashes, as Nix writes them -------------------------------------------------


def split_name(path: str) -> tuple[str, str]:
    """A store path's name and version, split as Nix splits a derivation name: the version starts
    after the first dash that is followed by something other than a letter (hello-2.12 gives hello, 2.12)."""
    name = path.rsplit("/", 1)[-1].split("-", 1)[-1]
    for i, char in enumerate(name):
        if char == "-" and i + 1 < len(name) and not name[i + 1].isalpha():
            return name[:i], name[i + 1:]
    return name, ""


_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def nar_hash_hex(text: str) -> str:
    """A NAR hash as hex: from SRI (sha256-BASE64, Nix 2.19 and later) or sha256:NIX-BASE32 (older)."""
    if text.startswith("sha256-"):
        return base64.b64decode(text[len("sha256-"):]).hex()
    if text.startswith("sha256:") and len(text) == 7 + 52:
        return _nix32_decode(text[7:]).hex()
    if re.fullmatch(r"sha256:[0-9a-f]{64}", text):
        return text[7:]
    raise ToolkitError(f"unknown NAR hash format {text[:20]!r}", "report this: the toolkit reads SRI and Nix base-32 hashes")


def _nix32_decode(text: str) -> bytes:
    """Nix's base-32 (its own alphabet, least significant digit last) to bytes."""
    size = len(text) * 5 // 8
    out = bytearray(size)
    for n, char in enumerate(reversed(text)):
        digit = _NIX32.index(char)
        bit = n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        if i + 1 < size:
            out[i + 1] |= digit >> (8 - j)
    return bytes(out)


# --- CycloneDX ----------------------------------------------------------------------------


def cyclonedx(record: Record, *, image_name: str, image_digest: str, labels: Mapping[str, str]) -> str:
    """The CycloneDX 1.6 JSON SBOM of the image whose store paths `record` lists."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    root = Component(type=ComponentType.CONTAINER, name=image_name, version=image_digest, bom_ref=image_digest,
                     description=labels.get("org.opencontainers.image.description") or None)
    if labels.get("org.opencontainers.image.source"):
        root.external_references.add(ExternalReference(type=ExternalReferenceType.VCS,
                                                       url=XsUri(labels["org.opencontainers.image.source"])))
    bom = Bom()
    bom.metadata.component = root
    components = {}
    for path in record.paths:
        component = Component(type=ComponentType.LIBRARY, name=path.name, version=path.version or None, bom_ref=path.path,
                              hashes=[HashType(alg=HashAlgorithm.SHA_256, content=path.nar_hash)],
                              properties=[Property(name="nix:store_path", value=path.path),
                                          Property(name="nix:nar_size", value=str(path.nar_size)),
                                          *([Property(name="nix:deriver", value=path.deriver)] if path.deriver else [])])
        components[path.path] = component
        bom.components.add(component)
    referenced = {r for p in record.paths for r in p.references if r != p.path}
    bom.register_dependency(root, [components[p.path] for p in record.paths if p.path not in referenced])
    for path in record.paths:
        bom.register_dependency(components[path.path],
                                [components[r] for r in path.references if r != path.path and r in components])
    return JsonV1Dot6(bom).output_as_string(indent=2)


def validate(document: str) -> None:
    """Check a CycloneDX 1.6 JSON document against the CycloneDX schema; ConfigError naming the first problem."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document)
    if error is not None:
        raise ConfigError(f"the SBOM does not follow the CycloneDX 1.6 schema: {str(error)[:200]}", "report this")


def store_paths(document: str) -> list[str]:
    """The store paths a CycloneDX document of this toolkit lists."""
    data = json.loads(document)
    return sorted(p["value"] for c in data.get("components") or [] for p in c.get("properties") or []
                  if p.get("name") == "nix:store_path")


def write(target: Path, document: str) -> None:
    """Write an SBOM to `target` whole or not at all."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(document)
        os.replace(partial, target)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}", "choose a writable path") from None
