"""Closure bundles and Nix binary caches, on disk and in OCI registries.

A bundle is the seed's closure.tar: what one Nix attribute built (the
runner's `run` script, nix/runner.nix), its whole closure in a file://
binary cache signed with the user's key (cache/), and the `result` link
naming it, in one tarball. It is built in a container of the builder image,
like every Nix build of the toolkit; the secret key goes into that container
as a file, never on a command line or in a log. The runner image
(images/runner.Dockerfile) restores a bundle at start, refusing anything its
trusted keys did not sign, and runs it.

Bundles, and whole binary cache directories, travel through OCI registries as
artifacts of their own types (ci.oras checks every digest). A binary cache
pulled from a registry can serve the image builds as an extra substituter,
so that a cold machine downloads built paths instead of building them.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import archive, docker, nix, oras, resources
from .errors import BuildFailed, ConfigError, IntegrityError, NetworkUnavailable, RegistryError, naming_full_disk

log = logging.getLogger(__name__)

# The OCI artifacts: a bundle is one layer; a binary cache is one layer per file.
BUNDLE_TYPE = "application/vnd.nix-ci.bundle.v1"
BUNDLE_MEDIA_TYPE = "application/vnd.nix-ci.bundle.v1.tar"
BUNDLE_TITLE = "closure.tar"
CACHE_TYPE = "application/vnd.nix-ci.binary-cache.v1"
CACHE_INFO_MEDIA_TYPE = "application/vnd.nix-ci.binary-cache.v1.nix-cache-info"
NARINFO_MEDIA_TYPE = "application/vnd.nix-ci.binary-cache.v1.narinfo"
NAR_MEDIA_TYPE = "application/vnd.nix-ci.binary-cache.v1.nar"
STORE_PATH_ANNOTATION = "io.github.nix-ci.bundle.store-path"
SIGNED_BY_ANNOTATION = "io.github.nix-ci.bundle.signed-by"
PATHS_ANNOTATION = "io.github.nix-ci.binary-cache.paths"

# What Nix 2.8 (Debian) and later write in a file:// binary cache. zstd is
# the default: as fast as no compression to unpack, about as small as xz.
COMPRESSIONS = ("zstd", "xz", "bzip2", "none")

# The runner's files the builder container needs.
SCRIPTS = resources.shipped("runner")
BUILD_DIR = "/bundle-build"  # the project's Nix files, as in the vm build
INPUT_DIR = "/bundle-in"  # the script and the secret key
OUTPUT_DIR = "/bundle-out"  # cache/ and result, tarred on the host

# Where a substituter goes in a docker build's context (and so under /src).
SUBSTITUTER_CONTEXT = ".nix-substituter"

BUILDER_HINT = "build it with `invoke build-base` (offline: `invoke build-base --from-debian`)"
NO_KEY_HINT = "make a key pair with `invoke bundle-key`, or set bundle.secret_key to the secret key file of yours"

_KEY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<key>[A-Za-z0-9+/]+={0,2})$")
_STORE_PATH = re.compile(r"^/nix/store/(?P<hash>[0-9a-df-np-sv-z]{32})-[A-Za-z0-9+._?=-]+$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --- keys ------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    """A signing key pair on this machine: the secret key file and the public key."""

    name: str
    secret: Path
    public: Path
    public_key: str  # NAME:BASE64, safe to print


def default_key_name() -> str:
    """NAME of NAME-1, as Nix's documentation names keys: the host that signs."""
    return f"{socket.gethostname().split('.')[0] or 'nix-ci'}-1"


