"""docker-archive streams (the `docker save` format), read and slimmed in Python.

`docker load` first writes the whole archive to disk, then skips the layers
whose chain it already has. When a one-line change leaves 29 of 30 layers
as they were, that is 60 MB written for a few kB of news. The toolkit reads
the stream itself and hands the engine an archive without the layers it has.

dockerTools' stream script names each layer file after its digest
(<diff id>/layer.tar), so a layer whose chain the engine has is skipped as
it streams by, never copied. `Forwarding` passes the rest on as it comes,
holding back only the manifest (the engine loads nothing without it) until
the end of the stream has confirmed each skip and the caller has accepted
the image. `slim` reads archives whose layer names say nothing (an engine's
own `docker save`, named by v1 IDs) whole, keeping them in memory (spilling
to disk past SPOOL bytes), and decides at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from ...core.errors import BuildFailed

SPOOL = 64 << 20
BLOCK = 1 << 20
# The files at the top of an archive (manifest, configs) up to this size are kept as they pass.
HELD = 1 << 20


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The engine's name of each layer stack: the first diff ID, then sha256 of "parent child"."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else _child_chain(chains[-1], diff_id))
    return chains


def _child_chain(parent: str, diff_id: str) -> str:
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


@dataclass
class Slimmed:
    """An archive ready for `docker load`, and what was left out of it. Close it after use."""

    data: IO[bytes]
    bytes_kept: int
    bytes_dropped: int
    layers_dropped: int
    named: list[str] = field(default_factory=list)  # the tags the archive itself gave its image (RepoTags)

    def chunks(self) -> Iterator[bytes]:
        self.data.seek(0)
        return iter(lambda: self.data.read(BLOCK), b"")

    def __enter__(self) -> Slimmed:
        return self

    def __exit__(self, *_: object) -> None:
        self.data.close()


def slim(chunks: Iterable[bytes], known_chains: set[str],
         edit_config: Callable[[dict], dict] | None = None, *, tags: list[str] | None = None) -> Slimmed:
    """Read a docker-archive from `chunks`; return it without the layers whose chain is known.

    `edit_config`, when given, rewrites each image's config; the config then
    gets the name of its new digest, and the manifest follows. `tags`, when
    given, replace the tags the archive gives its image: the engine loads it
    under those and no other (the archive's own are in Slimmed.named).
    """
    members: list[tuple[tarfile.TarInfo, IO[bytes] | None]] = []
    try:
        with tar_stream(chunks) as archive:
            for member in archive:
                members.append((member, _spool(archive.extractfile(member)) if member.isfile() else None))
        named = _repo_tags(members)
        if edit_config is not None or tags is not None:
            members = _edited(members, edit_config, tags)
        slimmed = _without(members, _droppable(members, known_chains))
        slimmed.named = named
        return slimmed
    except (tarfile.TarError, EOFError) as exc:
        raise BuildFailed(f"the image stream is not a complete docker-archive ({exc})") from None
    finally:
        for _, data in members:
            if data is not None:
                data.close()


class _NamedChains:
    """The chains of the layer files met so far, from their names, while they all are known."""

    NAME = re.compile(r"([0-9a-f]{64})/layer\.tar")

    def __init__(self, known_chains: set[str]) -> None:
        self._known = known_chains
        self._chain: str | None = None
        self._broken = False

    def known(self, name: str) -> bool:
        digest = self.NAME.fullmatch(name)
        if digest is None or self._broken:  # past an unknown layer, no chain can be known
            return False
        diff_id = f"sha256:{digest[1]}"
        self._chain = diff_id if self._chain is None else _child_chain(self._chain, diff_id)
        self._broken = self._chain not in self._known
        return not self._broken


class Forwarding:
    """The docker-archive read from `chunks`, as an iterator of the archive to load: without
    the layers named after a chain in `known_chains`, its image tagged `tags`.

    Everything but the manifest passes on as it comes, uncopied.
    At the end of the stream, once every skip is confirmed by the config,
    `ready` gets the tags the archive named (Forwarding.named); the manifest
    goes last, only if it returned: an archive cut short anywhere before
    holds nothing the engine can load. Whatever stopped the iteration is
    kept in `error` (an HTTP client may wrap it).
    """

    def __init__(self, chunks: Iterable[bytes], known_chains: set[str], *, tags: list[str],
                 ready: Callable[[list[str]], object]) -> None:
        self._chunks, self._known, self._tags, self._ready = chunks, known_chains, tags, ready
        self.named: list[str] = []
        self.bytes_kept = self.bytes_dropped = self.layers_dropped = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self._forwarded()
        except (tarfile.TarError, EOFError) as exc:
            self.error = BuildFailed(f"the image stream is not a complete docker-archive ({exc})")
            raise self.error from None
        except BaseException as exc:
            self.error = exc
            raise

    def _forwarded(self) -> Iterator[bytes | memoryview]:
        held: dict[str, IO[bytes]] = {}  # the archive's own files (manifest, configs): read at the end
        skipped: set[str] = set()
        named_chains = _NamedChains(self._known)
        stream = _ForwardOnly(self._chunks)
        # tarfile reads the headers and seeks over the data, which the stream drops unread.
        with tarfile.open(fileobj=stream, mode="r:") as archive:
            for member in archive:
                if member.isfile() and named_chains.known(member.name):
                    skipped.add(member.name)
                    self.bytes_dropped += member.size
                    self.layers_dropped += 1
                    continue
                if member.isfile() and "/" not in member.name and member.size <= HELD:
                    held[member.name] = io.BytesIO(stream.read(member.size))
                if member.name == "manifest.json":
                    continue
                self.bytes_kept += member.size
                yield member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                if member.name in held:
                    yield held[member.name].getvalue()
                elif member.isfile():
                    yield from stream.pieces(member.size)
                if member.isfile():
                    yield _padding(member.size)
        members = [(tarfile.TarInfo(name), data) for name, data in held.items()]
        self.named = _repo_tags(members)
        unconfirmed = skipped - _droppable(members, self._known)
        if unconfirmed:
            raise BuildFailed(f"the image stream names layer {min(unconfirmed)} after a digest it does not have")
        self._ready(self.named)
        manifest = json.loads(_read(held, "manifest.json"))
        for entry in manifest:
            entry["RepoTags"] = self._tags
        content = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mode, info.mtime = len(content), 0o644, 1
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + content + _padding(len(content))
        yield bytes(2 * tarfile.BLOCKSIZE)  # the end of the archive


def _padding(size: int) -> bytes:
    """What follows `size` bytes of data in a tar archive, up to the next 512-byte block."""
    return bytes(-size % tarfile.BLOCKSIZE)


class _ForwardOnly:
    """A file over an iterator of byte chunks that only goes forward: enough for tarfile's
    "r|" mode, which only reads, and its "r:" mode, which reads headers and seeks over data. What is sought over is dropped, and
    `pieces` hands data on as views of the chunks: neither copies a byte."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or position < self._position:
            raise io.UnsupportedOperation("this stream only goes forward")
        for _ in self.pieces(position - self._position):
            pass
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b"".join(self.pieces(size if size >= 0 else sys.maxsize))

    def pieces(self, size: int) -> Iterator[memoryview]:
        """The next `size` bytes (fewer at the end of the stream), as views of the chunks."""
        while size > 0:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return
                self._pending = memoryview(chunk)
            piece = self._pending[:size]
            self._pending = self._pending[len(piece):]
            self._position += len(piece)
            size -= len(piece)
            yield piece


def _droppable(members: list[tuple[tarfile.TarInfo, IO[bytes] | None]], known_chains: set[str]) -> set[str]:
    """The layer files of the archive whose chain the engine has."""
    files = {member.name: data for member, data in members if data is not None}
    droppable = set()
    for entry in json.loads(_read(files, "manifest.json")):
        diff_ids = json.loads(_read(files, entry["Config"]))["rootfs"]["diff_ids"]
        for path, chain in zip(entry["Layers"], chain_ids(diff_ids), strict=True):
            if chain in known_chains:
                droppable.add(path)
    return droppable


def normalise(chunks: Iterable[bytes], *, created: str, known_chains: set[str],
              tags: list[str] | None = None) -> Slimmed:
    """The archive with the moments and build containers of its config replaced by fixed values.

    The engine's classic builder writes the time of the build into `created`
    and into each history entry, the intermediate container's ID into
    `container` and `container_config`, and the last step's parent image into
    config.Image: the same inputs then make another image ID every time. Layers are not touched (and left out when known).
    """
    return slim(chunks, known_chains, edit_config=lambda config: _fixed_config(config, created), tags=tags)


def _fixed_config(config: dict, created: str) -> dict:
    fixed = {key: value for key, value in config.items() if key not in ("container", "container_config")}
    # The run config names the parent image of the last step, which a build without cache makes anew.
    fixed["config"] = {**config.get("config", {}), "Image": "", "Hostname": ""}
    fixed["created"] = created
    fixed["history"] = [{**entry, "created": created} for entry in config.get("history", [])]
    return fixed


def _repo_tags(members: list[tuple[tarfile.TarInfo, IO[bytes] | None]]) -> list[str]:
    files = {member.name: data for member, data in members if data is not None}
    return [tag for entry in json.loads(_read(files, "manifest.json")) for tag in entry.get("RepoTags") or ()]


def _edited(members: list[tuple[tarfile.TarInfo, IO[bytes] | None]], edit: Callable[[dict], dict] | None,
            tags: list[str] | None) -> list[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    files = {member.name: data for member, data in members if data is not None}
    manifest = json.loads(_read(files, "manifest.json"))
    replaced: dict[str, tuple[str, bytes]] = {}
    for entry in manifest:
        if tags is not None:
            entry["RepoTags"] = tags
        if edit is None:
            continue
        config = json.dumps(edit(json.loads(_read(files, entry["Config"]))), separators=(",", ":")).encode()
        name = hashlib.sha256(config).hexdigest() + ".json"
        replaced[entry["Config"]] = (name, config)
        entry["Config"] = name
    replaced["manifest.json"] = ("manifest.json", json.dumps(manifest).encode())
    result = []
    for member, data in members:
        if member.name in replaced:
            name, content = replaced[member.name]
            data.close()
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(content), 0o644, 1
            data = _spool(io.BytesIO(content))
        result.append((member, data))
    return result


def _without(members: list[tuple[tarfile.TarInfo, IO[bytes] | None]], droppable: set[str]) -> Slimmed:
    result = Slimmed(tempfile.SpooledTemporaryFile(max_size=SPOOL), 0, 0, 0)  # noqa: SIM115 - the caller closes it
    with tarfile.open(fileobj=result.data, mode="w|", format=tarfile.PAX_FORMAT, bufsize=BLOCK, copybufsize=BLOCK) as out:
        for member, data in members:
            if member.name in droppable:
                result.bytes_dropped += member.size
                result.layers_dropped += 1
                continue
            result.bytes_kept += member.size
            out.addfile(member, data)
    return result


def _spool(source: IO[bytes] | None) -> IO[bytes]:
    spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL)  # noqa: SIM115 - returned open
    try:
        while source is not None and (block := source.read(BLOCK)):
            spooled.write(block)
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    return spooled


def _read(files: dict[str, IO[bytes]], name: str) -> bytes:
    if name not in files:
        raise BuildFailed(f"the image stream has no {name}: it is not a docker-archive")
    data = files[name].read()
    files[name].seek(0)
    return data


def tar_stream(chunks: Iterable[bytes]) -> tarfile.TarFile:
    """A tar archive read in stream mode from an iterator of byte chunks (an engine response)."""
    return tarfile.open(fileobj=_ForwardOnly(chunks), mode="r|", bufsize=BLOCK)
