"""Hostile input to the readers of what registries send and of files users name: crafted
manifests, bundles and qcow2 headers, key files that are secrets, credentials for one
registry asked for by another. Pure Python: the registry is tests/hostile.py, in this process.

Each refusal is a ToolkitError (one line at the edge, never a traceback), and the target is
neither written nor replaced; the fuzz tests below hold every mutation of valid inputs to that.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import random
import struct
import tarfile
from pathlib import Path

import pytest

from ci import bundles, vm
from ci.bundles import contents
from ci.core import credentials
from ci.core.errors import ConfigError, IntegrityError, RegistryError, ToolkitError
from ci.tools import oras, qemu, skopeo
from tests.hostile import MANIFEST, HostileRegistry, bundle_artifact, bundle_tar, cache_artifact, cache_files, endless

SHA = "sha256:" + "0" * 64


def manifest(**changes) -> dict:
    body = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": bundles.BUNDLE_TYPE,
            "config": {"mediaType": oras.EMPTY_MEDIA_TYPE, "digest": SHA, "size": 2},
            "layers": [{"mediaType": bundles.BUNDLE_MEDIA_TYPE, "digest": SHA, "size": 3,
                        "annotations": {oras.TITLE: "closure.tar"}}]}
    body.update(changes)
    return body


def layer(**changes) -> dict:
    return {**manifest()["layers"][0], **changes}


# --- the manifest's shape ---------------------------------------------------------------------

@pytest.mark.parametrize(("body", "phrase"), [
    (b"not json", "it is not JSON"),
    (b"[" * 100_000, "it is not JSON"),  # nested past Python's recursion limit
    (b"[]", "it is not a JSON object"),
    (json.dumps(manifest(layers=None)).encode(), "it has no list of layers"),
    (json.dumps(manifest(layers={"a": 1})).encode(), "it has no list of layers"),
    (json.dumps({k: v for k, v in manifest().items() if k != "layers"}).encode(), "it has no list of layers"),
    (json.dumps(manifest(layers=[{k: v for k, v in layer().items() if k != "mediaType"}])).encode(),
     "layer 1 has no mediaType"),
    (json.dumps(manifest(layers=[layer(mediaType=7)])).encode(), "layer 1 has no mediaType"),
    (json.dumps(manifest(layers=["closure.tar"])).encode(), "layer 1 is not a JSON object"),
    (json.dumps(manifest(layers=[layer(digest="sha512:" + "0" * 128)])).encode(), "a sha512 digest"),
    (json.dumps(manifest(layers=[layer(digest="sha256:../../etc")])).encode(), "no valid sha256 digest"),
    (json.dumps(manifest(layers=[layer(digest=None)])).encode(), "no valid sha256 digest"),
    (json.dumps(manifest(layers=[layer(size=-1)])).encode(), "no valid size"),
    (json.dumps(manifest(layers=[layer(size="3")])).encode(), "no valid size"),
    (json.dumps(manifest(layers=[layer(size=True)])).encode(), "no valid size"),
    (json.dumps(manifest(layers=[layer(size=1.5)])).encode(), "no valid size"),
    (json.dumps(manifest(layers=[layer(size=10**30)])).encode(), "more than any file the toolkit pulls"),
    (json.dumps(manifest(layers=[layer(annotations={oras.TITLE: 5})])).encode(), "annotations that are not text"),
    (json.dumps(manifest(layers=[layer(annotations=["x"])])).encode(), "annotations that are not text"),
    (json.dumps(manifest(layers=[layer()] * (oras.MAX_LAYERS + 1))).encode(), "layers, more than"),
    (json.dumps(manifest(config=None)).encode(), "its config is not a JSON object"),
    (json.dumps(manifest(schemaVersion=1)).encode(), "schemaVersion is not 2"),
    (json.dumps(manifest(artifactType=["x"])).encode(), "artifactType is not text"),
    (json.dumps(manifest(annotations={"a": None})).encode(), "annotations are not text"),
])
def test_malformed_manifests_are_refused_with_what_is_wrong(body, phrase):
    with pytest.raises(IntegrityError) as refused:
        oras.parse_manifest(body, "the manifest of r/x:1")
    assert refused.value.message.startswith("the manifest of r/x:1 is not a well-formed artifact: ")
    assert phrase in refused.value.message


def test_an_index_is_not_taken_for_an_artifact():
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
    with pytest.raises(RegistryError, match="is a application/vnd.oci.image.index.v1\\+json, not an OCI manifest"):
        oras.parse_manifest(body.encode(), "the manifest of r/x:1")


def test_a_well_formed_manifest_is_read():
    artifact_type, layers, annotations = oras.parse_manifest(json.dumps(manifest()).encode(), "m")
    assert artifact_type == bundles.BUNDLE_TYPE and layers[0].title == "closure.tar" and annotations == {}


@pytest.mark.parametrize("title", ["", ".", "..", "../etc/passwd", "a/b", "a\\b", ".bashrc", "x\ny", "x\0y", "a" * 256])
def test_layer_titles_that_are_not_plain_visible_names_are_refused(title):
    artifact = oras.Artifact("r/x:1", SHA, "t", (oras.Descriptor("application/x", SHA, 1, {oras.TITLE: title}),), {})
    with pytest.raises(IntegrityError, match="unusable file name"):
        oras.file_names(artifact)


def test_two_layers_with_one_title_are_refused():
    descriptor = oras.Descriptor("application/x", SHA, 1, {oras.TITLE: "nixos.qcow2"})
    with pytest.raises(IntegrityError, match="two layers are titled 'nixos.qcow2'"):
        oras.file_names(oras.Artifact("r/x:1", SHA, "t", (descriptor, descriptor), {}))


# --- bundle members -------------------------------------------------------------------------

@pytest.mark.parametrize(("member", "phrase"), [
    ({"name": "cache/../../evil", "data": b"x"}, "a path that leaves the bundle"),
    ({"name": "../evil", "data": b"x"}, "a path that leaves the bundle"),
    ({"name": "/etc/evil", "data": b"x"}, "a path that leaves the bundle"),
    ({"name": "cache//x", "data": b"x"}, "a path that leaves the bundle"),
    ({"name": "cache/link", "type": tarfile.SYMTYPE, "linkname": "/etc/shadow"}, "is a symbolic link"),
    ({"name": "cache/up", "type": tarfile.SYMTYPE, "linkname": "../../x"}, "is a symbolic link"),
    ({"name": "cache/hard", "type": tarfile.LNKTYPE, "linkname": "/etc/shadow"}, "is a hard link"),
    ({"name": "cache/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "is a device or FIFO"),
    ({"name": "cache/blk", "type": tarfile.BLKTYPE}, "is a device or FIFO"),
    ({"name": "cache/fifo", "type": tarfile.FIFOTYPE}, "is a device or FIFO"),
    ({"name": "elsewhere", "data": b"x"}, "outside cache/"),
    ({"name": "cache/nix-cache-info", "data": b"StoreDir: /nix/store\n"}, "twice"),
    ({"name": "result", "data": b"x"}, "its result is not a symbolic link"),
    ({"name": "cache/nix-cache-info/x", "data": b"x"}, "is a file that other members are under"),
])
def test_bundle_members_that_could_reach_outside_are_refused(tmp_path, member, phrase):
    path = tmp_path / "closure.tar"
    path.write_bytes(bundle_tar([member]))
    with pytest.raises(IntegrityError) as refused:
        bundles.inspect_bundle(path)
    assert phrase in refused.value.message


def test_a_result_link_that_is_not_a_store_path_is_refused(tmp_path):
    path = tmp_path / "closure.tar"
    path.write_bytes(bundle_tar(result="/etc/shadow"))
    with pytest.raises(IntegrityError, match="not a store path"):
        bundles.inspect_bundle(path)


def test_a_sparse_member_is_refused(tmp_path):
    """A GNU sparse file: a few bytes in the tar, as many as it likes once unpacked."""
    path = tmp_path / "closure.tar"
    path.write_bytes(bundle_tar())
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    sparse = copy.copy(members[2])
    sparse.sparse = [(0, 1)]
    sparse.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(IntegrityError, match="a sparse file"):
        contents.bundle_members([*members, sparse], path)


# --- qcow2 headers --------------------------------------------------------------------------

def qcow2_header(version=3, backing=(0, 0), incompatible=0) -> bytes:
    header = qemu.QCOW2_MAGIC + struct.pack(">IQI", version, *backing) + bytes(52)
    return header + struct.pack(">Q", incompatible) + bytes(32)


@pytest.mark.parametrize(("header", "phrase"), [
    (b"", "is not a qcow2 disk"),
    (b"\0" * 512, "is not a qcow2 disk"),
    (qcow2_header(version=9), "of version 9"),
    (qcow2_header(backing=(512, 12)), "names a backing file"),
    (qcow2_header(version=2, backing=(512, 12)), "names a backing file"),
    (qcow2_header(incompatible=4), "external file"),
])
def test_qcow2_headers_that_would_read_other_files_are_refused(header, phrase):
    assert phrase in qemu.qcow2_header_problem(header)


def test_a_standalone_qcow2_header_passes():
    assert qemu.qcow2_header_problem(qcow2_header()) is None
    assert qemu.qcow2_header_problem(qcow2_header(incompatible=1)) is None  # dirty bit: no other file


# --- secrets in messages ----------------------------------------------------------------------

SECRET_KEY = "k-1:" + "QUJD" * 21 + "QQ=="  # 64 bytes of base64, as a secret key


def test_a_damaged_secret_key_given_as_public_key_is_never_quoted(tmp_path):
    damaged = SECRET_KEY[:-6] + "!!" + SECRET_KEY[-4:]
    (tmp_path / "key.pub").write_text(damaged + "\n")
    with pytest.raises(ConfigError) as refused:
        bundles.public_keys([tmp_path / "key.pub"])
    assert refused.value.message == f"word 1 of {tmp_path / 'key.pub'} is not a Nix public key"
    assert SECRET_KEY[4:12] not in refused.value.line()


def test_a_shadow_file_given_as_ssh_key_file_is_never_quoted(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text("root:$y$j9T$abcdefgh$ijklmnopqrstuvwxyz0123456789ABCDEFGHIJ:19000:0:99999:7:::\n")
    with pytest.raises(ConfigError) as refused:
        vm.read_keys([], [str(shadow)])
    assert refused.value.message == f"line 1 of {shadow} is not an SSH public key"
    assert "root" not in refused.value.line().replace(str(tmp_path), "") and "$y$" not in refused.value.line()


def test_trusted_keys_from_configuration_are_never_quoted():
    with pytest.raises(ConfigError) as refused:
        bundles.public_keys([], ["k-1:" + "A" * 43 + "= not-a-key-but-a-password"])
    assert refused.value.message == "word 2 of bundle.trusted_keys is not a Nix public key"


# --- credentials: one registry -----------------------------------------------------------------

@pytest.fixture
def pair(monkeypatch):
    monkeypatch.setenv("REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("REGISTRY_PASSWORD", "s3cret")
    monkeypatch.delenv("REGISTRY_HOST", raising=False)
    credentials._warn_unscoped.cache_clear()


def test_the_pair_goes_only_to_the_registry_registry_host_names(pair, monkeypatch):
    monkeypatch.setenv("REGISTRY_HOST", "ghcr.io")
    assert credentials.for_registry("ghcr.io") == credentials.Credentials("alice", "s3cret")
    assert credentials.for_registry("GHCR.io") is not None
    for other in ("cache.example.org", "ghcr.io:443", "ghcr.io.example.org", "127.0.0.1:5000"):
        assert credentials.for_registry(other) is None, other


def test_docker_hubs_names_are_one_registry(pair, monkeypatch):
    monkeypatch.setenv("REGISTRY_HOST", "docker.io")
    assert credentials.for_registry("registry-1.docker.io") is not None


def test_without_registry_host_the_pair_goes_nowhere_with_one_warning(pair, caplog):
    with caplog.at_level(logging.WARNING):
        assert credentials.for_registry("ghcr.io") is None
        assert credentials.for_registry("127.0.0.1:5000") is None
    warnings = [r.getMessage() for r in caplog.records if "REGISTRY_HOST" in r.getMessage()]
    assert len(warnings) == 1 and "sent to no registry" in warnings[0]


@pytest.mark.parametrize("value", ["https://ghcr.io", "ghcr.io/team", "ghcr io", "-x"])
def test_a_registry_host_that_is_not_a_host_is_refused(pair, monkeypatch, value):
    monkeypatch.setenv("REGISTRY_HOST", value)
    with pytest.raises(ConfigError, match="REGISTRY_HOST is .* not a registry host"):
        credentials.for_registry("ghcr.io")


def test_skopeos_auth_file_holds_only_the_scoped_registry(pair, monkeypatch):
    monkeypatch.setenv("REGISTRY_HOST", "127.0.0.1:5000")
    with skopeo.auth_file(["127.0.0.1:5000", "cache.example.org"]) as options:
        written = json.loads(Path(options[0].split("=", 1)[1]).read_text())
    assert list(written["auths"]) == ["127.0.0.1:5000"]


# --- pulls from a hostile registry: nothing written, nothing replaced ---------------------------

@pytest.fixture
def hostile():
    with HostileRegistry() as registry:
        yield registry


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under `directory` with its bytes (None for a directory)."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(directory.rglob("*"))}


def pull_into(tmp_path: Path, reference: str):
    """cache-pull's library call, into tmp_path/out (which holds an older bundle and cache)."""
    out = tmp_path / "out"
    return bundles.pull(reference, bundle_to=out / "closure.tar", cache_to=out / "cache")


