"""The tasks against a hostile registry (tests/hostile.py, in this process) and crafted disks:
each input is refused with one `error:` line, no traceback, and the target as it was.
Credentials for one registry are checked to reach no other, with a real registry beside
one that records every Authorization header (and the engine and skopeo as the clients)."""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from ci import vm
from ci.tools import skopeo
from tests.conftest import assert_one_line_error, invoke
from tests.hostile import TITLE, HostileRegistry, bundle_artifact, bundle_tar, cache_artifact, endless
from tests.integration import registries
from tests.integration.conftest import unavailable


@pytest.fixture
def hostile():
    with HostileRegistry() as registry:
        yield registry


def listing(directory: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None) for p in sorted(directory.rglob("*"))}


# --- cache-pull: crafted artifacts -------------------------------------------------------------

def crafted_bundle(registry: HostileRegistry, case: str) -> str:
    body = bundle_artifact(registry)
    if case == "layers null":
        body["layers"] = None
    elif case == "layer without mediaType":
        del body["layers"][0]["mediaType"]
    elif case == "two layers":
        body["layers"].append(dict(body["layers"][0]))
    elif case == "two cache layers with one title":
        body = cache_artifact(registry)
        body["layers"].append(dict(body["layers"][1]))
    elif case == "sha512 digest":
        body["layers"][0]["digest"] = "sha512:" + "0" * 128
    elif case == "huge declared size":
        body["layers"][0]["size"] = 1 << 48
    elif case == "blob that never ends":
        body["layers"][0]["size"] = 1000
        registry.blobs[body["layers"][0]["digest"]] = endless()
    elif case == "title with a path":
        body["layers"][0]["annotations"][TITLE] = "../../closure.tar"
    elif case == "wrong artifactType":
        body["artifactType"] = "application/vnd.example.other.v1"
    elif case == "member ../":
        body = bundle_artifact(registry, bundle_tar([{"name": "cache/../../../escaped", "data": b"x"}]))
    elif case == "absolute symlink member":
        body = bundle_artifact(registry, bundle_tar([{"name": "cache/nar/x", "type": tarfile.SYMTYPE,
                                                      "linkname": "/etc/shadow"}]))
    elif case == "hard link member":
        body = bundle_artifact(registry, bundle_tar([{"name": "cache/x", "type": tarfile.LNKTYPE, "linkname": "/etc/shadow"}]))
    elif case == "device member":
        body = bundle_artifact(registry, bundle_tar([{"name": "cache/x", "type": tarfile.CHRTYPE, "devmajor": 1,
                                                      "devminor": 3}]))
    elif case == "manifest that never ends":
        registry.manifests["crafted:1"] = endless(b" " * 65536)
        return f"{registry.address}/crafted:1"
    return registry.manifest("crafted", "1", body)


CACHE_PULL_CASES = {
    "layers null": "it has no list of layers",
    "layer without mediaType": "layer 1 has no mediaType",
    "two layers": "is not a well-formed bundle artifact",
    "two cache layers with one title": "two layers are titled '" + "a" * 32 + ".narinfo'",
    "sha512 digest": "only sha256 digests are checked",
    "huge declared size": "needs",
    "blob that never ends": "the registry sent more than its 1000 bytes",
    "title with a path": "unusable file name",
    "wrong artifactType": "is neither a bundle nor a binary cache",
    "member ../": "a path that leaves the bundle",
    "absolute symlink member": "is a symbolic link",
    "hard link member": "is a hard link",
    "device member": "is a device or FIFO",
    "manifest that never ends": "is larger than",
}


