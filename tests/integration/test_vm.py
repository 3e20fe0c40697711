"""VM images and seed disks against the real tools: Nix, the builder
container, mkfs.vfat/mtools and xorriso, qemu and qemu-img, the registry.
Nothing is mocked; every disk is read back with the distribution's tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ci import cidata, cloudconfig, vm
from ci.tools import oras
from tests.conftest import FIXTURE_CONFIG, ROOT, assert_one_line_error, invoke, processes
from tests.integration import registries
from tests.integration.conftest import unavailable

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA4b6L7g8/NF66/2riOVBBGIpMvEiNo335A21y9yg411 vmtest@host"
LIB_ONLY = "import ./tests/fixtures/vm/lib-only.nix"
FIXTURE_VM = {"INVOKE_VM_EXPRESSION": "tests/fixtures/vm/image.nix", "INVOKE_WEB_PKGS": "tests/nixpkgs/default.nix"}


def tool(*argv: str, **kwargs) -> str:
    """Run a distribution tool directly (not through the toolkit) and return what it printed."""
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; `bash .ci/setup` installs them")


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519.pub"
    path.write_text(KEY + "\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the NixOS files ---------------------------------------------------------

def test_nixos_files_parse(nix_on_host):
    for path in ("nix/vm.nix", "nix/vm-configuration.nix", "tests/fixtures/vm/image.nix", "tests/fixtures/vm/lib-only.nix"):
        subprocess.run(["nix-instantiate", "--parse", path], cwd=ROOT, check=True, capture_output=True)


def eval_settings(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "nix/vm.nix", "-A", "settings",
                           "--arg", "pkgs", LIB_ONLY, *args], cwd=ROOT, capture_output=True, text=True)


def test_vm_nix_merges_settings_file_and_arguments(nix_on_host, tmp_path):
    settings = vm.VmSettings((KEY,), user="ops", hostname="from-file", disk_size="auto")
    (tmp_path / "vm.json").write_text(settings.to_json())
    result = eval_settings("--argstr", "settingsFile", str(tmp_path / "vm.json"), "--argstr", "hostName", "vm2")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"authorizedKeys": [KEY], "user": "ops", "hostName": "vm2", "diskSize": "auto"}


@pytest.mark.parametrize(("settings", "phrase"), [
    ({}, "no SSH public key given, so nobody could log into the VM"),
    ({"authorizedKeys": []}, "no SSH public key given"),
    ({"authorizedKeys": [KEY], "sshKeys": [KEY]}, "unknown settings in"),
    ({"authorizedKeys": [KEY], "diskSize": 10}, "diskSize must be"),
])
def test_vm_nix_refuses_bad_settings(nix_on_host, tmp_path, settings, phrase):
    (tmp_path / "vm.json").write_text(json.dumps(settings))
    result = eval_settings("--argstr", "settingsFile", str(tmp_path / "vm.json"))
    assert result.returncode != 0 and phrase in result.stderr, result.stderr


def test_vm_nix_evaluates_with_nixpkgs(nix_on_host):
    """The whole NixOS configuration and its qcow2 derivation, where the pinned nixpkgs can be had."""
    probe = subprocess.run(["nix-instantiate", "--eval", "--option", "download-attempts", "1",
                            "--option", "connect-timeout", "5", "-E", "(import ./nix/nixpkgs { }).lib.version"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        # Not `unavailable()`: no CI machine here can fetch nixpkgs, so this never fails a run.
        reason = next((line for line in probe.stderr.splitlines() if line.startswith("error:")), probe.stderr.strip()[-200:])
        pytest.skip(f"the pinned nixpkgs (nix/nixpkgs/pin.json) is not in this machine's Nix store "
                    f"and cannot be fetched ({reason})")
    keys = f'[ "{KEY}" ]'

    def value(attribute: str) -> object:
        return json.loads(tool("nix-instantiate", "--eval", "--strict", "--json", "nix/vm.nix", "-A", attribute,
                               "--arg", "authorizedKeys", keys, "--argstr", "hostName", "vm-eval", cwd=ROOT))

    assert value("config.services.openssh.settings.PasswordAuthentication") is False
    assert value("config.services.openssh.settings.PermitRootLogin") == "no"
    assert value("config.users.users.nixos.openssh.authorizedKeys.keys") == [KEY]
    assert value("config.networking.hostName") == "vm-eval"
    assert value("config.services.cloud-init.settings.datasource_list") == ["NoCloud", "ConfigDrive"]
    assert "console=ttyS0,115200" in value("config.boot.kernelParams")
    assert value("config.system.build.images.qemu.passthru.config.boot.growPartition") is True
    tool("nix-instantiate", "nix/vm.nix", "-A", "image", "--arg", "authorizedKeys", keys, cwd=ROOT)


# --- build-vm in the builder container ------------------------------------------

def test_build_vm_in_the_builder_container(engine, cache_image, tmp_path):
    """The fixture expression stands in for nix/vm.nix: settings in, qcow2 out, KVM passed when there."""
    output = tmp_path / "out" / "nixos.qcow2"
    outcome = invoke("build-vm", "--ssh-key-file", str(key_file(tmp_path)), "--hostname", "vm7", "--output", str(output),
                     env=FIXTURE_VM)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert outcome.stdout.strip() == f"{output} 1792 bytes (1048576 bytes virtual)"
    assert "fixture VM image for nixos@vm7, disk 8192 MiB, 1 key(s)" in outcome.stderr
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert ("using KVM (/dev/kvm)" if kvm_usable else "emulating the CPU with TCG") in outcome.stderr
    info = json.loads(tool("qemu-img", "info", "--output=json", str(output)))
    assert (info["format"], info["virtual-size"]) == ("qcow2", 1048576)
    assert sorted(p.name for p in output.parent.iterdir()) == ["nixos.qcow2"]  # no partial file beside it
    assert not engine.containers.list(all=True, filters={"label": "io.github.nix-ci.toolkit=one-off"})


def test_build_vm_refuses_without_a_key(tmp_path):
    output = tmp_path / "nixos.qcow2"
    outcome = invoke("build-vm", "--output", str(output), env={"HOME": str(tmp_path), **FIXTURE_VM})
    assert_one_line_error(outcome, "no SSH public key is configured, so nobody could log into the VM", "--ssh-key-file")
    assert not output.exists()


def test_build_vm_refuses_a_private_key(tmp_path):
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n")
    outcome = invoke("build-vm", "--ssh-key-file", str(private), "--output", str(tmp_path / "x.qcow2"), env=FIXTURE_VM)
    assert_one_line_error(outcome, f"{private} is a private key", f"{private}.pub")
    assert "BEGIN OPENSSH" not in outcome.stderr


# --- cidata: the seed disk, read back with the distribution's tools -------------------

def test_cidata_vfat_seed_read_back_with_dosfstools_and_mtools(tmp_path):
    need("mkfs.vfat", "mcopy", "mdir", "mtype", "fsck.vfat", "blkid")
    (tmp_path / "user-data").write_text("#cloud-config\nruncmd:\n  - [touch, /run/seeded]\n")
    (tmp_path / "network-config").write_text("version: 2\nethernets: {}\n")
    seed = tmp_path / "seed" / "cidata.img"
    outcome = invoke("cidata", "--user-data", str(tmp_path / "user-data"), "--network-config", str(tmp_path / "network-config"),
                     "--hostname", "vm7", "--instance-id", "iid-test", "--output", str(seed))
    assert outcome.code == 0, outcome.stderr
    digest = hashlib.sha256(seed.read_bytes()).hexdigest()
    assert outcome.stdout.split()[:5] == [str(seed), "vfat", str(seed.stat().st_size), "bytes", f"sha256:{digest}"]

    tool("fsck.vfat", "-n", str(seed))
    assert 'LABEL="cidata"' in tool("blkid", str(seed)) and 'TYPE="vfat"' in tool("blkid", str(seed))
    assert sorted(tool("mdir", "-b", "-i", str(seed), "::").split()) == ["::/meta-data", "::/network-config", "::/user-data"]
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    assert tool("mtype", "-i", str(seed), "::user-data", env=env) == (tmp_path / "user-data").read_text()
    assert tool("mtype", "-i", str(seed), "::network-config", env=env) == (tmp_path / "network-config").read_text()
    assert tool("mtype", "-i", str(seed), "::meta-data", env=env) == 'instance-id: "iid-test"\nlocal-hostname: "vm7"\n'
    assert sorted(p.name for p in seed.parent.iterdir()) == ["cidata.img"]

    # The same inputs give the same disk, byte for byte.
    again = invoke("cidata", "--user-data", str(tmp_path / "user-data"), "--network-config", str(tmp_path / "network-config"),
                   "--hostname", "vm7", "--instance-id", "iid-test", "--output", str(tmp_path / "again.img"))
    assert again.code == 0 and hashlib.sha256((tmp_path / "again.img").read_bytes()).hexdigest() == digest


def test_cidata_iso9660_seed_read_back_with_xorriso(tmp_path):
    need("xorriso", "blkid")
    (tmp_path / "meta-data").write_text("instance-id: iid-iso\nlocal-hostname: isohost\n")
    seed = tmp_path / "seed.iso"
    outcome = invoke("cidata", "--format", "iso9660", "--meta-data", str(tmp_path / "meta-data"), "--output", str(seed))
    assert outcome.code == 0, outcome.stderr
    assert "Volume Id    : cidata" in tool("xorriso", "-indev", str(seed), "-pvd_info")
    assert 'TYPE="iso9660"' in tool("blkid", str(seed)) and 'LABEL="cidata"' in tool("blkid", str(seed))
    listing = subprocess.run(["xorriso", "-indev", str(seed), "-ls", "/"], capture_output=True, text=True, check=True).stdout
    assert listing.split() == ["'meta-data'", "'user-data'"]
    out = tmp_path / "out"
    tool("xorriso", "-osirrox", "on", "-indev", str(seed), "-extract", "/", str(out))
    assert (out / "meta-data").read_text() == "instance-id: iid-iso\nlocal-hostname: isohost\n"
    assert (out / "user-data").read_text().startswith("#cloud-config\n")


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_cidata_unreadable_user_data(tmp_path, kind):
    user_data = tmp_path / "user-data"
    if kind == "directory":
        user_data.mkdir()
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    outcome = invoke("cidata", "--user-data", str(user_data), "--output", str(seed_dir / "cidata.img"))
    reason = "it does not exist" if kind == "missing" else "it is a directory"
    assert_one_line_error(outcome, f"cannot read the user-data file {user_data}: {reason}", "--user-data")
    assert list(seed_dir.iterdir()) == []  # no disk, no partial file, no work directory


def test_cidata_meta_data_file_and_hostname_conflict(tmp_path):
    (tmp_path / "meta-data").write_text("instance-id: x\n")
    outcome = invoke("cidata", "--meta-data", str(tmp_path / "meta-data"), "--hostname", "vm1",
                     "--output", str(tmp_path / "cidata.img"))
    assert_one_line_error(outcome, "both a meta-data file and a host name", "--meta-data")
    assert not (tmp_path / "cidata.img").exists()



# User-data cloud-init would reject is refused in one line, before any disk is made. Each holds
# SECRET, which nothing the task prints may show.
SECRET = "hunter2-do-not-print"
REJECTED_USER_DATA = {
    "not a mapping": (f"#cloud-config\n- {SECRET}\n", "top level: is a list, not a mapping of cloud-config keys; "),
    "wrong type": (f"#cloud-config\npackages: 5\npassword: {SECRET}\n", "packages: must be a list, not an integer; "),
    "invalid YAML": (f"#cloud-config\nruncmd: [echo {SECRET}\n", "line 3, column 1: is not valid YAML "),
}


def cloud_init_schema() -> Path:
    """cloud-init's cloud-config schema, where Debian's cloud-init package installs it."""
    if not cloudconfig.DEBIAN_CLOUD_CONFIG_SCHEMA.is_file():
        unavailable("cloud-init's schema is not installed; `bash .ci/setup` installs cloud-init")
    return cloudconfig.DEBIAN_CLOUD_CONFIG_SCHEMA


def test_cidata_default_seed_passes_cloud_inits_own_schema_check(tmp_path):
    need("mkfs.vfat", "mcopy", "mtype")
    cloud_init = shutil.which("cloud-init") or unavailable("cloud-init not installed; `bash .ci/setup` installs it")
    seed = tmp_path / "cidata.img"
    outcome = invoke("cidata", "--output", str(seed))
    assert outcome.code == 0, outcome.stderr
    user_data = tmp_path / "user-data"
    user_data.write_text(tool("mtype", "-i", str(seed), "::user-data", env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}))
    assert user_data.read_bytes() == cidata.DEFAULT_USER_DATA
    checked = subprocess.run([cloud_init, "schema", "--config-file", str(user_data)], capture_output=True, text=True)
    assert checked.returncode == 0 and "Valid cloud-config" in checked.stdout, checked


@pytest.mark.parametrize("existing", [False, True], ids=["no output yet", "an existing output"])
@pytest.mark.parametrize("case", REJECTED_USER_DATA)
def test_cidata_refuses_user_data_cloud_init_would_reject_before_any_disk(tmp_path, case, existing):
    if case == "wrong type":
        cloud_init_schema()
    content, expected = REJECTED_USER_DATA[case]
    user_data = tmp_path / "user-data"
    user_data.write_text(content)
    seed_dir = tmp_path / "seed"
    if existing:
        seed_dir.mkdir()
        (seed_dir / "cidata.img").write_bytes(b"the previous seed disk")
    outcome = invoke("cidata", "--user-data", str(user_data), "--output", str(seed_dir / "cidata.img"))
    assert_one_line_error(outcome, f"error: {user_data}: {expected}")
    assert outcome.stderr.strip().splitlines() == [outcome.error_line]  # that line alone
    assert SECRET not in outcome.stderr + outcome.stdout
    if existing:  # left as it was, and nothing beside it
        assert [p.name for p in seed_dir.iterdir()] == ["cidata.img"]
        assert (seed_dir / "cidata.img").read_bytes() == b"the previous seed disk"
    else:
        assert not seed_dir.exists()


def test_cidata_vm_cloud_config_schema_names_the_schema(tmp_path):
    # cloud-init's versions schema, which refers to the v1 schema by URL: it is read from beside it.
    schema = cloud_init_schema()
    for name in ("versions.schema.cloud-config.json", schema.name):
        shutil.copy(schema.parent / name, tmp_path / name)
    versions = tmp_path / "versions.schema.cloud-config.json"
    (tmp_path / "user-data").write_text("#cloud-config\npackages: 5\n")
    outcome = invoke("cidata", "--user-data", str(tmp_path / "user-data"), "--output", str(tmp_path / "cidata.img"),
                     env={"INVOKE_VM_CLOUD_CONFIG_SCHEMA": str(versions)})
    assert_one_line_error(outcome, "packages: must be a list, not an integer; ", f"({versions})")

    outcome = invoke("cidata", "--user-data", str(tmp_path / "user-data"), "--output", str(tmp_path / "cidata.img"),
                     env={"INVOKE_VM_CLOUD_CONFIG_SCHEMA": str(tmp_path / "missing.json")})
    assert_one_line_error(outcome, f"cannot read the cloud-config schema file {tmp_path / 'missing.json'}: it does not "
                                   "exist; pass a readable file to vm.cloud_config_schema")
    assert not (tmp_path / "cidata.img").exists()

# --- run-vm: qemu really started, then stopped ----------------------------------------

@pytest.fixture
def small_disks(tmp_path):
    """An empty qcow2 made with qemu-img, and a seed disk made with the toolkit."""
    need("qemu-img", "qemu-system-x86_64", "mkfs.vfat", "mcopy")
    image = tmp_path / "vmtest-disk.qcow2"
    tool("qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M")
    seed = tmp_path / "vmtest-seed.img"
    assert invoke("cidata", "--output", str(seed)).code == 0
    yield image, seed
    for pid in processes("qemu-system-x86_64", str(image)):  # only when a test failed: never leave a VM behind
        os.kill(pid, signal.SIGKILL)


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.mark.parametrize("kvm", [True, False], ids=["kvm", "tcg"])
def test_run_vm_starts_qemu_and_leaves_nothing_running(small_disks, kvm):
    if kvm and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm on this machine; the TCG case covers qemu's arguments")
    image, seed = small_disks
    port = free_port()
    args = ["run-vm", "--image", str(image), "--seed", str(seed), "--port", str(port), "--memory", "256"]
    process = subprocess.Popen([sys.executable, "-m", "invoke", *args, *([] if kvm else ["--no-kvm"])], cwd=ROOT,
                               env={**os.environ, **FIXTURE_CONFIG, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        os.set_blocking(process.stdout.fileno(), False)
        while b"SeaBIOS" not in seen and time.monotonic() < deadline and process.poll() is None:
            seen += process.stdout.read() or b""
            time.sleep(0.1)
        assert b"SeaBIOS" in seen, (seen, process.poll())  # the guest's serial console reaches our stdout
        assert seen.decode(errors="replace").splitlines()[0] == vm.ssh_command("nixos", "127.0.0.1", port)
        assert processes("qemu-system-x86_64", str(image)), "qemu is not running"
        assert port_in_use(port)  # qemu holds the SSH forward
    finally:
        process.send_signal(signal.SIGTERM)  # to invoke only: it must pass it on to qemu
        _, stderr = process.communicate(timeout=30)
    assert ("TCG" in stderr.decode()) != kvm, stderr
    assert process.returncode == 0, stderr.decode()
    assert not processes("qemu-system-x86_64", str(image)), "qemu outlived run-vm"
    assert not port_in_use(port)


def test_run_vm_port_already_taken(small_disks):
    image, seed = small_disks
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outcome = invoke("run-vm", "--image", str(image), "--seed", str(seed), "--port", str(port))
    assert_one_line_error(outcome, f"port {port} on 127.0.0.1 is already taken", "--port")
    assert not processes("qemu-system-x86_64", str(image))


def test_run_vm_missing_image(tmp_path):
    outcome = invoke("run-vm", "--image", str(tmp_path / "nope.qcow2"), "--without-seed")
    assert_one_line_error(outcome, f"the VM image {tmp_path / 'nope.qcow2'} does not exist", "invoke build-vm")


def test_run_vm_missing_seed(small_disks, tmp_path):
    image, _ = small_disks
    outcome = invoke("run-vm", "--image", str(image), "--seed", str(tmp_path / "nope.img"))
    assert_one_line_error(outcome, "the seed disk", "does not exist", "invoke cidata")


# --- push-vm and pull-vm: OCI artifacts in the registry ------------------------------------

def test_push_and_pull_a_qcow2_with_its_seed(registry, small_disks, tmp_path):
    image, seed = small_disks
    target = f"{registry}/vmtest/nixos:{os.getpid()}"
    started = time.monotonic()
    pushed = invoke("push-vm", "--to", target, "--image", str(image), "--seed", str(seed))
    assert pushed.code == 0, pushed.stderr
    pinned, *layers = pushed.stdout.split("\n")[:3]
    name, digest = pinned.split("@")
    assert name == f"{registry}/vmtest/nixos" and digest.startswith("sha256:")

    manifest = requests.get(f"http://{registry}/v2/vmtest/nixos/manifests/{digest}",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == digest
    body = manifest.json()
    assert body["artifactType"] == vm.ARTIFACT_TYPE
    assert [(layer["mediaType"], layer["annotations"]["org.opencontainers.image.title"]) for layer in body["layers"]] == [
        (vm.DISK_MEDIA_TYPE, image.name), (vm.SEED_MEDIA_TYPES["vfat"], seed.name)]
    assert body["layers"][0]["digest"] == "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    assert layers[0].split()[:2] == [image.name, body["layers"][0]["digest"]]

    pulled = invoke("pull-vm", target, "--to", str(tmp_path / "pulled"))
    assert pulled.code == 0, pulled.stderr
    assert pulled.stdout.splitlines()[0] == pinned
    for original in (image, seed):
        copy = tmp_path / "pulled" / original.name
        assert copy.read_bytes() == original.read_bytes()
        assert f"{copy} sha256:{hashlib.sha256(original.read_bytes()).hexdigest()} verified" in pulled.stdout
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == sorted([image.name, seed.name])
    print(f"push + pull of {image.stat().st_size + seed.stat().st_size} bytes: {time.monotonic() - started:.2f} s")


def test_pull_refuses_a_blob_that_does_not_match_its_digest(small_disks, tmp_path):
    image, _ = small_disks
    with registries.registry(tmp_path / "registry") as own:
        pushed = invoke("push-vm", "--to", f"{own}/vmtest/nixos:1", "--image", str(image), "--without-seed")
        assert pushed.code == 0, pushed.stderr
        disk_digest = pushed.stdout.splitlines()[1].split()[1]
        stored = registries.blob_path(tmp_path / "registry", disk_digest)
        stored.write_bytes(stored.read_bytes()[:-1] + b"!")  # one byte changed behind the registry's back
        outcome = invoke("pull-vm", f"{own}/vmtest/nixos:1", "--to", str(tmp_path / "pulled"))
    assert_one_line_error(outcome, f"{image.name} of {own}/vmtest/nixos", f"not {disk_digest}", "push it again")
    assert list((tmp_path / "pulled").iterdir()) == []  # nothing half-pulled


def test_pull_refuses_an_artifact_of_another_type(registry, tmp_path):
    (tmp_path / "notes.txt").write_text("not a VM\n")
    oras.push(f"{registry}/vmtest/notes:1", [oras.Blob(tmp_path / "notes.txt", "text/plain")],
              artifact_type="application/vnd.example.notes.v1")
    outcome = invoke("pull-vm", f"{registry}/vmtest/notes:1", "--to", str(tmp_path / "pulled"))
    assert_one_line_error(outcome, "is not a VM image", "application/vnd.example.notes.v1")


def test_push_vm_credentials(small_disks, tmp_path):
    image, _ = small_disks
    with registries.registry(tmp_path / "registry", password="right-password") as own:
        env = {"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "wrong-password", "REGISTRY_HOST": own}
        refused = invoke("push-vm", "--to", f"{own}/vmtest/nixos:1", "--image", str(image), "--without-seed", env=env)
        assert_one_line_error(refused, f"the registry {own} refused the credentials", "REGISTRY_USERNAME")
        assert "wrong-password" not in refused.stdout + refused.stderr
        env["REGISTRY_PASSWORD"] = "right-password"
        accepted = invoke("push-vm", "--to", f"{own}/vmtest/nixos:1", "--image", str(image), "--without-seed", env=env)
        assert accepted.code == 0, accepted.stderr
        assert "right-password" not in accepted.stdout + accepted.stderr


def test_push_vm_to_a_registry_that_does_not_answer(small_disks):
    image, _ = small_disks
    port = free_port()
    started = time.monotonic()
    outcome = invoke("push-vm", "--to", f"127.0.0.1:{port}/vm:1", "--image", str(image), "--without-seed")
    assert_one_line_error(outcome, f"the registry 127.0.0.1:{port} does not answer")
    assert time.monotonic() - started < 30  # no retry loop
