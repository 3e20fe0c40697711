"""The cache image, no-op and incremental builds and pushes, against the real
engine, registry and Nix: what the user sees in the log, the tags, the layer
digests and the bytes a push sends."""

from __future__ import annotations

import re
import uuid

import pytest

from ci.project import Project
from tests.conftest import ROOT, assert_one_line_error, invoke
from tests.integration import registries
from tests.integration.conftest import LABEL, identity_tag, printed_id, project_copy

PACKAGE_SET_ID = Project(ROOT, "tests/nixpkgs", "tests/fixtures/images.nix").package_set_id()


def built_derivations(log: str) -> set[str]:
    """Names of the derivations Nix built, from its "building '/nix/store/…-name.drv'" lines."""
    return {m[1] for m in re.finditer(r"building '/nix/store/[a-z0-9]{32}-(.+?)\.drv'", log)}


def tags_printed(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.strip().splitlines()]


def test_second_build_with_nothing_changed_builds_nothing(web_image):
    outcome = invoke("build-web")
    assert outcome.code == 0, outcome.stderr
    assert "is up to date" in outcome.stderr
    assert "Step " not in outcome.stderr and "in a container of" not in outcome.stderr  # no docker build, no container
    assert not built_derivations(outcome.stderr)  # no Nix
    tags = tags_printed(outcome.stdout)
    assert tags[0].startswith("web:id-") and tags[-1] == "web:latest"
    assert {line.split()[1] for line in outcome.stdout.strip().splitlines()} == {web_image.id}


def test_page_change_rebuilds_only_what_depends_on_the_page(engine, web_image, tmp_path):
    # A page of its own: the engine may keep images of earlier runs, and those would make a no-op.
    outcome = invoke("build-web", env=project_copy(tmp_path, f"<p>a one-line change {uuid.uuid4()}</p>\n"))
    assert outcome.code == 0, outcome.stderr
    built = built_derivations(outcome.stderr)
    assert "webroot" in built and "web-cmd" in built
    assert not {name for name in built if "busybox" in name or name in ("passwd", "group")}, built

    changed = engine.images.get(identity_tag(outcome))
    before, after = web_image.attrs["RootFS"]["Layers"], changed.attrs["RootFS"]["Layers"]
    assert len(before) == len(after)
    differing = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert len(differing) == 2, differing  # the page's layer and web-cmd's, which refers to it
    assert invoke("build-web").code == 0  # web:latest back to the repository's page, for whoever uses it next


def test_push_sends_only_what_the_registry_lacks(engine, web_image, web_tag, tmp_path):
    with registries.registry(tmp_path / "registry") as address:
        check_incremental_push(engine, web_image, web_tag, f"{address}/test-incremental/web", tmp_path)


def check_incremental_push(engine, web_image, web_tag, repository, tmp_path):
    # build-web, as a user runs it before a push: nothing to build, and web:latest names the image again
    # (another test's build may have moved it), so that the image has every tag a push sends.
    rebuilt = invoke("build-web")
    assert rebuilt.code == 0, rebuilt.stderr[-3000:]
    assert {line.split()[1] for line in rebuilt.stdout.strip().splitlines()} == {web_image.id}
    first = invoke("push", web_tag, "--to", f"docker://{repository}")
    assert first.code == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert [line.split()[0].rpartition(":")[2] for line in lines][-1] == "latest"
    assert lines[0].split()[0].rpartition(":")[2].startswith("id-")
    assert len({line.split()[1] for line in lines}) == 1  # every tag, one manifest

    again = invoke("push", web_tag, "--to", f"docker://{repository}")
    assert "already holds this image" in again.stderr
    assert all("uploaded=0 " in line for line in again.stdout.splitlines())

    try:
        changed_page = invoke("build-web", env=project_copy(tmp_path, "<p>pushed change</p>\n"))
        assert changed_page.code == 0, changed_page.stderr
        changed = identity_tag(changed_page)
        pushed = invoke("push", changed, "--to", f"docker://{repository}:changed")
        assert pushed.code == 0, pushed.stderr
        uploaded = int(re.search(r"uploaded=(\d+)", pushed.stdout)[1])
        new_layers = set(engine.images.get(changed).attrs["RootFS"]["Layers"]) - set(web_image.attrs["RootFS"]["Layers"])
        assert new_layers
        sizes = registries.layer_sizes(f"{repository}:changed")
        changed_size = sum(sizes[diff_id] for diff_id in new_layers)
        assert 0 < uploaded <= 1.2 * changed_size, (uploaded, changed_size)
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the repository's page, for whoever uses it next


@pytest.fixture
def own_cache_names(engine):
    """Local names for nix-base and nix-cache that nothing else uses, so that a build-cache leaves
    nix-base:latest and nix-cache:latest alone; their tags are removed afterwards."""
    names = {"INVOKE_BUILDER_BASE": "nix-cache-test:base", "INVOKE_BUILDER_CACHE": "nix-cache-test:cache"}
    yield names
    remove_own_tags(engine, "nix-cache-test")


def remove_own_tags(engine, repository: str) -> None:
    """Remove the tags of `repository`, and no other tag of the images that have them."""
    for image in engine.images.list(repository):
        for tag in (tag for tag in image.tags if tag.startswith(f"{repository}:")):
            engine.images.remove(tag, noprune=True)


