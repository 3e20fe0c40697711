"""cloud-init NoCloud seed disks: a small disk labelled "cidata" holding
user-data and meta-data (and optionally vendor-data and network-config).

#cloud-config user-data is checked first (ci.cloudconfig). The disk is vfat,
as in the seed experiment (mkfs.vfat + mcopy), or ISO 9660 (xorriso). It is
made beside its destination, read back with the same tools to check its
label, file names and contents, and only then renamed into place: a failure
leaves no disk behind. The same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .cloudconfig import check_user_data
from .core.errors import ConfigError, ToolkitError
from .core.files import output as output_place
from .core.files import read_input
from .tools import fat, iso

log = logging.getLogger(__name__)

LABEL = "cidata"
FORMATS = ("vfat", "iso9660")
# The files NoCloud reads, in the order they are written.
SEED_NAMES = ("user-data", "meta-data", "vendor-data", "network-config")
# The date of every file and of the volume: FAT dates start in 1980.
FIXED_DATE = 946684800  # 2000-01-01T00:00:00Z
MIB = 1024 * 1024

_HOSTNAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")

# The user-data written when none is given. cloud-init refuses a #cloud-config
# that is not a mapping (a comment alone is YAML null), so this is the empty
# mapping: valid, and it changes nothing. Any key would make cloud-init act on
# the VM, which the image configures itself (nix/vm.nix: user, keys, SSH).
DEFAULT_USER_DATA = (b"#cloud-config\n"
                     b"# No user-data was given to `invoke cidata`: an empty mapping, so that\n"
                     b"# cloud-init applies nothing beyond the image's own configuration.\n"
                     b"{}\n")


@dataclass(frozen=True)
class SeedFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Seed:
    """A seed disk as it was read back after writing."""

    path: Path
    format: str  # "vfat" or "iso9660"
    label: str
    size: int  # bytes
    digest: str  # sha256:... of the whole disk
    files: tuple[SeedFile, ...]


def meta_data(*, instance_id: str, hostname: str) -> bytes:
    """NoCloud meta-data for `hostname`. JSON strings are valid YAML scalars, so any value is quoted safely."""
    check_hostname(hostname)
    return f"instance-id: {json.dumps(instance_id)}\nlocal-hostname: {json.dumps(hostname)}\n".encode()


def default_instance_id(user_data: bytes, network_config: bytes | None) -> str:
    """Changes when the user-data or network-config does, so that cloud-init applies the new one."""
    digest = hashlib.sha256(user_data + b"\0" + (network_config or b"")).hexdigest()
    return f"iid-{digest[:16]}"


def check_hostname(hostname: str) -> str:
    if not _HOSTNAME.match(hostname):
        raise ConfigError(f"'{hostname}' is not a valid host name",
                          "use 1 to 63 letters, digits and '-', not starting or ending with '-'")
    return hostname


def make_seed(
    output: Path,
    *,
    fmt: str = "vfat",
    user_data: Path | None = None,
    meta_data_file: Path | None = None,
    vendor_data: Path | None = None,
    network_config: Path | None = None,
    hostname: str | None = None,
    instance_id: str | None = None,
    cloud_config_schema: Path | None = None,
) -> Seed:
    """Write a NoCloud seed disk at `output` and return it as read back.

    Without `user_data`, DEFAULT_USER_DATA (an empty mapping) is written.
    #cloud-config user-data is checked first (see check_user_data) against
    `cloud_config_schema`, default cloud-init's own when installed. Without
    `meta_data_file`, meta-data is made from `hostname` and `instance_id`
    (default: one derived from the user-data).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown seed format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    if meta_data_file is not None and (hostname is not None or instance_id is not None):
        raise ConfigError("both a meta-data file and a host name or instance id were given",
                          "put local-hostname and instance-id in the meta-data file, or drop --meta-data")
    contents: dict[str, bytes] = {}
    if user_data is not None:
        contents["user-data"] = read_input(user_data, "user-data", "--user-data")
        check_user_data(contents["user-data"], str(user_data), cloud_config_schema)
    else:
        contents["user-data"] = DEFAULT_USER_DATA
    extra = {name: read_input(path, name, f"--{name}") for name, path in
             (("vendor-data", vendor_data), ("network-config", network_config)) if path is not None}
    if meta_data_file is not None:
        contents["meta-data"] = read_input(meta_data_file, "meta-data", "--meta-data")
    else:
        contents["meta-data"] = meta_data(
            instance_id=instance_id or default_instance_id(contents["user-data"], extra.get("network-config")),
            hostname=hostname or "nixos",
        )
    contents.update(extra)
    contents = {name: contents[name] for name in SEED_NAMES if name in contents}
    return write_seed(output, contents, fmt)