def generate_key(*, builder: str, name: str, secret: Path, public: Path, force: bool = False,
                 project: Path | None = None) -> KeyPair:
    """`nix-store --generate-binary-cache-key` in a container of `builder`; write the pair to `secret` and `public`.

    The secret key file is made mode 0600 in a directory of mode 0700 (when
    the toolkit makes it), never inside `project`, and replaced only with `force`.
    """
    if project is not None and secret.absolute().is_relative_to(project.absolute()):
        raise ConfigError(f"the secret key {secret} would be inside the project {project}",
                          "keep it out of the repository: set bundle.secret_key to e.g. ~/.config/nix-ci/bundle-key.sec")
    if not _KEY_NAME.match(name):
        raise ConfigError(f"'{name}' is not a usable key name", "use letters, digits, '.', '_' and '-', e.g. ci.example.org-1")
    for path in (secret, public):
        if path.exists() and not force:
            raise ConfigError(f"{path} already exists",
                              "pass --force to replace the key pair; runners that trust only the old key then refuse new bundles")
    docker.require_image(builder, BUILDER_HINT)
    files = _tar({"keys/": None})
    command = ["nix-store", "--generate-binary-cache-key", name, "/keys/secret", "/keys/public"]
    with docker.one_off_container(builder, command, files=files) as container:
        finished = container.run(lambda line: log.debug("%s", line))
        if finished.status != 0:
            raise BuildFailed(f"nix-store --generate-binary-cache-key failed in {builder} (exit {finished.status})",
                              "the end of its log is above", details=finished.stderr_tail)
        made = _read_small_tar(container.copy_out("/keys"))
    secret_text = made.get("keys/secret", b"").decode().strip()
    public_text = made.get("keys/public", b"").decode().strip()
    _check_key(secret_text, 64, "the generated secret key")
    _check_key(public_text, 32, "the generated public key")
    secret.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    public.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(secret, (secret_text + "\n").encode(), 0o600)
    _write_atomically(public, (public_text + "\n").encode(), 0o644)
    return KeyPair(name, secret, public, public_text)


def read_secret_key(path: Path) -> bytes:
    """The secret key file's content, checked; its content is never shown."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no secret key at {path}", NO_KEY_HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the secret key {path}: {getattr(exc, 'strerror', None) or 'not a text file'}",
                          NO_KEY_HINT) from None
    if _key_length(text) == 32:
        raise ConfigError(f"{path} is a public key, not a secret one", "give the secret half of the pair (bundle.secret_key)")
    if _key_length(text) != 64:
        raise ConfigError(f"{path} is not a Nix secret key (NAME:BASE64 of 64 bytes)", NO_KEY_HINT)
    if path.stat().st_mode & 0o077:
        log.warning("warning: the secret key %s can be read by other users; chmod 600 it", path)
    return (text + "\n").encode()


def public_keys(key_files: Iterable[str | Path], keys: Iterable[str] = ()) -> tuple[str, ...]:
    """The trusted public keys: those in `key_files` (one per line) and `keys`, checked; duplicates dropped."""
    found: list[str] = []
    for name in key_files:
        path = Path(name).expanduser()
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            raise ConfigError(f"no public key at {path}", "make a key pair with `invoke bundle-key`, "
                              "or set bundle.public_key to the signer's public key") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the public key {path}: {getattr(exc, 'strerror', None) or 'not a text file'}",
                              "give the file nix-store --generate-binary-cache-key wrote the public key to") from None
        found += [_public_key(line, str(path)) for line in lines]
    found += [_public_key(key, "bundle.trusted_keys") for text in keys for key in text.split()]
    return tuple(dict.fromkeys(found))


def _public_key(text: str, source: str) -> str:
    if _key_length(text) == 64:
        raise ConfigError(f"{source} holds a secret key where a public key belongs",
                          "give the public half of the pair; keep the secret key out of configuration that is shared")
    if _key_length(text) != 32:
        shown = text[:40] + ("..." if len(text) > 40 else "")
        raise ConfigError(f"'{shown}' from {source} is not a Nix public key",
                          "give NAME:BASE64, as nix-store --generate-binary-cache-key writes it")
    return text


def _key_length(text: str) -> int:
    match = _KEY.match(text)
    if not match:
        return 0
    try:
        return len(base64.b64decode(match["key"], validate=True))
    except ValueError:
        return 0


def _check_key(text: str, length: int, what: str) -> None:
    if _key_length(text) != length:
        raise BuildFailed(f"{what} is not a Nix key", "check the builder's Nix (nix-store --generate-binary-cache-key)")


# --- reading binary caches and bundles ----------------------------------------------

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


BUNDLE_HINT = "make it again with `invoke bundle`, or pull it again with `invoke cache-pull`"
CACHE_HINT = "give a directory written by `nix copy --to file://DIR`, or pull it again with `invoke cache-pull`"


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


def inspect_bundle(path: Path) -> BundleInfo:
    """Read a bundle tarball and check it is whole: cache/, result, every NAR and reference; no Nix needed."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a bundle", "give the closure.tar that `invoke bundle` wrote")
    if not path.exists():
        raise ConfigError(f"no bundle at {path}", "make one with `invoke bundle`, or pull one with `invoke cache-pull`")
    try:
        with tarfile.open(path, mode="r:") as archive:
            members = {m.name.removeprefix("./"): m for m in archive.getmembers()}
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


