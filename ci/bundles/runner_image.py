"""The runner image (images/runner.Dockerfile): at start it restores a bundle,
refusing anything its trusted keys did not sign, and runs it."""

from __future__ import annotations

import logging
from pathlib import Path

from ..builder import BUILDER_HINT
from ..core import resources
from ..tools import docker

log = logging.getLogger(__name__)


def build_runner_image(root: Path, *, base: str, tag: str, keys: tuple[str, ...]) -> docker.Image:
    """Build images/runner.Dockerfile on the builder base, with `keys` as the trusted keys baked in."""
    image = docker.require_image(base, BUILDER_HINT)
    if not keys:
        log.warning("warning: no public key configured: the runner will trust no bundle until TRUSTED_PUBLIC_KEYS is set "
                    "at `docker run` (make a key pair with `invoke bundle-key`)")
    context = resources.images()  # the shipped runner.Dockerfile and the files it copies
    return docker.build(str(context), str(context / "runner.Dockerfile"), tag=tag, labels={docker.LABEL: "runner"},
                        buildargs={"BASE_IMAGE": image.id, "TRUSTED_PUBLIC_KEYS": " ".join(keys)})
