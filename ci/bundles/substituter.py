"""A binary cache pulled from a registry for one image build, which reads it as an
extra substituter: a cold machine downloads built paths instead of building them."""

from __future__ import annotations

import logging
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError, IntegrityError, NetworkUnavailable, RegistryError
from ..core.files import human_size
from .artifacts import BUNDLE_TITLE, pull

log = logging.getLogger(__name__)


# Where a substituter goes in a docker build's context (and so under /src).
SUBSTITUTER_CONTEXT = ".nix-substituter"


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
            # Its members were checked when it was pulled (contents.bundle_members): cache/ holds only
            # files and directories, none of them outside it.
            try:
                with tarfile.open(pulled.path, mode="r:") as archive:
                    cache = [m for m in archive.getmembers() if m.name.removeprefix("./").split("/")[0] == "cache"]
                    archive.extractall(work, members=cache, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise IntegrityError(f"the bundle {reference} cannot be unpacked ({type(exc).__name__})",
                                     "push the bundle again with `invoke cache-push`") from None
            pulled.path.unlink()
        signers = ", ".join(pulled.contents.signers) or "nobody"
        log.info("using the substituter %s (%d paths, %s, signed by %s)", reference, len(pulled.contents.narinfos),
                 human_size(pulled.contents.nar_bytes), signers)
        yield Substituter(reference, directory, keys)