# --- making a bundle ---------------------------------------------------------------

def make_bundle(root: Path, *, builder: str, expression: str, attr: str, pkgs: str, secret_key: Path,
                output: Path, compression: str = "zstd") -> BundleInfo:
    """nix-build `attr` of `expression` in a container of `builder`, sign its closure into a binary cache,
    and write cache/ and the result link as one tarball at `output` (written whole or not at all)."""
    for what, relative, key in (("expression", expression, "bundle.expression"), ("package set", pkgs, "web.pkgs")):
        if not (root / relative).exists():
            raise ConfigError(f"the {what} {relative} does not exist under {root}", f"set {key} to a path of the project")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown compression '{compression}'", f"use one of {', '.join(COMPRESSIONS)}")
    secret = read_secret_key(secret_key)
    docker.require_image(builder, BUILDER_HINT)
    output = output.absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write under {output.parent}: {exc.strerror}", "choose a writable directory") from None
    command = ["/bin/sh", f"{INPUT_DIR}/make-bundle.sh", f"{BUILD_DIR}/{expression}", attr, f"{BUILD_DIR}/{pkgs}",
               compression]
    log.info("building %s -A %s in %s, signing with %s", expression, attr, builder, secret_key)
    with docker.one_off_container(builder, command, files=_inputs_tar(root, [expression, pkgs], secret)) as container:
        finished = container.run(lambda line: log.info("%s", line))
        if finished.status != 0:
            raise nix.build_error(f"bundling {expression} -A {attr}", finished.stderr_tail, fallback=f"exit {finished.status}",
                                  offline=f"building {expression} needs sources that are not in the builder's store: no network",
                                  offline_hint="build the builder with network access (`invoke build-base`), "
                                               "or use a builder whose store holds them")
        with naming_full_disk(output.parent), tempfile.TemporaryDirectory(prefix=".bundle-", dir=output.parent) as work:
            tree, target = _unpack(container.copy_out(OUTPUT_DIR), Path(work) / "tree")
            partial = Path(work) / "closure.tar"
            _write_bundle(tree, target, partial)
            info = inspect_bundle(partial)
            os.chmod(partial, 0o644)
            os.replace(partial, output)
    return BundleInfo(output, info.size, info.store_path, info.cache)


def _inputs_tar(root: Path, paths: list[str], secret: bytes) -> bytes:
    """The folders holding `paths` under BUILD_DIR, the bundle script and the secret key (0600) under INPUT_DIR."""
    folders = sorted({str(Path(p).parent if (root / p).is_file() else Path(p)) for p in paths})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in folders:
            archive.add(root / folder, arcname=f"{BUILD_DIR.lstrip('/')}/{folder}", filter=_no_results)
        archive.add(SCRIPTS / "make-bundle.sh", arcname=f"{INPUT_DIR.lstrip('/')}/make-bundle.sh")
        entry = tarfile.TarInfo(f"{INPUT_DIR.lstrip('/')}/secret-key")
        entry.size, entry.mode = len(secret), 0o600
        archive.addfile(entry, io.BytesIO(secret))
    return buffer.getvalue()


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


# --- registries ----------------------------------------------------------------------

def push_bundle(reference: str, path: Path, *, insecure: bool = False) -> oras.Artifact:
    """Push a bundle (checked first) as one artifact of type BUNDLE_TYPE."""
    info = inspect_bundle(path)
    annotations = {STORE_PATH_ANNOTATION: info.store_path, SIGNED_BY_ANNOTATION: " ".join(info.cache.signers)}
    return oras.push(reference, [oras.Blob(path, BUNDLE_MEDIA_TYPE, title=BUNDLE_TITLE)],
                     artifact_type=BUNDLE_TYPE, annotations=annotations, insecure=insecure)