def test_cache_pushed_then_pulled_is_used(engine, cache_image, registry, own_cache_names, tmp_path):
    namespace = f"{registry}/test-cache"
    pushed = invoke("build-cache", "--push", namespace, env=own_cache_names)
    assert pushed.code == 0, pushed.stderr
    assert pushed.stdout.split()[0] == "nix-cache-test:cache"
    destinations = [line.split()[0] for line in pushed.stdout.strip().splitlines()[1:]]
    assert f"docker://{namespace}/nix-cache:pkgs-{PACKAGE_SET_ID}" in destinations
    assert destinations[-1] == f"docker://{namespace}/nix-cache:latest"

    env = {**project_copy(tmp_path, f"<p>built on a pulled cache {uuid.uuid4()}</p>\n"),
           "INVOKE_BUILDER_CACHE": "nix-cache-test:pulled"}
    try:
        outcome = invoke("build-web", "--cache-from", namespace, env=env)
        assert outcome.code == 0, outcome.stderr
        assert f"pulling {namespace}/nix-cache:pkgs-{PACKAGE_SET_ID}" in outcome.stderr
        assert f"using the cache image {namespace}/nix-cache:pkgs-{PACKAGE_SET_ID}" in outcome.stderr
        built = built_derivations(outcome.stderr)
        assert "webroot" in built
        assert not {name for name in built if "busybox" in name}, built  # cached paths not built again
        assert engine.images.get("nix-cache-test:pulled").id == printed_id(pushed)  # the cache this test pushed
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the repository's page, for whoever uses it next


def test_old_cache_warns(web_image):
    outcome = invoke("build-web", env={"INVOKE_BUILDER_MAX_AGE_DAYS": "0"})
    assert outcome.code == 0
    assert "warning: the cache image is" in outcome.stderr and "more than 0 days" in outcome.stderr


@pytest.fixture
def fallback_cache(engine):
    """Local names for the cache and the base it is built from that nothing else uses, removed afterwards
    (only these tags: a fallback built wholly from the engine's build cache is nix-cache:latest itself)."""
    yield {"INVOKE_BUILDER_CACHE": "nix-cache-test:fallback", "INVOKE_BUILDER_BASE": "nix-cache-test:fallback-base"}
    remove_own_tags(engine, "nix-cache-test")


def test_unreachable_cache_falls_back_to_building(cache_image, fallback_cache):
    down = f"127.0.0.1:{registries.free_port()}/nowhere"
    outcome = invoke("build-web", "--cache-from", down, env=fallback_cache)
    assert outcome.code == 0, outcome.stderr
    assert f"warning: cannot use the cache image: the registry 127.0.0.1:{down.split(':')[1].split('/')[0]} " \
           "does not answer; building without it" in outcome.stderr
    assert "building nix-cache-test:fallback from nix-cache-test:fallback-base" in outcome.stderr


def test_missing_cache_falls_back_to_building(cache_image, registry, fallback_cache):
    outcome = invoke("build-web", "--cache-from", f"{registry}/no-such-namespace", env=fallback_cache)
    assert outcome.code == 0, outcome.stderr
    assert "does not exist; building without it" in outcome.stderr


def test_cache_for_another_platform_falls_back(engine, registry, cache_image, fallback_cache, tmp_path):
    namespace = f"{registry}/test-arm64"
    registries.push_handmade_image(f"{namespace}/nix-cache:pkgs-{PACKAGE_SET_ID}", architecture="arm64",
                                   labels={LABEL: "cache"}, workdir=tmp_path)
    outcome = invoke("build-web", "--cache-from", namespace, env=fallback_cache)
    assert outcome.code == 0, outcome.stderr
    assert "is for arm64, not this engine's amd64; building without it" in outcome.stderr
    assert not engine.images.list(f"{namespace}/nix-cache")  # the pulled image is gone


def test_foreign_image_as_cache_is_refused(engine, registry, fallback_cache, tmp_path):
    namespace = f"{registry}/test-foreign"
    registries.push_handmade_image(f"{namespace}/nix-cache:pkgs-{PACKAGE_SET_ID}", architecture="amd64",
                                   labels={}, workdir=tmp_path)
    outcome = invoke("build-web", "--cache-from", namespace, env=fallback_cache)
    assert_one_line_error(outcome, "is not a cache image made by build-cache")
    assert not engine.images.list(f"{namespace}/nix-cache")
    assert not engine.images.list("nix-cache-test")


def test_corrupt_cache_is_refused(engine, fallback_cache, tmp_path):
    with registries.registry(tmp_path / "registry") as address:
        namespace = f"{address}/test-corrupt"
        layers = registries.push_handmade_image(f"{namespace}/nix-cache:pkgs-{PACKAGE_SET_ID}", architecture="amd64",
                                                labels={LABEL: "cache"}, workdir=tmp_path)
        data = registries.blob_path(tmp_path / "registry", layers[0])
        data.write_bytes(data.read_bytes()[:-10] + b"tampered!!")
        outcome = invoke("build-web", "--cache-from", namespace, env=fallback_cache)
    assert_one_line_error(outcome, "is corrupt", "push it again")
    assert not engine.images.list(f"{namespace}/nix-cache")
