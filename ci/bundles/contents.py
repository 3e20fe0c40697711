"""Reading binary caches and bundles on this machine, and checking they are whole:
every NAR a narinfo names is there, every reference has its narinfo; no Nix needed."""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError, IntegrityError

log = logging.getLogger(__name__)


_STORE_PATH = re.compile(r"^/nix/store/(?P<hash>[0-9a-df-np-sv-z]{32})-[A-Za-z0-9+._?=-]+$")
BUNDLE_HINT = "make it again with `invoke bundle`, or pull it again with `invoke cache-pull`"
CACHE_HINT = "give a directory written by `nix copy --to file://DIR`, or pull it again with `invoke cache-pull`"


@dataclass(frozen=True)
class NarInfo:
    """What a .narinfo file of a binary cache says about one store path."""

    store_path: str
    url: str  # the NAR file, relative to the cache: nar/<hash>.nar.zst
    file_size: int | None
    references: tuple[str, ...]  # base names of store paths
    signers: tuple[str, ...]  # names of the keys of its signatures
    compression: str

    @property
    def hash_part(self) -> str:
        return Path(self.store_path).name[:32]


def parse_narinfo(text: str, source: str) -> NarInfo:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.setdefault(key, []).append(value.strip())
    store_path = (fields.get("StorePath") or [""])[0]
    url = (fields.get("URL") or [""])[0]
    if not _STORE_PATH.match(store_path) or not url:
        raise IntegrityError(f"{source} is not a valid narinfo (no StorePath or URL)", "make the bundle or cache again")
    size = (fields.get("FileSize") or [""])[0]
    return NarInfo(
        store_path=store_path,
        url=url,
        file_size=int(size) if size.isdigit() else None,
        references=tuple((fields.get("References") or [""])[0].split()),
        signers=tuple(sorted({sig.split(":", 1)[0] for sig in fields.get("Sig", [])})),
        compression=(fields.get("Compression") or ["bzip2"])[0],
    )


@dataclass(frozen=True)
class CacheContents:
    """A binary cache, checked: every NAR its narinfos name is there, and every reference has its narinfo."""

    narinfos: tuple[NarInfo, ...]
    nar_bytes: int

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(sorted({s for info in self.narinfos for s in info.signers}))

    @property
    def unsigned(self) -> tuple[str, ...]:
        return tuple(info.store_path for info in self.narinfos if not info.signers)

    def closure(self, store_path: str) -> list[str]:
        by_name = {Path(info.store_path).name: info for info in self.narinfos}
        seen: dict[str, None] = {}
        pending = [Path(store_path).name]
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen[name] = None
            pending += [ref for ref in by_name[name].references if ref != name]
        return [f"/nix/store/{name}" for name in seen]


def check_cache(files: Mapping[str, int], read: Callable[[str], bytes], where: str, hint: str) -> CacheContents:
    """Check a binary cache given as its files (path relative to the cache: size) and a reader of small ones;
    what is wrong is an IntegrityError with `hint`."""
    if "nix-cache-info" not in files:
        raise IntegrityError(f"{where} is not a Nix binary cache: it has no nix-cache-info", hint)
    info_text = read("nix-cache-info").decode(errors="replace")
    store_dir = re.search(r"^StoreDir: *(\S+)", info_text, re.M)
    if store_dir and store_dir[1] != "/nix/store":
        raise IntegrityError(f"{where} is a binary cache for {store_dir[1]}, not /nix/store", hint)
    narinfos = []
    for name in sorted(n for n in files if n.endswith(".narinfo") and "/" not in n):
        narinfos.append(parse_narinfo(read(name).decode(errors="replace"), f"{where}: {name}"))
    names = {Path(info.store_path).name for info in narinfos}
    nar_bytes = 0
    for info in narinfos:
        if info.url not in files:
            raise IntegrityError(f"{where} is incomplete: the NAR of {info.store_path} ({info.url}) is missing",
                                 hint)
        if info.file_size is not None and files[info.url] != info.file_size:
            raise IntegrityError(f"{where} is damaged: {info.url} has {files[info.url]} bytes, its narinfo says {info.file_size}",
                                 hint)
        nar_bytes += files[info.url]
        lacking = [ref for ref in info.references if ref not in names]
        if lacking:
            raise IntegrityError(f"{where} is incomplete: {info.store_path} refers to /nix/store/{lacking[0]}, which it lacks",
                                 hint)
    return CacheContents(tuple(narinfos), nar_bytes)