def push_cache(reference: str, directory: Path, *, insecure: bool = False) -> oras.Artifact:
    """Push a binary cache directory as an artifact of type CACHE_TYPE: one layer per file, so that a
    registry that has a NAR already is not sent it again."""
    directory = directory.absolute()
    contents = cache_directory(directory)
    blobs = [oras.Blob(directory / "nix-cache-info", CACHE_INFO_MEDIA_TYPE)]
    for info in contents.narinfos:
        if not re.match(r"^nar/[^/]+$", info.url):
            raise ConfigError(f"{directory}: the NAR of {info.store_path} is at {info.url}, not under nar/",
                              "push caches written by `nix copy --to file://DIR`")
        blobs.append(oras.Blob(directory / f"{info.hash_part}.narinfo", NARINFO_MEDIA_TYPE))
        blobs.append(oras.Blob(directory / info.url, NAR_MEDIA_TYPE))
    annotations = {PATHS_ANNOTATION: str(len(contents.narinfos)), SIGNED_BY_ANNOTATION: " ".join(contents.signers)}
    return oras.push(reference, blobs, artifact_type=CACHE_TYPE, annotations=annotations, insecure=insecure)


@dataclass(frozen=True)
class Pulled:
    """A bundle file or a binary cache directory, pulled and checked."""

    kind: str  # "bundle" or "cache"
    path: Path
    artifact: oras.Artifact
    contents: CacheContents


def pull(reference: str, *, bundle_to: Path, cache_to: Path, insecure: bool = False) -> Pulled:
    """Pull the bundle (to the file `bundle_to`) or binary cache (to the directory `cache_to`) at `reference`.

    Every file is checked against its digest and the whole checked as a
    bundle or a cache before it replaces what was at the destination; a
    failed pull leaves nothing behind. Other artifacts are refused.
    """
    artifact = oras.inspect(reference, insecure=insecure)
    if artifact.artifact_type == BUNDLE_TYPE:
        return _pull_bundle(artifact, bundle_to.absolute(), insecure)
    if artifact.artifact_type == CACHE_TYPE:
        return _pull_cache(artifact, cache_to.absolute(), insecure)
    raise ConfigError(f"{reference} is neither a bundle nor a binary cache (its artifact type is "
                      f"'{artifact.artifact_type or 'none'}')", "give a reference that `invoke cache-push` wrote")


def _pull_bundle(artifact: oras.Artifact, target: Path, insecure: bool) -> Pulled:
    layers = [layer for layer in artifact.layers if layer.media_type == BUNDLE_MEDIA_TYPE]
    if len(artifact.layers) != 1 or not layers:
        raise IntegrityError(f"{artifact.pinned} is not a well-formed bundle artifact (one {BUNDLE_MEDIA_TYPE} layer)",
                             "push the bundle again with `invoke cache-push`")
    _writable(target.parent)
    if target.is_dir():
        raise ConfigError(f"{target} is a directory", "give the file to write the bundle to")
    with tempfile.TemporaryDirectory(prefix=".cache-pull-", dir=target.parent) as work:
        pulled = oras.pull(artifact.pinned, Path(work), insecure=insecure)
        info = inspect_bundle(pulled.files[0])
        os.chmod(pulled.files[0], 0o644)
        os.replace(pulled.files[0], target)
    return Pulled("bundle", target, artifact, info.cache)


def _pull_cache(artifact: oras.Artifact, target: Path, insecure: bool) -> Pulled:
    known = {CACHE_INFO_MEDIA_TYPE, NARINFO_MEDIA_TYPE, NAR_MEDIA_TYPE}
    strange = [layer.media_type for layer in artifact.layers if layer.media_type not in known]
    if strange:
        raise IntegrityError(f"{artifact.pinned} has a layer of type {strange[0]}, which binary caches do not have",
                             "push the cache again with `invoke cache-push --cache DIR`")
    _writable(target.parent)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / "nix-cache-info").exists())):
        raise ConfigError(f"{target} exists and is not a binary cache", "give a new directory, or an old cache to replace")
    with tempfile.TemporaryDirectory(prefix=".cache-pull-", dir=target.parent) as work:
        pulled = oras.pull(artifact.pinned, Path(work) / "files", insecure=insecure)
        cache = Path(work) / "cache"
        for folder in ("nar", "log", "realisations"):  # as `nix copy` makes them: Nix fails to open a read-only cache without
            (cache / folder).mkdir(parents=True)
        for layer, path in zip(pulled.artifact.layers, pulled.files, strict=True):
            os.replace(path, cache / ("nar" if layer.media_type == NAR_MEDIA_TYPE else ".") / path.name)
        contents = cache_directory(cache)
        old = Path(work) / "old"
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(cache, target)
        except OSError:
            if old.exists():
                os.replace(old, target)  # the cache that was there stays
            raise
    return Pulled("cache", target, artifact, contents)


