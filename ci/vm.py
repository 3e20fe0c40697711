"""NixOS VM images: the user's settings, the qcow2 build in the builder
container, running it with qemu, and moving it through registries.

The SSH keys, host name and disk size are the user's, read from their
configuration at run time and handed to nix/vm.nix as a JSON file; none is
ever written in the repository. An image nobody could log into is refused
before anything runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import cidata
from .builder import BUILDER_HINT, OFFLINE_HINT, inputs_tar
from .containers import check_port_free
from .core.errors import BuildFailed, CommandFailed, ConfigError, ImageNotFound, IntegrityError, ToolkitError
from .core.files import writable_directory
from .tools import docker, nix, oras, qemu
from .tools.docker import archive

if TYPE_CHECKING:
    from .remote import RemoteBuilders

log = logging.getLogger(__name__)

# The OCI artifact a VM image travels as: one layer for the disk, one for its seed.
ARTIFACT_TYPE = "application/vnd.nix-ci.vm-image.v1"
DISK_MEDIA_TYPE = "application/vnd.nix-ci.vm-image.disk.v1.qcow2"
SEED_MEDIA_TYPES = {
    "vfat": "application/vnd.nix-ci.vm-image.cidata.v1.vfat",
    "iso9660": "application/vnd.nix-ci.vm-image.cidata.v1.iso9660",
}
VIRTUAL_SIZE_ANNOTATION = "io.github.nix-ci.vm.virtual-size"
# The only file names pull-vm writes, by kind.
DISK_SUFFIXES = (".qcow2",)
SEED_SUFFIXES = (".img", ".iso")
IMAGE_HINT = "pass a qcow2 that `invoke build-vm` wrote (or one made without -b or data_file)"

NO_KEY_HINT = ("pass --ssh-key-file ~/.ssh/id_ed25519.pub (or --ssh-key 'ssh-ed25519 AAAA...'), or list key files "
               "under vm.ssh_key_files in ~/.invoke.yaml or in INVOKE_VM_SSH_KEY_FILES (':'-separated)")

_PUBLIC_KEY = re.compile(
    r"^(?:(?P<options>\S+)\s+)??"
    r"(?P<type>ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r"\s+(?P<key>[A-Za-z0-9+/]+={0,3})(?:\s+.*)?$"
)
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

# Where the build inputs go in the builder container.
BUILD_DIR = "/vm-build"


@dataclass(frozen=True)
class VmSettings:
    """What nix/vm.nix is told about the user's VM."""

    authorized_keys: tuple[str, ...]
    user: str = "nixos"
    hostname: str = "nixos"
    disk_size: int | str = 8192  # MiB, or "auto"

    def to_json(self) -> str:
        """The settingsFile nix/vm.nix reads."""
        return json.dumps({"authorizedKeys": list(self.authorized_keys), "user": self.user,
                           "hostName": self.hostname, "diskSize": self.disk_size}, indent=2) + "\n"


