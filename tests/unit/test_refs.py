"""Reference and destination parsing: pure Python, no engine needed."""

import pytest

from ci.core.errors import BadReference
from ci.core.refs import is_loopback, parse_destination, parse_image_ref


@pytest.mark.parametrize(("text", "registry", "repository", "tag"), [
    ("web", "", "web", None),
    ("web:1.0", "", "web", "1.0"),
    ("team/web", "", "team/web", None),
    ("127.0.0.1:5000/web:latest", "127.0.0.1:5000", "web", "latest"),
    ("ghcr.io/team/web:2026-11-25", "ghcr.io", "team/web", "2026-11-25"),
    ("localhost/web", "localhost", "web", None),
])
def test_parses_references(text, registry, repository, tag):
    ref = parse_image_ref(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert str(ref) == text


@pytest.mark.parametrize("text", ["Web", "web:", "web:-x", "a b", "/web", "web@sha256:short", ""])
def test_refuses_malformed_references(text):
    with pytest.raises(BadReference, match="not a valid image reference"):
        parse_image_ref(text)


@pytest.mark.parametrize(("registry", "loopback"), [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("ghcr.io", False), ("10.0.0.1:5000", False), ("registry.example:443", False),
])
def test_loopback(registry, loopback):
    assert is_loopback(registry) is loopback


def test_destinations_take_the_default_tag():
    assert parse_destination("docker://127.0.0.1:5000/web", allowed=("docker",), default_tag="latest").target \
        == "127.0.0.1:5000/web:latest"
    oci = parse_destination("oci:/tmp/layout", allowed=("oci",), default_tag="latest")
    assert oci.skopeo_name() == "oci:/tmp/layout:latest"


@pytest.mark.parametrize(("text", "message"), [
    ("docker://web:1", "names no registry"),
    ("oci:/tmp/x:a b", "not a valid tag"),
    ("rootfs:/tmp/x", "not a destination this task understands"),
    ("docker://127.0.0.1:5000/web@sha256:" + "0" * 64, "pins a digest"),
])
def test_refuses_bad_destinations(text, message):
    with pytest.raises(BadReference, match=message):
        parse_destination(text, allowed=("docker", "oci"), default_tag="latest")