@pytest.fixture
def out(tmp_path):
    """An older bundle and binary cache in the target directory: a refused pull must leave them as they are."""
    (tmp_path / "out" / "cache").mkdir(parents=True)
    (tmp_path / "out" / "closure.tar").write_bytes(b"the bundle that was there")
    (tmp_path / "out" / "cache" / "nix-cache-info").write_bytes(b"StoreDir: /nix/store\n")
    return tree(tmp_path)


def test_a_well_formed_bundle_and_cache_are_pulled(hostile, tmp_path, out):
    assert pull_into(tmp_path, hostile.manifest("b", "1", bundle_artifact(hostile))).kind == "bundle"
    assert pull_into(tmp_path, hostile.manifest("c", "1", cache_artifact(hostile))).kind == "cache"
    assert tree(tmp_path)["out/closure.tar"] == bundle_tar()
    assert {k.removeprefix("out/cache/"): v for k, v in tree(tmp_path).items() if v is not None and "cache/" in k} == {
        name: data for name, data in cache_files().items()}


def crafted(registry: HostileRegistry, case: str) -> str:
    """The reference of one crafted artifact, by name (see CRAFTED)."""
    if case == "manifest that never ends":
        registry.manifests["x:1"] = endless(b" " * 65536)
        return f"{registry.address}/x:1"
    if case == "blob larger than declared":
        body = bundle_artifact(registry)
        body["layers"][0]["size"] = 100
        registry.blobs[body["layers"][0]["digest"]] = endless()
        return registry.manifest("x", "1", body)
    if case == "blob of a declared size no disk holds":
        body = bundle_artifact(registry)
        body["layers"][0]["size"] = 1 << 49
        return registry.manifest("x", "1", body)
    if case.startswith("bundle member "):
        members = {"bundle member ../": {"name": "cache/../../../evil", "data": b"x"},
                   "bundle member absolute symlink": {"name": "cache/x", "type": tarfile.SYMTYPE, "linkname": "/etc/shadow"},
                   "bundle member hardlink": {"name": "cache/x", "type": tarfile.LNKTYPE, "linkname": "/etc/shadow"},
                   "bundle member device": {"name": "cache/x", "type": tarfile.CHRTYPE}}
        return registry.manifest("x", "1", bundle_artifact(registry, bundle_tar([members[case]])))
    body = bundle_artifact(registry)
    if case == "layers null":
        body["layers"] = None
    elif case == "layer without mediaType":
        del body["layers"][0]["mediaType"]
    elif case == "two layers with one title":
        body = cache_artifact(registry)
        body["layers"][2]["annotations"][oras.TITLE] = body["layers"][1]["annotations"][oras.TITLE]
        body["layers"][2]["mediaType"] = bundles.NARINFO_MEDIA_TYPE
    elif case == "sha512 digest":
        body["layers"][0]["digest"] = "sha512:" + "0" * 128
    elif case == "title with a path":
        body["layers"][0]["annotations"][oras.TITLE] = "../closure.tar"
    elif case == "wrong artifact type":
        body["artifactType"] = "application/vnd.example.other"
    elif case == "cache layer titled .bashrc":
        body = cache_artifact(registry)
        body["layers"][0]["annotations"][oras.TITLE] = ".bashrc"
    elif case == "narinfo layer titled authorized_keys":
        body = cache_artifact(registry)
        body["layers"][1]["annotations"][oras.TITLE] = "authorized_keys"
    elif case == "cache layer of another type":
        body = cache_artifact(registry)
        body["layers"][2]["mediaType"] = "application/x-sh"
    elif case == "digest mismatch":
        registry.blobs[body["layers"][0]["digest"]] = bundle_tar()[:-1] + b"!"
    return registry.manifest("x", "1", body)