def as_list(value: object, separator: str) -> list[str]:
    """A config value that may be a list (invoke.yaml) or one string (an INVOKE_* variable)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()]
    return [str(part) for part in value]  # type: ignore[attr-defined]


def read_keys(keys: Iterable[str], key_files: Iterable[str]) -> tuple[str, ...]:
    """The public keys given directly and those in `key_files`, checked; duplicates dropped."""
    found: list[str] = []
    for n, key in enumerate(keys, 1):
        found.append(check_key(key, f"--ssh-key {n}"))
    for name in key_files:
        path = Path(name).expanduser()
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text file"
            raise ConfigError(f"cannot read the SSH key file {path}: {reason}",
                              "give the path of a public key file, e.g. ~/.ssh/id_ed25519.pub") from None
        if "PRIVATE KEY" in text:
            raise ConfigError(f"{path} is a private key", f"give its public half instead: {path}.pub")
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise ConfigError(f"the SSH key file {path} holds no key", "give a file with at least one public key line")
        found += [check_key(line, f"line {n} of {path}") for n, line in lines]
    return tuple(dict.fromkeys(found))


def check_key(line: str, where: str) -> str:
    """`line`, checked to be an SSH public key. It is never shown: a file given here by mistake may be a
    secret (a private key, /etc/shadow), and error lines reach logs and CI annotations."""
    if not _PUBLIC_KEY.match(line.strip()):
        raise ConfigError(f"{where} is not an SSH public key",
                          "give lines such as `ssh-ed25519 AAAA... me@laptop` (the content of a .pub file)")
    return line.strip()


def settings(*, keys: Iterable[str], key_files: Iterable[str], user: str, hostname: str,
             disk_size: int | str) -> VmSettings:
    """The checked settings; ConfigError if no key is given: nobody could log in."""
    authorized = read_keys(keys, key_files)
    if not authorized:
        raise ConfigError("no SSH public key is configured, so nobody could log into the VM", NO_KEY_HINT)
    if not _USER.match(user):
        raise ConfigError(f"'{user}' is not a valid user name", "use lowercase letters, digits, '_' and '-'")
    cidata.check_hostname(hostname)
    return VmSettings(authorized, user, hostname, _disk_size(disk_size))


def _disk_size(value: int | str) -> int | str:
    if str(value) == "auto":
        return "auto"
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1024:
        raise ConfigError(f"disk size '{value}' is not a number of MiB of at least 1024, nor 'auto'",
                          "set vm.disk_size (MiB), e.g. 8192")
    return size


@dataclass(frozen=True)
class BuiltDisk:
    """A qcow2 build-vm wrote, as qemu-img reads it."""

    path: Path
    size: int  # bytes on the host
    virtual_size: int  # bytes the guest sees
    store_path: str  # where Nix put it in the builder
    kvm: bool  # whether the build's VM had KVM


def build_vm(root: Path, *, builder: str, expression: str, pkgs: str, vm_settings: VmSettings,
             output: Path, accel: qemu.Acceleration, remote: RemoteBuilders | None = None) -> BuiltDisk:
    """nix-build the image attribute of `expression` in a container of `builder`, and copy the qcow2 to `output`.
    `remote` (ci.remote): Nix builds the derivations on those builders."""
    for what, relative in (("VM expression", expression), ("package set", pkgs)):
        if not (root / relative).exists():
            raise ConfigError(f"the {what} {relative} does not exist under {root}",
                              f"set vm.{'expression' if what == 'VM expression' else 'pkgs'} to a path of the project")
    docker.require_image(builder, BUILDER_HINT)
    output = output.absolute()
    writable_directory(output.parent)
    command = [
        "nix-build", f"{BUILD_DIR}/{expression}", "-A", "image", "--no-out-link",
        "--arg", "pkgs", f"import {BUILD_DIR}/{pkgs} {{ }}",
        "--argstr", "settingsFile", f"{BUILD_DIR}/settings.json",
        # make-disk-image runs in a qemu VM and asks for the kvm feature; without
        # /dev/kvm its qemu falls back to TCG, slowly but correctly.
        "--option", "system-features", "kvm nixos-test benchmark big-parallel",
    ]
    log.info("building %s in %s (%s)", expression, builder, accel.reason)
    inputs = inputs_tar(root, [expression, pkgs], under=BUILD_DIR,
                        files={f"{BUILD_DIR}/settings.json": vm_settings.to_json().encode()})
    from .remote import checked_options  # a few lines; loads nothing more

    with docker.one_off_container(builder, command, files=inputs, no_image=BUILDER_HINT,
                                  devices=[str(qemu.KVM_DEVICE)] if accel.kvm else [],
                                  **checked_options(remote, builder)) as container:
        finished = container.run(lambda line: log.info("%s", line))
        if finished.status != 0:
            raise nix.build_error(f"the Nix build of {expression}", finished.stderr_tail, fallback=f"exit {finished.status}",
                                  offline=f"the VM build needs sources that are not in the builder's store "
                                          f"({pkgs} or a package): no network",
                                  offline_hint=OFFLINE_HINT)
        store_path = _store_path(finished.stdout)
        with tempfile.TemporaryDirectory(prefix=".build-vm-", dir=output.parent) as work:
            partial = _extract_qcow2(container.copy_out(store_path), Path(work), store_path)
            info = qemu.disk_info(partial)
            if info.format != "qcow2":
                raise BuildFailed(f"{expression} built a {info.format} disk, not a qcow2",
                                  "build the image attribute of nix/vm.nix")
            qemu.check_disk(partial)
            os.chmod(partial, 0o644)
            os.replace(partial, output)
    return BuiltDisk(output, output.stat().st_size, info.virtual_size, store_path, accel.kvm)


def _store_path(stdout: str) -> str:
    paths = [line.strip() for line in stdout.splitlines() if line.strip().startswith("/nix/store/")]
    if not paths:
        raise BuildFailed("nix-build printed no store path", "check the expression's image attribute")
    return paths[-1]


def _extract_qcow2(stream: Iterator[bytes], work: Path, store_path: str) -> Path:
    """The one .qcow2 file of the tar stream, written to `work`."""
    with archive.tar_stream(stream) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".qcow2"):
                target = work / "image.qcow2"
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                return target
    raise BuildFailed(f"the build result {store_path} holds no .qcow2 file", "build the image attribute of nix/vm.nix")


def prepare_vm(image: Path, seed: Path | None, *, host: str, port: int, memory: int, cpus: int,
               want_kvm: bool, cpu: str | None = None) -> qemu.VmSpec:
    """Check the image, the seed disk and the port, and choose the acceleration: what run-vm will start."""
    if not image.is_file():
        raise ImageNotFound(f"the VM image {image} does not exist", "build it with `invoke build-vm`, or pass --image PATH")
    qemu.standalone_qcow2(image, IMAGE_HINT)
    if seed is not None:
        if not seed.is_file():
            raise ConfigError(f"the seed disk {seed} does not exist", "make it with `invoke cidata`, or pass --without-seed")
        cidata.detect_format(seed)
    check_port_free(host, port, "stop what uses it (another run-vm?) or pass --port")
    accel = qemu.acceleration(want_kvm)
    if not accel.kvm:
        log.warning("%s", accel.reason)
    return qemu.VmSpec(image=image.absolute(), seed=seed.absolute() if seed else None, accel=accel,
                       ssh_host=host, ssh_port=port, memory_mib=memory, cpus=cpus, cpu=cpu)


def start(spec: qemu.VmSpec) -> None:
    """Run the VM on this terminal until it powers off (or qemu is told to quit)."""
    code = qemu.run_vm(spec)
    if code != 0:
        raise CommandFailed(f"qemu-system-x86_64 exited {code}",
                            "its message is above; if it is about the CPU or an MSR, set vm.cpu (e.g. qemu64)")


def ssh_command(user: str, host: str, port: int) -> str:
    """Each boot of a snapshot VM makes new host keys, so known_hosts is not kept for it."""
    return (f"ssh -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"{user}@{host}")


def push_vm(reference: str, image: Path, seed: Path | None, *, insecure: bool = False) -> oras.Artifact:
    """Push the qcow2 (and its seed disk) as one OCI artifact of type ARTIFACT_TYPE."""
    if not image.is_file():
        raise ImageNotFound(f"the VM image {image} does not exist", "build it with `invoke build-vm`, or pass --image PATH")
    _check_file_name(image, DISK_SUFFIXES, "VM image")
    info = qemu.standalone_qcow2(image, IMAGE_HINT)
    blobs = [oras.Blob(image, DISK_MEDIA_TYPE, annotations={VIRTUAL_SIZE_ANNOTATION: str(info.virtual_size)})]
    if seed is not None:
        if not seed.is_file():
            raise ConfigError(f"the seed disk {seed} does not exist", "make it with `invoke cidata`, or pass --without-seed")
        _check_file_name(seed, SEED_SUFFIXES, "seed disk")
        blobs.append(oras.Blob(seed, SEED_MEDIA_TYPES[cidata.detect_format(seed)]))
    return oras.push(reference, blobs, artifact_type=ARTIFACT_TYPE, insecure=insecure)


def _check_file_name(path: Path, suffixes: tuple[str, ...], what: str) -> None:
    """Only names pull-vm will write: what push-vm sends can be pulled back."""
    if path.name.startswith(".") or path.suffix not in suffixes:
        raise ConfigError(f"the {what} {path} is not named *{' or *'.join(suffixes)}",
                          "give it such a name: pull-vm writes only files named so")


def pull_vm(reference: str, directory: Path, *, insecure: bool = False) -> oras.PulledFiles:
    """Pull a VM image artifact into `directory`.

    Only what the artifact type declares is written: one qcow2 disk (*.qcow2) and at most one seed disk
    (*.img or *.iso), under plain names. Every file is checked against its digest, the disk to be a
    qcow2 that stands alone (no backing or external data file) and whose metadata is consistent, the
    seed to be a vfat or ISO 9660 disk, all before any of them replaces a file in `directory`.
    """
    with oras.opened(reference, insecure=insecure) as remote:
        artifact = remote.artifact
        if artifact.artifact_type != ARTIFACT_TYPE:
            raise ConfigError(f"{reference} is not a VM image (its artifact type is '{artifact.artifact_type[:100]}')",
                              "pull it with a tool that knows that type")
        _check_vm_layers(artifact)
        return remote.download(directory, check=lambda files: _check_pulled(artifact.pinned, files))


def _check_vm_layers(artifact: oras.Artifact) -> None:
    hint = "push the image again with `invoke push-vm`"
    seeds = set(SEED_MEDIA_TYPES.values())
    kinds = []
    for layer, name in zip(artifact.layers, oras.file_names(artifact), strict=True):
        if layer.media_type == DISK_MEDIA_TYPE:
            suffixes, kind = DISK_SUFFIXES, "disk"
        elif layer.media_type in seeds:
            suffixes, kind = SEED_SUFFIXES, "seed"
        else:
            raise IntegrityError(f"{artifact.pinned} has a layer of type {layer.media_type[:100]}, "
                                 "which VM images do not have", hint)
        if Path(name).suffix not in suffixes:
            raise IntegrityError(f"{artifact.pinned} has a {kind} layer titled {name[:80]!r}, not *{' or *'.join(suffixes)}",
                                 hint)
        kinds.append(kind)
    if kinds.count("disk") != 1 or kinds.count("seed") > 1:
        raise IntegrityError(f"{artifact.pinned} is not a VM image: it has {kinds.count('disk')} disks and "
                             f"{kinds.count('seed')} seed disks, not one disk and at most one seed", hint)


def _check_pulled(pinned: str, files: Iterable[tuple[oras.Descriptor, Path]]) -> None:
    """The pulled files, before they replace anything: the disk stands alone and is consistent, the seed is a seed."""
    for layer, path in files:
        where = f"{layer.title} of {pinned}"
        if layer.media_type == DISK_MEDIA_TYPE:
            try:
                qemu.standalone_qcow2(path, "")
                qemu.check_disk(path)
            except ToolkitError as exc:
                raise IntegrityError(f"{where} {exc.message.removeprefix(str(path)).strip()}",
                                     "push an image built by `invoke build-vm`; nothing was written") from None
        else:
            try:
                cidata.detect_format(path)
            except ConfigError:
                raise IntegrityError(f"{where} is neither a vfat nor an ISO 9660 disk",
                                     "push the seed made by `invoke cidata`; nothing was written") from None