@pytest.mark.parametrize("case", CACHE_PULL_CASES)
def test_cache_pull_refuses_a_crafted_artifact_and_keeps_the_old_bundle(hostile, tmp_path, case):
    target = tmp_path / "closure.tar"
    target.write_bytes(b"the bundle that was there")
    if "cache" in case:  # a binary cache artifact: pulled into a directory, here an older cache
        target = tmp_path / "cache"
        target.mkdir()
        (target / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    before = listing(tmp_path)
    outcome = invoke("cache-pull", crafted_bundle(hostile, case), "--to", str(target))
    assert_one_line_error(outcome, CACHE_PULL_CASES[case])
    assert outcome.code == 1
    assert listing(tmp_path) == before  # nothing written, nothing replaced, no temporary left
    assert not (tmp_path.parent / "escaped").exists()


# --- pull-vm: only the kinds a VM image has, and disks that stand alone ---------------------------

def qemu_img(*args: str) -> None:
    try:
        subprocess.run(["qemu-img", *args], check=True, capture_output=True)
    except FileNotFoundError:
        unavailable("no qemu-img; apt-get install qemu-utils")


@pytest.fixture
def disks(tmp_path):
    """A standalone qcow2, one whose backing file is a file of this machine, one with an external
    data file, and a raw disk."""
    made = tmp_path / "disks"
    made.mkdir()
    host_file = made / "host-secret"
    host_file.write_bytes(b"a file of this machine\n" * 100)
    qemu_img("create", "-q", "-f", "qcow2", str(made / "good.qcow2"), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(host_file), "-F", "raw", str(made / "backing.qcow2"), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={made / 'data'},data_file_raw=on",
             str(made / "data-file.qcow2"), "1M")
    (made / "raw.qcow2").write_bytes(bytes(65536))
    return made


def vm_artifact(registry: HostileRegistry, layers: list[tuple[str, str, bytes]]) -> str:
    return registry.manifest("vm", "1", registry.artifact(vm.ARTIFACT_TYPE, layers))


def test_pull_vm_writes_a_standalone_disk(hostile, disks, tmp_path):
    reference = vm_artifact(hostile, [(vm.DISK_MEDIA_TYPE, "nixos.qcow2", (disks / "good.qcow2").read_bytes())])
    outcome = invoke("pull-vm", reference, "--to", str(tmp_path / "vm"))
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "vm" / "nixos.qcow2").read_bytes() == (disks / "good.qcow2").read_bytes()


@pytest.mark.parametrize(("disk", "phrase"), [
    ("backing.qcow2", "names a backing file"),
    ("data-file.qcow2", "keeps its data in an external file"),
    ("raw.qcow2", "is not a qcow2 disk"),
])
def test_pull_vm_refuses_a_disk_that_does_not_stand_alone_before_replacing_the_old_one(hostile, disks, tmp_path, disk,
                                                                                       phrase):
    target = tmp_path / "vm"
    target.mkdir()
    (target / "nixos.qcow2").write_bytes(b"the disk that was there")
    before = listing(target)
    reference = vm_artifact(hostile, [(vm.DISK_MEDIA_TYPE, "nixos.qcow2", (disks / disk).read_bytes())])
    outcome = invoke("pull-vm", reference, "--to", str(target))
    assert_one_line_error(outcome, f"nixos.qcow2 of {hostile.address}/vm@sha256:", phrase, "nothing was written")
    assert listing(target) == before


@pytest.mark.parametrize(("layers", "phrase"), [
    ([(vm.DISK_MEDIA_TYPE, "nixos.qcow2", None), (vm.SEED_MEDIA_TYPES["vfat"], ".bashrc", b"echo owned\n")],
     "unusable file name '.bashrc'"),
    ([(vm.DISK_MEDIA_TYPE, "nixos.qcow2", None), ("text/plain", "notes.txt", b"hello\n")],
     "has a layer of type text/plain, which VM images do not have"),
    ([(vm.DISK_MEDIA_TYPE, "authorized_keys", None)], "a disk layer titled 'authorized_keys', not *.qcow2"),
    ([(vm.DISK_MEDIA_TYPE, "a.qcow2", None), (vm.DISK_MEDIA_TYPE, "b.qcow2", None)], "it has 2 disks"),
    ([(vm.DISK_MEDIA_TYPE, "nixos.qcow2", None), (vm.DISK_MEDIA_TYPE, "nixos.qcow2", None)],
     "two layers are titled 'nixos.qcow2'"),
    ([(vm.DISK_MEDIA_TYPE, "nixos.qcow2", None), (vm.SEED_MEDIA_TYPES["vfat"], "cidata.img", b"not a disk")],
     "cidata.img of", ),
], ids=["bashrc", "other-type", "disk-name", "two-disks", "same-title", "bad-seed"])
def test_pull_vm_writes_only_the_kinds_a_vm_image_declares(hostile, disks, tmp_path, layers, phrase):
    good = (disks / "good.qcow2").read_bytes()
    reference = vm_artifact(hostile, [(t, title, data if data is not None else good) for t, title, data in layers])
    target = tmp_path / "home"
    target.mkdir()
    (target / ".bashrc").write_text("# mine\n")
    before = listing(target)
    outcome = invoke("pull-vm", reference, "--to", str(target))
    assert_one_line_error(outcome, phrase)
    assert listing(target) == before


