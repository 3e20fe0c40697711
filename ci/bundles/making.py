"""Making a bundle: nix-build an attribute in a container of the builder, sign its
closure into a file:// binary cache (cache/), and write cache/ and the `result`
link as one tarball, the same bytes for the same inputs. The secret key goes
into the container as a file, never on a command line or in a log."""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..builder import BUILDER_HINT, OFFLINE_HINT, inputs_tar
from ..core import resources
from ..core.errors import BuildFailed, ConfigError, naming_full_disk
from ..core.files import writable_directory
from ..tools import docker, nix
from ..tools.docker import archive
from .contents import BundleInfo, inspect_bundle
from .keys import read_secret_key

if TYPE_CHECKING:
    from ..remote import RemoteBuilders

log = logging.getLogger(__name__)


# What Nix 2.8 (Debian) and later write in a file:// binary cache. zstd is
# the default: as fast as no compression to unpack, about as small as xz.
COMPRESSIONS = ("zstd", "xz", "bzip2", "none")


# The runner's files the builder container needs.
SCRIPTS = resources.shipped("runner")
BUILD_DIR = "/bundle-build"  # the project's Nix files, as in the vm build
INPUT_DIR = "/bundle-in"  # the script and the secret key
OUTPUT_DIR = "/bundle-out"  # cache/ and result, tarred on the host


def make_bundle(root: Path, *, builder: str, expression: str, attr: str, pkgs: str, secret_key: Path,
                output: Path, compression: str = "zstd", remote: RemoteBuilders | None = None) -> BundleInfo:
    """nix-build `attr` of `expression` in a container of `builder`, sign its closure into a binary cache,
    and write cache/ and the result link as one tarball at `output` (written whole or not at all).
    `remote` (ci.remote): Nix builds the derivations on those builders."""
    for what, relative, key in (("expression", expression, "bundle.expression"), ("package set", pkgs, "web.pkgs")):
        if not (root / relative).exists():
            raise ConfigError(f"the {what} {relative} does not exist under {root}", f"set {key} to a path of the project")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown compression '{compression}'", f"use one of {', '.join(COMPRESSIONS)}")
    secret = read_secret_key(secret_key)
    docker.require_image(builder, BUILDER_HINT)
    output = output.absolute()
    writable_directory(output.parent)
    command = ["/bin/sh", f"{INPUT_DIR}/make-bundle.sh", f"{BUILD_DIR}/{expression}", attr, f"{BUILD_DIR}/{pkgs}",
               compression]
    log.info("building %s -A %s in %s, signing with %s", expression, attr, builder, secret_key)
    from ..remote import checked_options  # a few lines; loads nothing more

    with docker.one_off_container(builder, command, files=_inputs(root, [expression, pkgs], secret),
                                  no_image=BUILDER_HINT, **checked_options(remote, builder)) as container:
        finished = container.run(lambda line: log.info("%s", line))
        if finished.status != 0:
            raise nix.build_error(f"bundling {expression} -A {attr}", finished.stderr_tail, fallback=f"exit {finished.status}",
                                  offline=f"building {expression} needs sources that are not in the builder's store: no network",
                                  offline_hint=OFFLINE_HINT)
        with naming_full_disk(output.parent), tempfile.TemporaryDirectory(prefix=".bundle-", dir=output.parent) as work:
            tree, target = _unpack(container.copy_out(OUTPUT_DIR), Path(work) / "tree")
            partial = Path(work) / "closure.tar"
            _write_bundle(tree, target, partial)
            info = inspect_bundle(partial)
            os.chmod(partial, 0o644)
            os.replace(partial, output)
    return BundleInfo(output, info.size, info.store_path, info.cache)


def _inputs(root: Path, paths: list[str], secret: bytes) -> bytes:
    """The folders holding `paths` under BUILD_DIR, the bundle script and the secret key (0600) under INPUT_DIR."""
    return inputs_tar(root, paths, under=BUILD_DIR, leave_out=_no_results,
                      copies={f"{INPUT_DIR}/make-bundle.sh": SCRIPTS / "make-bundle.sh"},
                      files={f"{INPUT_DIR}/secret-key": secret})


def _no_results(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave out result links of builds by hand, and Python caches."""
    name = Path(member.name).name
    return None if name.startswith("result") or name == "__pycache__" else member


def _unpack(stream: Iterator[bytes], tree: Path) -> tuple[Path, str]:
    """The builder's /bundle-out (a tar stream from the engine) as files under `tree`; returns it and the result's target."""
    prefix = Path(OUTPUT_DIR).name
    target = ""
    tree.mkdir(parents=True)
    with archive.tar_stream(stream) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not parts or parts[0] != prefix or ".." in parts or Path(member.name).is_absolute():
                raise BuildFailed(f"the builder wrote an unexpected file {member.name!r}", "check images/runner/make-bundle.sh")
            relative = Path(*parts[1:]) if len(parts) > 1 else Path(".")
            if member.isdir():
                (tree / relative).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                (tree / relative).parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                with open(tree / relative, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            elif member.issym() and relative == Path("result"):
                target = member.linkname
            else:
                raise BuildFailed(f"the builder wrote an unexpected entry {member.name!r}", "check images/runner/make-bundle.sh")
    if not target:
        raise BuildFailed("the builder wrote no result link", "check images/runner/make-bundle.sh")
    return tree, target


def _write_bundle(tree: Path, target: str, partial: Path) -> None:
    """cache/ (sorted, owner root, fixed times) and the result link: the same inputs give the same bytes."""
    def entry(name: str, path: Path | None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 1, 0, 0, "", ""
        if path is None:
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        elif path.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = path.stat().st_size, 0o644
        return info

    cache = tree / "cache"
    with open(partial, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(entry("cache", cache))
        for path in sorted(cache.rglob("*")):
            name = f"cache/{path.relative_to(cache).as_posix()}"
            if path.is_file():
                with open(path, "rb") as data:
                    archive.addfile(entry(name, path), data)
            else:
                archive.addfile(entry(name, path))
        archive.addfile(entry("result", None))
        archive.close()
        out.flush()
        os.fsync(out.fileno())
