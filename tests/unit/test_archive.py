"""Slimming docker-archive streams: real archives written with tarfile, no engine needed."""

import hashlib
import io
import json
import tarfile

import pytest

from ci import archive
from ci.errors import BuildFailed


def make_archive(layers: list[bytes], *, order: str = "layers-first") -> bytes:
    """A docker-archive with one layer per item, as dockerTools' streaming builders write it."""
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["web:test"],
                            "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}])
    entries = [(f"{i}/layer.tar", layer) for i, layer in enumerate(layers)]
    metadata = [("config.json", config.encode()), ("manifest.json", manifest.encode())]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (entries + metadata if order == "layers-first" else metadata + entries):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def chunked(data: bytes, size: int = 7000):
    return (data[i:i + size] for i in range(0, len(data), size))


def names(slimmed: archive.Slimmed) -> list[str]:
    with slimmed, tarfile.open(fileobj=io.BytesIO(b"".join(slimmed.chunks()))) as tar:
        return tar.getnames()


def test_chain_ids_follow_the_engine_definition():
    assert archive.chain_ids(["sha256:a"]) == ["sha256:a"]
    second = "sha256:" + hashlib.sha256(b"sha256:a sha256:b").hexdigest()
    assert archive.chain_ids(["sha256:a", "sha256:b"]) == ["sha256:a", second]


@pytest.mark.parametrize("order", ["layers-first", "metadata-first"])
def test_known_chains_are_left_out_and_the_rest_kept(order):
    layers = [b"base" * 1000, b"lib" * 1000, b"page"]
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    known = set(archive.chain_ids(diff_ids[:2]))  # the engine has the first two layers, as a stack
    slimmed = archive.slim(chunked(make_archive(layers, order=order)), known)
    assert sorted(names(slimmed)) == ["2/layer.tar", "config.json", "manifest.json"]
    assert (slimmed.layers_dropped, slimmed.bytes_dropped) == (2, 7000)


def test_a_known_layer_on_another_stack_is_kept():
    layers = [b"changed base", b"lib" * 1000]
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    known = {diff_ids[1]}  # same content, but its chain (parent) differs
    with archive.slim(chunked(make_archive(layers)), known) as slimmed:
        assert slimmed.layers_dropped == 0


def test_a_truncated_stream_is_refused():
    data = make_archive([b"x" * 100_000])
    with pytest.raises(BuildFailed, match="not a complete docker-archive"):
        archive.slim(chunked(data[:50_000]), set())


def test_a_stream_without_manifest_is_refused():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    with pytest.raises(BuildFailed, match="has no manifest.json"):
        archive.slim([buffer.getvalue()], set())


def manifest_and_config(slimmed: archive.Slimmed) -> tuple[list, dict]:
    with slimmed, tarfile.open(fileobj=io.BytesIO(b"".join(slimmed.chunks()))) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        return manifest, json.load(tar.extractfile(manifest[0]["Config"]))


def test_tags_replace_the_archives_own_which_are_kept_aside():
    slimmed = archive.slim(chunked(make_archive([b"layer"])), set(), tags=["web:id-abc"])
    manifest, _ = manifest_and_config(slimmed)
    assert [entry["RepoTags"] for entry in manifest] == [["web:id-abc"]]
    assert slimmed.named == ["web:test"]


def test_normalise_tags_too():
    fixed = archive.normalise(chunked(make_archive([b"layer"])), created="1970-01-01T00:00:01Z", known_chains=set(),
                              tags=["web:id-abc"])
    manifest, config = manifest_and_config(fixed)
    assert manifest[0]["RepoTags"] == ["web:id-abc"]
    assert config["created"] == "1970-01-01T00:00:01Z"