def write_seed(output: Path, contents: Mapping[str, bytes], fmt: str) -> Seed:
    """Make the disk beside `output`, check it, then rename it into place."""
    with output_place(output, "file", "--output") as output, \
            tempfile.TemporaryDirectory(prefix=".cidata-", dir=output.parent) as work:
        sources = {}
        for name, data in contents.items():
            source = Path(work) / name
            source.write_bytes(data)
            os.utime(source, (FIXED_DATE, FIXED_DATE))
            sources[name] = source
        partial = Path(work) / "disk"
        if fmt == "vfat":
            fat.make(partial, label=LABEL, size=vfat_size(contents), files=sources)
        else:
            iso.make(partial, volume_id=LABEL, files=sources, date=FIXED_DATE)
        seed = read_back(partial, fmt)
        verify(seed, contents)
        os.chmod(partial, 0o644)
        os.replace(partial, output)
    return Seed(output, seed.format, seed.label, seed.size, seed.digest, seed.files)


def vfat_size(contents: Mapping[str, bytes]) -> int:
    """Room for the files plus FAT12's own structures; at least the seed's 2 MiB."""
    needed = sum(len(data) + 4096 for data in contents.values()) + 256 * 1024
    return max(2 * MIB, -(-needed // MIB) * MIB)


def read_back(disk: Path, fmt: str) -> Seed:
    """Read a seed disk with the filesystem tools: label, files and their digests."""
    tool = fat if fmt == "vfat" else iso
    tool.check(disk)
    label = fat.label(disk) if fmt == "vfat" else iso.volume_id(disk)
    files = []
    with tempfile.TemporaryDirectory(prefix="cidata-read-") as out:
        for name in tool.names(disk):
            data = tool.extract(disk, name, Path(out) / name).read_bytes()
            files.append(SeedFile(name, len(data), hashlib.sha256(data).hexdigest()))
    return Seed(disk, fmt, label, disk.stat().st_size, f"sha256:{file_sha256(disk)}", tuple(files))


def verify(seed: Seed, contents: Mapping[str, bytes]) -> None:
    """The disk holds exactly `contents` under label cidata."""
    problems = []
    if seed.label != LABEL:
        problems.append(f"label is '{seed.label}', not '{LABEL}'")
    found = {f.name: f.sha256 for f in seed.files}
    if sorted(found) != sorted(contents):
        problems.append(f"files are {sorted(found)}, not {sorted(contents)}")
    problems += [f"{name} differs from its source" for name, data in contents.items()
                 if name in found and found[name] != hashlib.sha256(data).hexdigest()]
    if problems:
        raise ToolkitError(f"the {seed.format} seed disk read back wrong: {'; '.join(problems)}",
                           "this is a bug in the toolkit or the filesystem tools; the disk was not kept")


def detect_format(path: Path) -> str:
    """"iso9660" or "vfat", from the disk's first sectors; ConfigError for anything else."""
    try:
        with open(path, "rb") as disk:
            head = disk.read(32774)
    except OSError as exc:
        raise ConfigError(f"cannot read the seed disk {path}: {exc.strerror}", "make it with `invoke cidata`") from None
    if head[32769:32774] == b"CD001":
        return "iso9660"
    if len(head) >= 512 and head[510:512] == b"\x55\xaa" and b"FAT" in head[54:90]:
        return "vfat"
    raise ConfigError(f"{path} is neither a vfat nor an ISO 9660 disk", "make the seed disk with `invoke cidata`")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