def _writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write under {directory}: {exc.strerror}", "choose a writable directory") from None


# --- substituters for the image builds ---------------------------------------------

@dataclass(frozen=True)
class Substituter:
    """A binary cache on this machine that a docker build reads as an extra substituter."""

    reference: str  # where it came from
    directory: Path
    public_keys: tuple[str, ...]

    def nix_config(self) -> str:
        """NIX_CONFIG for the build: the cache (in the build context, so under /src) and the keys it must be signed with."""
        return (f"extra-substituters = file:///src/{SUBSTITUTER_CONTEXT}\n"
                f"extra-trusted-public-keys = {' '.join(self.public_keys)}\n")

    def context(self) -> dict[str, str]:
        """What docker.build adds to the build context."""
        return {SUBSTITUTER_CONTEXT: str(self.directory)}


@contextmanager
def substituter(reference: str | None, keys: tuple[str, ...], *, insecure: bool = False) -> Iterator[Substituter | None]:
    """The binary cache (or bundle's cache) at `reference`, pulled into a temporary directory for one build.

    None without a reference. One that cannot be had (registry down, missing,
    damaged) is reported in one line and the build goes on without it; one of
    another type, or no key to check it with, is refused.
    """
    if not reference:
        yield None
        return
    if not keys:
        raise ConfigError(f"no public key to check the substituter {reference} with",
                          "set bundle.public_key (or bundle.trusted_keys) to the key its paths were signed with")
    with tempfile.TemporaryDirectory(prefix="nix-ci-substituter-") as work:
        try:
            pulled = pull(reference, bundle_to=Path(work) / BUNDLE_TITLE, cache_to=Path(work) / "cache", insecure=insecure)
        except (RegistryError, NetworkUnavailable, IntegrityError) as exc:
            log.warning("warning: cannot use the substituter %s: %s; building without it", reference, exc.message)
            yield None
            return
        directory = Path(work) / "cache"
        if pulled.kind == "bundle":
            with tarfile.open(pulled.path, mode="r:") as archive:
                archive.extractall(work, members=[m for m in archive.getmembers() if m.name.startswith("cache")],
                                   filter="data")
            pulled.path.unlink()
        signers = ", ".join(pulled.contents.signers) or "nobody"
        log.info("using the substituter %s (%d paths, %.1f MB, signed by %s)", reference, len(pulled.contents.narinfos),
                 pulled.contents.nar_bytes / 1e6, signers)
        yield Substituter(reference, directory, keys)


# --- the runner image ----------------------------------------------------------------

def build_runner(root: Path, *, base: str, tag: str, keys: tuple[str, ...]) -> docker.Image:
    """Build images/runner.Dockerfile on the builder base, with `keys` as the trusted keys baked in."""
    image = docker.require_image(base, BUILDER_HINT)
    if not keys:
        log.warning("warning: no public key configured: the runner will trust no bundle until TRUSTED_PUBLIC_KEYS is set "
                    "at `docker run` (make a key pair with `invoke bundle-key`)")
    context = resources.images()  # the shipped runner.Dockerfile and the files it copies
    return docker.build(str(context), str(context / "runner.Dockerfile"), tag=tag, labels={docker.LABEL: "runner"},
                        buildargs={"BASE_IMAGE": image.id, "TRUSTED_PUBLIC_KEYS": " ".join(keys)})


# --- small helpers -------------------------------------------------------------------

def _tar(entries: Mapping[str, bytes | None]) -> bytes:
    """A tar archive of directories (name/: None) and small files (name: content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in entries.items():
            entry = tarfile.TarInfo(name.rstrip("/"))
            if content is None:
                entry.type, entry.mode = tarfile.DIRTYPE, 0o700
                archive.addfile(entry)
            else:
                entry.size, entry.mode = len(content), 0o600
                archive.addfile(entry, io.BytesIO(content))
    return buffer.getvalue()


def _read_small_tar(stream: Iterator[bytes]) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
