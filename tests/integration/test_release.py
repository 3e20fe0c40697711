"""build-cache's publishing (ci.release): immutable tags of every image first, then
latest of each, last; a failure in the middle leaves every latest where it was."""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest

from ci import release
from ci.core.errors import ToolkitError
from ci.tools import skopeo

pytestmark = [pytest.mark.engine, pytest.mark.registry]


def small_image(engine, tag: str, content: str) -> str:
    """A FROM scratch image of one file, tagged `tag`."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY file /file\n"), ("file", content.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    return image.id


@pytest.fixture
def names(engine):
    made = f"release-{uuid.uuid4().hex[:8]}"
    yield made
    for image in engine.images.list():
        for tag in image.tags:
            if made in tag:
                engine.images.remove(tag)


def digest(reference: str) -> str | None:
    try:
        return skopeo.inspect(f"docker://{reference}").digest
    except ToolkitError:
        return None


def test_a_failed_second_push_moves_no_latest(engine, registry, names):
    namespace = f"{registry}/{names}"
    small_image(engine, f"{names}-base:latest", "old base")
    small_image(engine, f"{names}-cache:latest", "old cache")
    members = [release.Member(f"{names}-base:latest", f"{namespace}/nix-base"),
               release.Member(f"{names}-cache:latest", f"{namespace}/nix-cache")]
    release.publish(members, ["week-1"])
    before = {m.remote: digest(f"{m.remote}:latest") for m in members}
    assert all(before.values())

    small_image(engine, f"{names}-base:latest", "new base")
    engine.images.remove(f"{names}-cache:latest")  # the second image cannot be pushed
    with pytest.raises(ToolkitError):
        release.publish(members, ["week-2"])
    assert digest(f"{namespace}/nix-base:week-2") is not None  # its immutable tag went up
    assert {m.remote: digest(f"{m.remote}:latest") for m in members} == before  # no latest moved


def test_a_failed_latest_move_puts_the_first_back(engine, registry, names, monkeypatch):
    namespace = f"{registry}/{names}"
    small_image(engine, f"{names}-base:latest", "old base")
    small_image(engine, f"{names}-cache:latest", "old cache")
    members = [release.Member(f"{names}-base:latest", f"{namespace}/nix-base"),
               release.Member(f"{names}-cache:latest", f"{namespace}/nix-cache")]
    release.publish(members, ["week-1"])
    before = digest(f"{namespace}/nix-base:latest")

    small_image(engine, f"{names}-base:latest", "new base")
    small_image(engine, f"{names}-cache:latest", "new cache")
    push = release.transfer.push

    def failing_cache_latest(image, targets, **options):
        if targets == [f"docker://{namespace}/nix-cache:latest"]:
            raise ToolkitError("the registry refused the push")
        return push(image, targets, **options)

    monkeypatch.setattr(release.transfer, "push", failing_cache_latest)
    with pytest.raises(ToolkitError):
        release.publish(members, ["week-2"])
    assert digest(f"{namespace}/nix-base:week-2") != before  # the new base is there, under its own tag
    assert digest(f"{namespace}/nix-base:latest") == before  # and latest is back where it was
