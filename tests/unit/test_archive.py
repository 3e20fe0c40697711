"""Slimming docker-archive streams: real archives written with tarfile, no engine needed."""

import hashlib
import io
import json
import tarfile
import tracemalloc

import pytest

from ci.core.errors import BuildFailed
from ci.tools.docker import archive


def make_archive(layers: list[bytes], *, order: str = "layers-first", names: list[str] | None = None) -> bytes:
    """A docker-archive with one layer per item, as dockerTools' streaming builders write it
    (they name each layer file <diff id>/layer.tar; `names` gives other names)."""
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    names = names or [f"{i}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["web:test"], "Layers": names}])
    entries = list(zip(names, layers, strict=True))
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


def digest_names(layers: list[bytes]) -> list[str]:
    return [f"{hashlib.sha256(layer).hexdigest()}/layer.tar" for layer in layers]


def test_a_known_layer_named_by_its_digest_is_never_held_in_memory():
    layers = [bytes(range(256)) * 80_000, b"page"]  # 20 MB the engine has, then the news
    known = set(archive.chain_ids([f"sha256:{hashlib.sha256(layers[0]).hexdigest()}"]))
    data = make_archive(layers, names=digest_names(layers))
    tracemalloc.start()
    try:
        forwarding, blocks = forward(data, known)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert list(members(blocks)) == [digest_names(layers)[1], "config.json", "manifest.json"]
    assert (forwarding.layers_dropped, forwarding.bytes_dropped) == (1, len(layers[0]))
    assert peak < 8 << 20, peak  # read buffers only: the 20 MB layer was skipped as it went by


def test_a_layer_named_after_a_digest_it_does_not_have_is_refused():
    layers = [b"what the engine has", b"page"]
    lying = [b"something else", b"page"]  # named as the engine's layer, but another content
    known = set(archive.chain_ids([f"sha256:{hashlib.sha256(layers[0]).hexdigest()}"]))
    with pytest.raises(BuildFailed, match=f"names layer {digest_names(layers)[0]} after a digest it does not have"):
        forward(make_archive(lying, names=digest_names(layers)), known)


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


# --- forwarding: the archive passed on as it streams, its manifest last -------------------


def forward(data: bytes, known: set[str], ready=lambda named: None) -> tuple[archive.Forwarding, list[bytes]]:
    forwarding = archive.Forwarding(chunked(data, 1 << 16), known, tags=["web:id-abc"], ready=ready)
    return forwarding, list(forwarding)


def members(blocks: list[bytes]) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(blocks))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_forwarding_leaves_out_known_layers_and_sends_the_manifest_last_with_the_tags():
    layers = [b"base" * 1000, b"lib" * 1000, b"page"]
    known = set(archive.chain_ids([f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers[:2]]))
    names_ = digest_names(layers)
    forwarding, blocks = forward(make_archive(layers, names=names_), known)
    sent = members(blocks)
    assert list(sent) == [names_[2], "config.json", "manifest.json"]
    assert sent[names_[2]] == b"page"
    assert json.loads(sent["manifest.json"])[0]["RepoTags"] == ["web:id-abc"]
    assert forwarding.named == ["web:test"]
    assert (forwarding.layers_dropped, forwarding.bytes_dropped) == (2, 7000)


def test_forwarding_passes_a_large_layer_on_a_block_at_a_time():
    layers = [bytes(range(256)) * 160_000]  # 40 MB the engine lacks
    data = make_archive(layers, names=digest_names(layers))
    tracemalloc.start()
    try:
        forwarding = archive.Forwarding(chunked(data, 1 << 20), set(), tags=["web:x"], ready=lambda named: None)
        sent = sum(len(block) for block in forwarding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent > len(layers[0])
    assert peak < 16 << 20, peak  # some 1 MB buffers in flight, never the layer


def test_forwarding_sends_no_manifest_when_ready_refuses():
    def refuse(named):
        raise BuildFailed(f"the images file built {named[0]}")

    forwarding = archive.Forwarding(chunked(make_archive([b"layer"])), set(), tags=["web:x"], ready=refuse)
    blocks = []
    with pytest.raises(BuildFailed, match="built web:test"):
        for block in forwarding:
            blocks.append(block)
    assert b"manifest.json" not in b"".join(blocks)
    assert isinstance(forwarding.error, BuildFailed)


@pytest.mark.parametrize("cut", [0, 700, 50_000])
def test_forwarding_a_stream_cut_short_is_refused_before_the_manifest(cut):
    data = make_archive([b"x" * 100_000])
    ready = []
    forwarding = archive.Forwarding(chunked(data[:cut]), set(), tags=["web:x"], ready=ready.append)
    with pytest.raises(BuildFailed, match="not a complete docker-archive|has no manifest.json"):
        list(forwarding)
    assert ready == []


def test_forwarding_refuses_a_layer_named_after_a_digest_it_does_not_have():
    layers, lying = [b"what the engine has", b"page"], [b"something else", b"page"]
    known = set(archive.chain_ids([f"sha256:{hashlib.sha256(layers[0]).hexdigest()}"]))
    forwarding = archive.Forwarding(chunked(make_archive(lying, names=digest_names(layers))), known,
                                    tags=["web:x"], ready=lambda named: pytest.fail("ready called"))
    with pytest.raises(BuildFailed, match="after a digest it does not have"):
        list(forwarding)
