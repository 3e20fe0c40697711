"""VM images, seed disks and artifacts: the pure-Python parts (qemu's
command line, settings and keys, meta-data, manifests), no tool run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ci import cidata, vm
from ci.core.errors import ConfigError, ToolkitError
from ci.tools import oras, qemu

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA4b6L7g8/NF66/2riOVBBGIpMvEiNo335A21y9yg411 me@laptop"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 other@host"


def spec(kvm: bool, **changes) -> qemu.VmSpec:
    fields = dict(image=Path("/images/nixos.qcow2"), seed=Path("/images/cidata.img"),
                  accel=qemu.Acceleration(kvm, "test"), ssh_port=2222)
    return qemu.VmSpec(**{**fields, **changes})


def option(args: list[str], flag: str) -> list[str]:
    """Every value given to `flag`."""
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_qemu_command_with_kvm():
    args = qemu.vm_command(spec(kvm=True))
    assert option(args, "-machine") == ["accel=kvm"]
    assert option(args, "-cpu") == ["host,-arch-capabilities"]
    assert option(args, "-drive") == [
        "file=/images/nixos.qcow2,if=virtio,format=qcow2,snapshot=on",
        "file=/images/cidata.img,if=virtio,format=raw,readonly=on",
    ]
    assert option(args, "-nic") == ["user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert "-nographic" in args and "-no-reboot" in args
    assert option(args, "-m") == ["2048"] and option(args, "-smp") == ["2"]


def test_qemu_command_without_kvm_emulates_with_tcg():
    args = qemu.vm_command(spec(kvm=False, ssh_port=2300, memory_mib=1024))
    assert option(args, "-machine") == ["accel=tcg"]
    assert option(args, "-cpu") == ["max"]
    assert "kvm" not in " ".join(args)
    assert option(args, "-nic") == ["user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2300-:22"]
    assert option(args, "-m") == ["1024"]


def test_qemu_command_escapes_commas_and_can_go_without_seed():
    args = qemu.vm_command(spec(kvm=True, image=Path("/a,b/nixos.qcow2"), seed=None, cpu="qemu64"))
    assert option(args, "-drive") == ["file=/a,,b/nixos.qcow2,if=virtio,format=qcow2,snapshot=on"]
    assert option(args, "-cpu") == ["qemu64"]


def test_acceleration(tmp_path):
    assert not qemu.acceleration(False, tmp_path).kvm
    missing = qemu.acceleration(True, tmp_path / "kvm")
    assert not missing.kvm and f"no {tmp_path / 'kvm'}" in missing.reason and "TCG" in missing.reason
    device = tmp_path / "kvm"
    device.write_text("")
    assert qemu.acceleration(True, device).kvm


def test_keys_from_arguments_and_files(tmp_path):
    (tmp_path / "keys.pub").write_text(f"# mine\n{KEY}\n\n{RSA}\n{KEY}\n")
    assert vm.read_keys([KEY], [str(tmp_path / "keys.pub")]) == (KEY, RSA)


@pytest.mark.parametrize(("content", "phrase"), [
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n", "is a private key"),
    ("# only a comment\n", "holds no key"),
    ("hello world\n", "is not an SSH public key"),
])
def test_bad_key_files(tmp_path, content, phrase):
    (tmp_path / "id").write_text(content)
    with pytest.raises(ConfigError) as refused:
        vm.read_keys([], [str(tmp_path / "id")])
    assert phrase in refused.value.message


def test_no_key_is_refused():
    with pytest.raises(ConfigError) as refused:
        vm.settings(keys=[], key_files=[], user="nixos", hostname="nixos", disk_size=8192)
    assert refused.value.message == "no SSH public key is configured, so nobody could log into the VM"
    assert "--ssh-key-file" in refused.value.hint


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"disk_size": "12"}, "at least 1024"),
    ({"disk_size": "big"}, "at least 1024"),
    ({"hostname": "-bad-"}, "not a valid host name"),
    ({"user": "Root"}, "not a valid user name"),
])
def test_bad_settings(changes, phrase):
    with pytest.raises(ConfigError) as refused:
        vm.settings(**{"keys": [KEY], "key_files": [], "user": "nixos", "hostname": "nixos", "disk_size": 8192,
                       **changes})
    assert phrase in refused.value.message


def test_settings_file_for_nix():
    settings = vm.settings(keys=[KEY], key_files=[], user="ops", hostname="vm1", disk_size="auto")
    assert json.loads(settings.to_json()) == {"authorizedKeys": [KEY], "user": "ops", "hostName": "vm1", "diskSize": "auto"}


def test_config_lists_from_yaml_or_environment():
    assert vm.as_list(None, ":") == []
    assert vm.as_list(["~/a.pub", "b.pub"], ":") == ["~/a.pub", "b.pub"]
    assert vm.as_list("~/a.pub:b.pub:", ":") == ["~/a.pub", "b.pub"]


def test_ssh_command_forgets_host_keys_of_snapshot_vms():
    assert vm.ssh_command("nixos", "127.0.0.1", 2222) == (
        "ssh -p 2222 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null nixos@127.0.0.1")


def test_meta_data_quotes_its_values():
    assert cidata.meta_data(instance_id='i "1": x', hostname="vm1") == (
        b'instance-id: "i \\"1\\": x"\nlocal-hostname: "vm1"\n')


def test_default_instance_id_follows_the_user_data():
    one = cidata.default_instance_id(b"#cloud-config\n", None)
    assert one == cidata.default_instance_id(b"#cloud-config\n", None)
    assert one != cidata.default_instance_id(b"#cloud-config\nruncmd: []\n", None)
    assert one != cidata.default_instance_id(b"#cloud-config\n", b"version: 2\n")


def test_seed_format_is_detected_from_the_disk(tmp_path):
    iso = bytearray(40000)
    iso[32769:32774] = b"CD001"
    fat = bytearray(2048)
    fat[54:59], fat[510:512] = b"FAT12", b"\x55\xaa"
    (tmp_path / "iso").write_bytes(bytes(iso))
    (tmp_path / "fat").write_bytes(bytes(fat))
    (tmp_path / "other").write_bytes(b"\0" * 4096)
    assert cidata.detect_format(tmp_path / "iso") == "iso9660"
    assert cidata.detect_format(tmp_path / "fat") == "vfat"
    with pytest.raises(ConfigError):
        cidata.detect_format(tmp_path / "other")


def test_vfat_size_grows_with_the_files():
    assert cidata.vfat_size({"user-data": b"x" * 100}) == 2 * cidata.MIB
    assert cidata.vfat_size({"user-data": b"x" * (5 * cidata.MIB)}) == 6 * cidata.MIB


def test_artifact_manifest_follows_oci_1_1(tmp_path):
    (tmp_path / "disk.qcow2").write_bytes(b"disk")
    layer = oras.describe(oras.Blob(tmp_path / "disk.qcow2", vm.DISK_MEDIA_TYPE))
    assert layer.digest == "sha256:" + hashlib.sha256(b"disk").hexdigest()
    assert layer.title == "disk.qcow2" and layer.size == 4
    config = oras.Descriptor(oras.EMPTY_MEDIA_TYPE, "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", 2)
    manifest = oras.manifest_json(vm.ARTIFACT_TYPE, config, [layer], {})
    assert manifest["artifactType"] == vm.ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert manifest["layers"][0]["mediaType"] == vm.DISK_MEDIA_TYPE
    assert "annotations" not in manifest


@pytest.mark.parametrize("title", ["", "..", "../etc/passwd", "a/b"])
def test_layer_titles_that_are_not_plain_names_are_refused(title):
    with pytest.raises(ToolkitError):
        oras._safe_name(oras.Descriptor("application/x", "sha256:00", 1, {oras.TITLE: title} if title else {}))
