"""Publishing images that belong together, so that `latest` never points at a
set that was not pushed whole.

build-cache publishes nix-base and nix-cache: first every immutable tag of
both (date, package set), then `latest` of both, last. A failure before the
`latest` moves leaves both where they were. When the second `latest` move
fails, the first is put back to the digest it had (when it had one), so that
the two never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import transfer
from .core.errors import ToolkitError
from .tools import skopeo

if TYPE_CHECKING:
    from .publish import Options

log = logging.getLogger(__name__)

MOVING = "latest"


@dataclass(frozen=True)
class Member:
    local: str  # the image in the engine, e.g. nix-base:latest
    remote: str  # REGISTRY/PATH/NAME, without a tag


def publish(members: Sequence[Member], immutable: Sequence[str], *, insecure: bool = False,
            options: Callable[[str], Options] | None = None) -> list[transfer.Pushed]:
    """Push every member under every `immutable` tag, then move each one's `latest`, last.
    `options(local)` says what a member's push adds (annotations, signatures: ci.publish); the
    immutable push signs, so the `latest` moves write tags only."""
    pushed = []
    for member in members:
        pushed += transfer.push(member.local, [f"docker://{member.remote}:{tag}" for tag in immutable], insecure=insecure,
                                options=options(member.local) if options else None)
    before = {member.remote: _digest(f"{member.remote}:{MOVING}", insecure) for member in members}
    moved: list[Member] = []
    try:
        for member in members:
            pushed += transfer.push(member.local, [f"docker://{member.remote}:{MOVING}"], insecure=insecure,
                                    options=options(member.local) if options else None)
            moved.append(member)
    except ToolkitError:
        for member in moved:
            _put_back(member.remote, before[member.remote], insecure)
        raise
    return pushed


def _digest(reference: str, insecure: bool) -> str | None:
    """The digest a tag names now; None when the registry has no such tag (or cannot say)."""
    try:
        return skopeo.inspect(f"docker://{reference}", insecure=insecure).digest
    except ToolkitError:  # no such tag, or the registry cannot say: nothing to put back
        return None


def _put_back(remote: str, digest: str | None, insecure: bool) -> None:
    if digest is None:
        log.warning("warning: %s:%s is new and could not be taken back; it names this run's image", remote, MOVING)
        return
    try:
        skopeo.copy(f"docker://{remote}@{digest}", f"docker://{remote}:{MOVING}", insecure=insecure)
        log.info("%s:%s put back to %s", remote, MOVING, digest)
    except ToolkitError as exc:
        log.warning("warning: could not put %s:%s back to %s: %s", remote, MOVING, digest, exc.message)
