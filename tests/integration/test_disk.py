"""Disk use stays flat over repeated cache builds: a build that moves nix-base's or
nix-cache's tag to a new image removes the image it took the tag from, unless
something still uses it."""

from __future__ import annotations

import uuid

import docker
import pytest

from tests.conftest import invoke
from tests.integration.conftest import LABEL, project_copy

NAMES = {"INVOKE_BUILDER_BASE": "flat-base:latest", "INVOKE_BUILDER_CACHE": "flat-cache:latest"}


def _exists(engine, image_id: str) -> bool:
    try:
        engine.images.get(image_id)
    except docker.errors.ImageNotFound:
        return False
    return True


@pytest.fixture
def flat_images(engine):
    yield
    for ref in reversed(NAMES.values()):  # nix-cache first: it is a child of nix-base
        for image in engine.images.list(name=ref.split(":")[0]):
            engine.images.remove(image.id, force=True)


def _build_cache(engine, tmp_path, round_: int) -> tuple[str, str]:
    """build-cache of a project copy with a page of its own: a new nix-base and nix-cache."""
    env = {**project_copy(tmp_path / f"round-{round_}", f"<p>round {round_} {uuid.uuid4()}</p>\n"), **NAMES}
    outcome = invoke("build-cache", "--from-debian", env=env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return engine.images.get(NAMES["INVOKE_BUILDER_BASE"]).id, engine.images.get(NAMES["INVOKE_BUILDER_CACHE"]).id


def test_rebuilt_cache_images_replace_the_old_ones_on_disk(engine, cache_image, flat_images, tmp_path):
    first = _build_cache(engine, tmp_path, 1)
    layers_after_first = engine.df()["LayersSize"]
    previous = first
    for round_ in (2, 3):
        current = _build_cache(engine, tmp_path, round_)
        assert set(current).isdisjoint(previous)  # each round made new images
        for old in previous:
            assert not _exists(engine, old), f"{old} stayed on disk after its tag moved"
        previous = current
    # Flat: two more rounds add no more than the pages' few bytes and the engine's rounding.
    assert engine.df()["LayersSize"] - layers_after_first < 5_000_000


def test_a_replaced_image_a_container_uses_stays(engine, cache_image, flat_images, tmp_path):
    base, _ = _build_cache(engine, tmp_path, 1)
    holder = engine.containers.create(base, ["true"], labels={LABEL: "test"})
    try:
        new_base, _ = _build_cache(engine, tmp_path, 2)
        assert new_base != base and _exists(engine, base)
    finally:
        holder.remove(force=True)
        if _exists(engine, base):
            engine.images.remove(base, force=True)