@pytest.mark.parametrize("disk", ["backing.qcow2", "data-file.qcow2"])
def test_run_vm_and_push_vm_refuse_a_disk_that_reads_another_file(hostile, disks, disk):
    outcome = invoke("run-vm", "--image", str(disks / disk), "--without-seed", "--port", "2299")
    assert_one_line_error(outcome, f"{disks / disk} ", "another file of this machine", "invoke build-vm")
    outcome = invoke("push-vm", "--to", f"{hostile.address}/vm:1", "--image", str(disks / disk), "--without-seed")
    assert_one_line_error(outcome, "another file of this machine")
    assert hostile.seen == []  # refused before the registry was asked anything


# --- credentials: one registry, not the others ------------------------------------------------------

@pytest.fixture
def two_registries(tmp_path):
    """A real registry that wants alice (its password), and a recording one that wants credentials too."""
    password = f"pw-{uuid.uuid4().hex}"
    with registries.registry(tmp_path / "ours", password=password) as ours, HostileRegistry(password="any") as theirs:
        yield ours, theirs, password


def test_the_pair_for_one_registry_reaches_no_other_through_oras(two_registries, tmp_path):
    ours, theirs, password = two_registries
    pair = {"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": password}
    (tmp_path / "disk.qcow2").write_bytes(b"")
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), "1M")
    pushed = invoke("push-vm", "--to", f"{ours}/vm:1", "--image", str(tmp_path / "disk.qcow2"), "--without-seed",
                    env={**pair, "REGISTRY_HOST": ours})
    assert pushed.code == 0, pushed.stderr  # the pair works where it belongs

    for env in ({**pair, "REGISTRY_HOST": ours}, pair):  # scoped to the other registry, and not scoped at all
        outcome = invoke("cache-pull", f"{theirs.address}/cache:1", "--to", str(tmp_path / "x.tar"), env=env)
        assert_one_line_error(outcome, f"the registry {theirs.address} wants credentials, and none are configured for it",
                              f"REGISTRY_HOST={theirs.address}")
        assert theirs.authorizations() == []
    assert "REGISTRY_USERNAME is set but REGISTRY_HOST is not" in outcome.stderr

    # The recorder does see a pair that is meant for it.
    invoke("cache-pull", f"{theirs.address}/cache:1", "--to", str(tmp_path / "x.tar"),
           env={**pair, "REGISTRY_HOST": theirs.address})
    assert f"alice:{password}" in theirs.authorizations()


def test_the_pair_for_one_registry_reaches_no_other_through_skopeo(two_registries, tmp_path, monkeypatch):
    ours, theirs, password = two_registries
    monkeypatch.setenv("REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    monkeypatch.setenv("REGISTRY_HOST", ours)
    source = registries.handmade_layout(tmp_path / "layout", content=b"hi\n")
    assert skopeo.copy(source, f"docker://{ours}/img:1").digest.startswith("sha256:")
    with contextlib.suppress(Exception):  # it wants credentials it is not given: refused
        skopeo.copy(source, f"docker://{theirs.address}/img:1")
    assert theirs.seen, "skopeo never reached the recording registry"
    # skopeo sends an empty pair (":") where it has none; nothing of ours.
    assert not any(password in sent or "alice" in sent for sent in theirs.authorizations()), theirs.authorizations()


def test_the_pair_for_one_registry_reaches_no_other_through_the_engine(engine, two_registries, caplog):
    """build-web's --cache-from pull: the engine asks the other registry, with nothing from the environment."""
    from ci import cache

    ours, theirs, password = two_registries
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGISTRY_USERNAME", "alice")
        patch.setenv("REGISTRY_PASSWORD", password)
        patch.setenv("REGISTRY_HOST", ours)
        assert cache._pull(f"{theirs.address}/ns/nix-cache:pkgs-x", f"hostiletest-cache:{uuid.uuid4().hex[:8]}") is None
    assert "building without it" in caplog.text
    if not theirs.seen:
        pytest.skip("the engine cannot reach this process's loopback address (a remote engine)")
    assert theirs.authorizations() == []
