"""Fixtures that start and clean up real components: the Docker engine, the
registry, and the builder and cache images made from Debian packages.

In CI (CI=true) a missing component fails the run; elsewhere the tests that
need it are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import uuid

import docker
import docker.errors
import pytest
import requests

from tests.conftest import invoke

IN_CI = os.environ.get("CI") == "true"
LABEL = "io.github.nix-ci.toolkit"


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (integration tests never skip in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        unavailable(f"no Docker engine ({exc}); run `bash .ci/services`")
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry():
    """host:port of the local registry that .ci/services starts."""
    address = os.environ.get("TEST_REGISTRY", "127.0.0.1:5000")
    try:
        requests.get(f"http://{address}/v2/", timeout=3).raise_for_status()
    except requests.RequestException as exc:
        unavailable(f"no registry at {address} ({exc}); run `bash .ci/services`")
    return address


@pytest.fixture(scope="session")
def nix_on_host():
    try:
        subprocess.run(["nix-instantiate", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"no Nix on this machine ({exc}); apt-get install nix-bin")


def printed_id(outcome) -> str:
    """The image ID a build task printed on its first line (NAME:TAG ID)."""
    return outcome.stdout.split()[1]


@pytest.fixture(scope="session")
def cache_image(engine):
    """nix-base and nix-cache built with the Debian builder and the stand-in package set:
    the nix-cache image this build made, by the ID it printed.

    A tag of the session's own holds it (and so nix-base and the builder under it) until the
    session ends: a build-cache elsewhere on the engine that moves nix-cache:latest removes the
    image it took the tag from unless another tag names it. It goes, as then it would have, after.
    """
    outcome = invoke("build-cache", "--from-debian")
    assert outcome.code == 0, outcome.stderr[-3000:]
    image = engine.images.get(printed_id(outcome))
    held = f"nixci-session-{uuid.uuid4().hex[:8]}"
    image.tag(held, "cache")
    yield image
    engine.images.remove(f"{held}:cache")


@pytest.fixture(scope="session")
def builder_image(engine, cache_image):
    """The Debian-made builder cache_image was built from, by ID: of the images with its packages
    label (nix-base and nix-cache inherit it) whose layers begin cache_image's, the one with fewest,
    imported (no parent) rather than a build step that added none. all=True: once a newer builder
    has its tag, this one is an untagged parent, which a plain list leaves out."""
    layers = cache_image.attrs["RootFS"]["Layers"]
    under = [image for image in engine.images.list(all=True, filters={"label": f"{LABEL}.packages"})
             if layers[:len(image.attrs["RootFS"]["Layers"])] == image.attrs["RootFS"]["Layers"]]
    if not under:
        pytest.fail(f"no Debian builder under the cache image {cache_image.id}")
    return min(under, key=lambda image: (len(image.attrs["RootFS"]["Layers"]), bool(image.attrs.get("Parent"))))


def identity_tag(outcome) -> str:
    """The identity tag (NAME:id-<inputs>) a build task printed first. A build with other inputs
    gets another identity tag; none moves this one, as builds move NAME:latest."""
    tag = outcome.stdout.split()[0]
    assert ":id-" in tag, outcome.stdout
    return tag


@pytest.fixture(scope="session")
def web_build(cache_image):
    """build-web with the default (load) flow, once: what it printed."""
    outcome = invoke("build-web")
    assert outcome.code == 0, outcome.stderr[-3000:]
    return outcome


@pytest.fixture(scope="session")
def web_image(engine, web_build):
    """The web image of the default flow, by the ID build-web printed. Tests read it by ID or
    web_tag, never as web:latest, which other tests' builds move."""
    return engine.images.get(printed_id(web_build))


@pytest.fixture(scope="session")
def web_tag(web_build) -> str:
    """web_image's identity tag, web:id-<inputs>: what to give the tasks that take NAME:TAG (push, extract)."""
    return identity_tag(web_build)


@contextlib.contextmanager
def run_web_settings(engine, image_id: str):
    """The settings under which run-web and stop-web run the image `image_id` and nothing else.

    run-web starts <web.name>:latest as the container web.container: web:latest moves with every
    build, and the container name is everyone's. Here both are a name of the test's own, tagged
    on the image meanwhile; the container, should the test leave one, and the tag go after.
    """
    name = f"webtest-{uuid.uuid4().hex[:8]}"
    engine.api.tag(image_id, name, "latest")
    try:
        yield {"INVOKE_WEB_NAME": name, "INVOKE_WEB_CONTAINER": name}
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(name).remove(force=True)
        engine.images.remove(f"{name}:latest", noprune=True)


# build-web's log line once Nix has built the image's stream script (its store path), which
# the toolkit runs right after: from there on, the image streams into the engine.
STREAM_BUILT = re.compile(r"^/nix/store/\w{32}-stream-\S+$", re.M)


def served_page(engine, tag: str) -> str:
    """The page inside the image `tag`, read from its files, as the server would serve it."""
    return engine.containers.run(tag, ["/bin/busybox", "sh", "-c", "cat /nix/store/*-webroot/index.html"],
                                 remove=True, user="101:101").decode()


def our_containers(client) -> list:
    return client.containers.list(all=True, filters={"label": LABEL})


def dangling_images(client) -> set[str]:
    return {image.id for image in client.images.list(filters={"dangling": True})}


PROJECT_PARTS = (".dockerignore", "images", "nix", "tests/nixpkgs", "tests/fixtures")


def project_copy(directory, page: str | None = None):
    """A copy of the project's build inputs under `directory`, with another page if given.

    Builds of it run with INVOKE_PROJECT_ROOT pointing there: same Dockerfiles,
    package set and images file, one input changed.
    """
    import shutil

    from tests.conftest import ROOT

    for part in PROJECT_PARTS:
        source, target = ROOT / part, directory / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("result*", "__pycache__"))
        else:
            shutil.copy2(source, target)
    if page is not None:
        (directory / "tests" / "fixtures" / "web" / "index.html").write_text(page)
    return {"INVOKE_PROJECT_ROOT": str(directory)}