def cache_directory(directory: Path) -> CacheContents:
    """Check a binary cache directory (such as `nix copy --to file://DIR` writes)."""
    if not directory.is_dir():
        raise ConfigError(f"no binary cache directory at {directory}",
                          "give a directory written by `nix copy --to file://DIR`, or by `invoke cache-pull`")
    files = {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    return check_cache(files, lambda name: (directory / name).read_bytes(), str(directory), CACHE_HINT)


@dataclass(frozen=True)
class BundleInfo:
    """A bundle, read and checked on this machine (signatures are checked where it is restored)."""

    path: Path
    size: int
    store_path: str  # what the result link names
    cache: CacheContents

    @property
    def closure(self) -> list[str]:
        return self.cache.closure(self.store_path)


def bundle_members(members: list[tarfile.TarInfo], path: Path) -> dict[str, tarfile.TarInfo]:
    """The members of a bundle by name, each checked to be what `invoke bundle` writes: the directory cache/,
    regular files and directories under it, and the symlink result; IntegrityError for anything else.

    So nothing in a bundle can reach outside the directory it is unpacked into (no `..`, no absolute name,
    no link but result, whose target is checked to be a store path) or be more than it says (no hard links,
    devices, FIFOs or sparse files), and no name hides another."""
    found: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = member.name.removeprefix("./").rstrip("/") if member.isdir() else member.name.removeprefix("./")
        parts = name.split("/")
        shown = name[:100].encode("unicode_escape").decode()
        if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name:
            raise IntegrityError(f"{path} is not a bundle: it holds the member '{shown}', a path that leaves the bundle",
                                 BUNDLE_HINT)
        if name == "result":
            if not member.issym():
                raise IntegrityError(f"{path} is not a bundle: its result is not a symbolic link", BUNDLE_HINT)
        elif parts[0] != "cache":
            raise IntegrityError(f"{path} is not a bundle: it holds '{shown}', outside cache/", BUNDLE_HINT)
        elif not (member.isreg() or member.isdir()) or member.issparse():
            kind = ("a hard link" if member.islnk() else "a symbolic link" if member.issym()
                    else "a sparse file" if member.issparse() else "a device or FIFO")
            raise IntegrityError(f"{path} is not a bundle: '{shown}' is {kind}, which bundles do not hold", BUNDLE_HINT)
        if name in found:
            raise IntegrityError(f"{path} is not a bundle: it holds '{shown}' twice", BUNDLE_HINT)
        found[name] = member
    for name in found:  # a file cannot also be a directory that holds others
        parents = name.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            parent = found.get("/".join(parents[:depth]))
            if parent is not None and not parent.isdir():
                shown = parent.name[:100].encode("unicode_escape").decode()
                raise IntegrityError(f"{path} is not a bundle: '{shown}' is a file that other members are under",
                                     BUNDLE_HINT)
    return found


def inspect_bundle(path: Path) -> BundleInfo:
    """Read a bundle tarball and check it is whole: cache/, result, every NAR and reference; no Nix needed."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a bundle", "give the closure.tar that `invoke bundle` wrote")
    if not path.exists():
        raise ConfigError(f"no bundle at {path}", "make one with `invoke bundle`, or pull one with `invoke cache-pull`")
    try:
        with tarfile.open(path, mode="r:") as archive:
            members = bundle_members(archive.getmembers(), path)
            size = path.stat().st_size
            for member in members.values():
                if member.isfile() and member.offset_data + member.size > size:
                    raise IntegrityError(f"{path} is truncated: {member.name} is cut short",
                                         "make it again with `invoke bundle`, or pull it again")
            result = members.get("result")
            if result is None or not result.issym():
                raise IntegrityError(f"{path} is not a bundle: it has no result link", "make it with `invoke bundle`")
            if not _STORE_PATH.match(result.linkname):
                raise IntegrityError(f"{path} is not a bundle: its result link points to '{result.linkname[:100]}', "
                                     "not a store path", "make it with `invoke bundle`")
            files = {name.removeprefix("cache/"): m.size for name, m in members.items()
                     if m.isfile() and name.startswith("cache/")}

            def read(name: str) -> bytes:
                stream = archive.extractfile(members[f"cache/{name}"])
                assert stream is not None  # a regular file
                return stream.read()

            cache = check_cache(files, read, str(path), BUNDLE_HINT)
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"{path} is not a bundle: it is not a readable tar archive ({exc})",
                             "make it again with `invoke bundle`, or pull it again with `invoke cache-pull`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None
    if Path(result.linkname).name not in {Path(i.store_path).name for i in cache.narinfos}:
        raise IntegrityError(f"{path} is incomplete: its cache lacks {result.linkname}", "make it again with `invoke bundle`")
    return BundleInfo(path, size, result.linkname, cache)