CRAFTED = {
    "layers null": "it has no list of layers",
    "layer without mediaType": "layer 1 has no mediaType",
    "two layers with one title": "two layers are titled",
    "sha512 digest": "only sha256 digests are checked",
    "title with a path": "unusable file name",
    "wrong artifact type": "neither a bundle nor a binary cache",
    "cache layer titled .bashrc": "unusable file name '.bashrc'",
    "narinfo layer titled authorized_keys": "not a name Nix gives such a file",
    "cache layer of another type": "which binary caches do not have",
    "manifest that never ends": "larger than",
    "blob larger than declared": "sent more than its 100 bytes",
    "blob of a declared size no disk holds": "needs",
    "digest mismatch": "is corrupt",
    "bundle member ../": "a path that leaves the bundle",
    "bundle member absolute symlink": "is a symbolic link",
    "bundle member hardlink": "is a hard link",
    "bundle member device": "is a device or FIFO",
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_artifacts_are_refused_and_nothing_is_written(hostile, tmp_path, out, case):
    with pytest.raises(ToolkitError) as refused:
        pull_into(tmp_path, crafted(hostile, case))
    assert CRAFTED[case] in refused.value.message
    assert "\n" not in refused.value.line()
    assert tree(tmp_path) == out  # nothing written, nothing replaced, no temporary left


def test_a_crafted_bundle_as_substituter_is_skipped_with_one_warning(hostile, caplog):
    reference = crafted(hostile, "bundle member absolute symlink")
    with bundles.substituter(reference, ("k-1:" + "A" * 43 + "=",)) as used:
        assert used is None
    assert "cannot use the substituter" in caplog.text and "is a symbolic link" in caplog.text


# --- fuzz: mutations of valid manifests and bundles ----------------------------------------------

SEED = 18
ROUNDS = 300


def mutate_json(rng: random.Random, value):
    """`value` with one random change somewhere in it: a key dropped or retyped, a value replaced
    by another type, a string given a path, a list emptied or doubled."""
    weird = [None, True, -1, 0, 2**63, 1.5, "", "../x", "/etc/passwd", ".bashrc", "a/b", "sha512:" + "0" * 128,
             [], {}, "x" * 300, "\0", "sha256:" + "f" * 64]
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        copy_ = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del copy_[key]
        elif roll < 0.6:
            copy_[key] = mutate_json(rng, value[key])
        else:
            copy_[key] = rng.choice(weird)
        return copy_
    if isinstance(value, list) and value and rng.random() < 0.8:
        roll = rng.random()
        if roll < 0.2:
            return []
        if roll < 0.4:
            return value + [rng.choice(value)]
        index = rng.randrange(len(value))
        return [*value[:index], mutate_json(rng, value[index]), *value[index + 1:]]
    return rng.choice(weird)


def mutate_tar(rng: random.Random, data: bytes) -> bytes:
    """`data` (a tar) with one change: bytes flipped in a header or content, cut short, or a member
    renamed, retyped or relinked."""
    roll = rng.random()
    if roll < 0.3:
        raw = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if roll < 0.4:
        return data[:rng.randrange(len(data))]
    members = []
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            members.append((member, archive.extractfile(member).read() if member.isfile() else None))
    member, _ = rng.choice(members)
    change = rng.choice(["name", "type", "linkname"])
    if change == "name":
        member.name = rng.choice(["../x", "/abs", "cache/../../x", "cache/a/../../../x", "result", "cache", "cache/nar",
                                  "./cache/x", "x" * 200])
    elif change == "type":
        member.type = rng.choice([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE,
                                  tarfile.REGTYPE])
    else:
        member.linkname = rng.choice(["/etc/shadow", "../../x", "/nix/store/" + "b" * 32 + "-x", ""])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for member_, content in members:
            if content is not None and member_.isfile():
                archive.addfile(member_, io.BytesIO(content))
            else:
                member_.size = 0
                archive.addfile(member_)
    return out.getvalue()


def test_fuzz_mutated_manifests_never_crash_and_never_write_outside(hostile, tmp_path, out):
    rng = random.Random(SEED)
    outcomes = {"pulled": 0, "refused": 0}
    for round_ in range(ROUNDS):
        body = mutate_json(rng, rng.choice([bundle_artifact, cache_artifact])(hostile))
        reference = hostile.manifest("fuzz", str(round_), body)
        try:
            pull_into(tmp_path, reference)
            outcomes["pulled"] += 1
        except ToolkitError as exc:
            assert "\n" not in exc.line(), (round_, body)
            outcomes["refused"] += 1
        after = tree(tmp_path)
        assert set(after) <= set(out) | {k for k in after if k.startswith(("out/cache", "out/closure.tar"))}, (round_, body)
    assert outcomes["refused"] > ROUNDS // 2, outcomes  # the mutations did reach the checks


def test_fuzz_mutated_bundles_never_crash_and_never_write_outside(hostile, tmp_path, out):
    rng = random.Random(SEED)
    valid = bundle_tar()
    for round_ in range(ROUNDS):
        data = mutate_tar(rng, valid)
        reference = hostile.manifest("fuzz", str(round_), bundle_artifact(hostile, data))
        try:
            pulled = pull_into(tmp_path, reference)
            assert pulled.kind == "bundle"
            # What was accepted can be unpacked as the substituter does, inside its directory.
            target = tmp_path / "unpacked" / str(round_)
            with tarfile.open(pulled.path) as archive:
                archive.extractall(target, members=[m for m in archive.getmembers()
                                                    if m.name.removeprefix("./").split("/")[0] == "cache"], filter="data")
            assert all(p.resolve().is_relative_to(target.resolve()) for p in target.rglob("*"))
        except ToolkitError as exc:
            assert "\n" not in exc.line(), round_
        assert set(tree(tmp_path)) <= set(out) | {k for k in tree(tmp_path) if k.startswith("unpacked")}, round_
        (tmp_path / "out" / "closure.tar").write_bytes(b"the bundle that was there")


def test_a_registry_error_message_is_bounded_to_one_line(hostile, tmp_path, out):
    """A /v2/ whose body never ends, then an error whose message has lines of its own."""
    hostile.root = endless()
    hostile.error_status = 500
    hostile.error_body = json.dumps({"errors": [{"code": "X", "message": "first\nerror: forged second line"}]}).encode()
    with pytest.raises(ToolkitError) as refused:
        pull_into(tmp_path, f"{hostile.address}/none:1")
    assert "HTTP 500 first error: forged second line" in refused.value.message
    assert "\n" not in refused.value.line()
    assert tree(tmp_path) == out
