"""qemu and qemu-img: inspecting disk images and starting a VM on them.

The VM's command line is built by a pure function (`vm_command`) from a
typed description (`VmSpec`), so both the KVM and the emulated (TCG) forms
can be checked without starting anything. Starting it hands the terminal to
qemu: with -nographic the guest's serial console is the user's terminal.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..core import process
from ..core.errors import CommandFailed, ConfigError, ToolkitError

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class DiskInfo:
    """A disk image as `qemu-img info` describes it."""

    path: Path
    format: str  # "qcow2", "raw", ...
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes the file takes on the host
    backing_file: str = ""  # another file the image reads what it lacks from ("" for none)
    data_file: str = ""  # an external file holding the image's data (qcow2's data-file; "" for none)

    @classmethod
    def from_json(cls, path: Path, data: dict) -> DiskInfo:
        specific = (data.get("format-specific") or {}).get("data") or {}
        return cls(path, data["format"], int(data["virtual-size"]), int(data.get("actual-size", 0)),
                   str(data.get("backing-filename") or data.get("full-backing-filename") or ""),
                   str(specific.get("data-file") or ""))


def disk_info(path: Path, fmt: str | None = None) -> DiskInfo:
    """Format and sizes of the disk image at `path` (read as `fmt` when given, else probed); ConfigError when it is not one.

    -U: the image may be open in a running VM; info only reads it."""
    try:
        result = process.run("qemu-img", ["info", "-U", "--output=json", *(["-f", fmt] if fmt else []), str(path)])
        return DiskInfo.from_json(path, json.loads(result.output[result.output.index("{"):]))
    except CommandFailed as exc:
        raise ConfigError(f"{path} is not a disk image qemu can read: {exc.message.split(': ', 1)[-1]}",
                          "check the path, or build the image again") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"qemu-img could not describe {path}", "check the path, or build the image again") from None


QCOW2_MAGIC = b"QFI\xfb"
_EXTERNAL_DATA_FILE = 1 << 2  # qcow2 incompatible feature bit: the data lives in another file


def qcow2_header_problem(header: bytes) -> str | None:
    """What makes a qcow2 header unfit for a disk that must stand alone (a backing file, an external data
    file, not qcow2 at all); None when it is fit. Read from the bytes alone, so that no tool opens any
    file the header names."""
    if len(header) < 72 or header[:4] != QCOW2_MAGIC:
        return "is not a qcow2 disk"
    version, backing_offset, backing_size = struct.unpack(">IQI", header[4:20])
    if version not in (2, 3):
        return f"is a qcow2 disk of version {version}, which qemu does not know"
    if backing_offset or backing_size:
        return "names a backing file, so it would read another file of this machine"
    if version == 3 and struct.unpack(">Q", header[72:80])[0] & _EXTERNAL_DATA_FILE:
        return "keeps its data in an external file, so it would read another file of this machine"
    return None


def standalone_qcow2(path: Path, hint: str) -> DiskInfo:
    """The qcow2 at `path`, checked to stand alone: no backing file, no external data file (by its header,
    then by qemu-img's JSON); ConfigError with `hint` otherwise. Every qcow2 the toolkit did not build
    itself goes through here before qemu reads it or it leaves this machine."""
    try:
        with open(path, "rb") as disk:
            header = disk.read(4096)
    except OSError as exc:
        raise ConfigError(f"cannot read the VM image {path}: {exc.strerror}", hint) from None
    problem = qcow2_header_problem(header)
    if problem is None:
        info = disk_info(path, "qcow2")
        if info.backing_file:
            problem = "names a backing file, so it would read another file of this machine"
        elif info.data_file:
            problem = "keeps its data in an external file, so it would read another file of this machine"
    if problem is not None:
        raise ConfigError(f"{path} {problem}", hint)
    return info


def check_disk(path: Path) -> None:
    """`qemu-img check`: the image's metadata (refcounts, tables) is consistent."""
    try:
        process.run("qemu-img", ["check", "-U", "-f", "qcow2", str(path)])
    except CommandFailed as exc:
        raise ToolkitError(f"{path} is damaged: {exc.message.split(': ', 1)[-1]}",
                           "build or pull the image again", details=exc.details) from None


def create_disk(path: Path, size: str, fmt: str = "qcow2") -> DiskInfo:
    """`qemu-img create`: an empty disk image of `size` (e.g. 64M)."""
    process.run("qemu-img", ["create", "-q", "-f", fmt, str(path), size])
    return disk_info(path)


@dataclass(frozen=True)
class Acceleration:
    """How the VM runs: with KVM, or emulated by TCG (and why)."""

    kvm: bool
    reason: str  # for the user: why this choice

    @property
    def name(self) -> str:
        return "kvm" if self.kvm else "tcg"


def acceleration(want_kvm: bool = True, device: Path = KVM_DEVICE) -> Acceleration:
    """KVM when asked for and `device` can be opened for reading and writing, else TCG."""
    if not want_kvm:
        return Acceleration(False, "KVM turned off (--no-kvm): emulating the CPU with TCG, which is much slower")
    if not device.exists():
        return Acceleration(False, f"no {device} on this machine: emulating the CPU with TCG, which is much slower")
    if not os.access(device, os.R_OK | os.W_OK):
        return Acceleration(False, f"{device} cannot be opened by this user (add it to group kvm): "
                                   "emulating the CPU with TCG, which is much slower")
    return Acceleration(True, f"using KVM ({device})")


@dataclass(frozen=True)
class VmSpec:
    """Everything qemu is told about the VM."""

    image: Path  # the system disk (qcow2); never written: snapshot mode
    seed: Path | None  # the cloud-init seed disk (vfat or iso9660), read-only
    accel: Acceleration
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    memory_mib: int = 2048
    cpus: int = 2
    name: str = "nixos"
    cpu: str | None = None  # qemu's -cpu; None: KVM_CPU with KVM, TCG_CPU without


# The host's CPU, less the ARCH_CAPABILITIES MSR: nested hypervisors (CI
# runners, cloud VMs) often refuse to set it and qemu 7.2 then aborts ("failed
# to set MSR 0x10a"). The guest only loses the CPU's report of which
# speculative-execution flaws it is immune to, and turns mitigations on.
KVM_CPU = "host,-arch-capabilities"
# Without KVM, every CPU feature TCG can emulate.
TCG_CPU = "max"


def _option_value(text: str) -> str:
    # qemu's option syntax splits on commas; a comma in a value is written twice.
    return text.replace(",", ",,")


def vm_command(spec: VmSpec) -> list[str]:
    """The qemu-system-x86_64 arguments (without the program) for `spec`."""
    cpu = spec.cpu or (KVM_CPU if spec.accel.kvm else TCG_CPU)
    machine = ["-machine", f"accel={spec.accel.name}", "-cpu", cpu]
    args = [
        "-name", _option_value(spec.name),
        *machine,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus),
        # The system disk; writes go to a temporary overlay and are lost on exit.
        "-drive", f"file={_option_value(str(spec.image))},if=virtio,format=qcow2,snapshot=on",
    ]
    if spec.seed is not None:
        # cloud-init finds the seed by its label (cidata), whatever the bus.
        args += ["-drive", f"file={_option_value(str(spec.seed))},if=virtio,format=raw,readonly=on"]
    args += [
        # User-mode networking: outbound NAT, and the guest's SSH on one host port only.
        "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:{spec.ssh_host}:{spec.ssh_port}-:22",
        # No window: the serial console (and qemu's monitor, Ctrl-a c) on this terminal.
        "-nographic",
        # A reboot of the guest ends qemu, as a power-off does.
        "-no-reboot",
    ]
    return args


def run_vm(spec: VmSpec) -> int:
    """Start the VM with its serial console on this terminal; return qemu's exit code once it stops."""
    log.info("starting %s with %s; Ctrl-a x quits", spec.image, "KVM" if spec.accel.kvm else "TCG emulation")
    return process.run_attached(QEMU, vm_command(spec))
