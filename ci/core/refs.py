"""Image references and copy destinations, parsed and checked before anything runs.

A malformed reference must fail here, in one line, rather than half-way
through a copy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import BadReference, quoted

# The grammar of github.com/distribution/reference, reduced to what we accept.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:localhost|{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
# Matched whole (fullmatch): `$` would let a trailing newline through.
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
TAG_PATTERN = re.compile(_TAG, re.ASCII)

# How each destination is written, for the message that lists the allowed ones.
_FORMS = {
    "docker": "docker://REGISTRY/NAME[:TAG]",
    "oci": "oci:DIR[:TAG]",
    "docker-archive": "docker-archive:FILE.tar",
    "rootfs": "rootfs:DIR",
}


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference such as registry:5000/team/web:1.0."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, check_tag(tag), None)


def parse_image_ref(text: str, *, need_registry: bool = False) -> ImageRef:
    """Parse `text` as an image reference; BadReference explains what is wrong."""
    match = _REFERENCE.fullmatch(text)
    if not match:
        raise BadReference(
            f"{quoted(text)} is not a valid image reference",
            "use lowercase [registry[:port]/]name[:tag][@sha256:digest], e.g. 127.0.0.1:5000/web:1.0",
        )
    domain = match["domain"] or ""
    path = match["path"]
    # "a/b" is Docker Hub's a/b; "a.b/c", "a:1/c" and "localhost/c" name a registry.
    if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
        path, domain = f"{domain}/{path}", ""
    if need_registry and not domain:
        raise BadReference(
            f"{quoted(text)} names no registry",
            "write the registry host first, e.g. 127.0.0.1:5000/web:1.0 or ghcr.io/team/web:1.0",
        )
    return ImageRef(domain, path, match["tag"], match["digest"])


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.fullmatch(tag):
        raise BadReference(
            f"{quoted(tag)} is not a valid tag",
            "use up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
        )
    return tag


def is_loopback(registry: str) -> bool:
    """True for registries on this machine (127.0.0.0/8, ::1, localhost), whose TLS we may skip."""
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 or registry.startswith("[") else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Destination:
    """Where an image is copied to: a registry, an OCI layout, a docker-archive or a root filesystem."""

    transport: str  # "docker", "oci", "docker-archive" or "rootfs"
    target: str  # the reference, or the path
    tag: str | None = None  # for oci: the tag inside the layout

    @property
    def image(self) -> ImageRef:
        return parse_image_ref(self.target, need_registry=True)

    def skopeo_name(self) -> str:
        """The name skopeo understands for this destination."""
        if self.transport == "docker":
            return f"docker://{self.target}"
        if self.transport == "oci":
            return f"oci:{self.target}:{self.tag}"
        return f"{self.transport}:{self.target}"

    def __str__(self) -> str:
        return self.skopeo_name() if self.transport != "rootfs" else f"rootfs:{self.target}"


def parse_destination(text: str, *, allowed: tuple[str, ...], default_tag: str | None) -> Destination:
    """Parse docker://REF, oci:DIR[:TAG], docker-archive:FILE or rootfs:DIR.

    A registry reference without a tag gets `default_tag`, or stays without
    one when that is None.
    """
    transport, sep, rest = text.partition(":")
    if text.startswith("docker://"):
        transport, rest = "docker", text[len("docker://"):]
    if not sep or transport not in allowed or not rest:
        forms = ", ".join(_FORMS[t] for t in allowed)
        raise BadReference(f"{quoted(text)} is not a destination this task understands", f"use {forms}")
    if transport == "docker":
        ref = parse_image_ref(rest, need_registry=True)
        if ref.digest:
            raise BadReference(f"{quoted(text)} pins a digest", "push to a tag; the digest is printed after the push")
        if not ref.tag and default_tag:
            ref = ref.with_tag(default_tag)
        return Destination("docker", str(ref))
    if transport == "oci":
        path, _, tag = rest.partition(":")
    else:
        path, tag = rest, ""
    if not path:
        what = "file" if transport == "docker-archive" else "directory"
        raise BadReference(f"{quoted(text)} names no {what}", f"use {_FORMS[transport]}, e.g. {transport}:build/web")
    if not path.isprintable():
        raise BadReference(f"{quoted(text)} names a path with a control character (a newline?)",
                           f"use {_FORMS[transport]} with a path on one line")
    if transport == "oci":
        return Destination("oci", path, check_tag(tag or default_tag or "latest"))
    return Destination(transport, path)
