"""Every bad input of the web-image issue: one line naming the problem and
the fix, a non-zero exit, no traceback, and nothing half-done."""

from __future__ import annotations

import base64
import os
import socket
import sys
from pathlib import Path

import pytest

from ci.project import Project
from tests.conftest import ROOT, assert_one_line_error, invoke
from tests.integration import registries
from tests.integration.conftest import dangling_images, project_copy, run_web_settings

PINNED_BUILDER = Project(ROOT, "nix/nixpkgs", "nix/images.nix").default_arg("nix-base", "BUILDER_IMAGE")


def state(engine):
    """What a failed build must leave as it was: the tags of web, the containers, the untagged images."""
    return (
        {tag: image.id for image in engine.images.list("web") for tag in image.tags},
        {c.id for c in engine.containers.list(all=True)},
        dangling_images(engine),
    )


def left_since(engine, before) -> tuple:
    """What is new since `before` (a state): web tags moved or added, containers, untagged images.
    What went meanwhile does not count: the engine may be shared, and that was someone else's."""
    tags, containers, dangling = state(engine)
    return ({tag: image for tag, image in tags.items() if before[0].get(tag) != image},
            containers - before[1], dangling - before[2])


NOTHING = ({}, set(), set())


def test_no_docker_daemon(tmp_path):
    outcome = invoke("build-web", env={"DOCKER_HOST": f"unix://{tmp_path}/missing.sock"})
    assert_one_line_error(outcome, "cannot reach the Docker daemon", "start dockerd")


def test_missing_tool(web_tag, registry):
    python_only = os.path.dirname(sys.executable)
    outcome = invoke("push", web_tag, "--to", f"docker://{registry}/t/web:1", env={"PATH": python_only})
    assert_one_line_error(outcome, "skopeo is not on PATH", "apt-get install skopeo")


def test_unknown_image_name(registry):
    outcome = invoke("push", "nope", "--to", f"docker://{registry}/t/nope:1")
    assert_one_line_error(outcome, "unknown image 'nope'", "known images: web")


@pytest.mark.parametrize(("target", "phrase"), [
    ("docker://127.0.0.1:5000/Web:1", "is not a valid image reference"),
    ("docker://127.0.0.1:5000/web:-dash", "is not a valid image reference"),
    ("docker://web:1", "names no registry"),
    ("ftp://127.0.0.1/web", "is not a destination this task understands"),
])
def test_malformed_reference(web_tag, target, phrase):
    assert_one_line_error(invoke("push", web_tag, "--to", target), phrase)


def test_malformed_tag(web_tag, tmp_path):
    outcome = invoke("push", web_tag, "--to", f"oci:{tmp_path}/layout:bad tag!")
    assert_one_line_error(outcome, "'bad tag!' is not a valid tag")
    assert not (tmp_path / "layout").exists()


@pytest.mark.parametrize(("images_file", "phrases", "in_log"), [
    ("tests/fixtures/broken/eval-error.nix", ["Nix build", "undefined variable 'undefinedServer'"], "eval-error.nix"),
    ("tests/fixtures/broken/build-error.nix", ["Nix build", "builder for", "failed"], "fails on purpose"),
])
def test_nix_failure_shows_the_log_tail_and_leaves_nothing(engine, web_image, images_file, phrases, in_log):
    before = state(engine)
    outcome = invoke("build-web", env={"INVOKE_WEB_IMAGES": images_file})
    assert_one_line_error(outcome, *phrases)
    assert in_log in outcome.stderr  # the tail of the Nix log is shown
    assert left_since(engine, before) == NOTHING  # latest not moved, no container or image left


def test_a_failing_run_step_shows_its_output_and_leaves_nothing(engine, web_image, tmp_path):
    env = project_copy(tmp_path)
    dockerfile = tmp_path / "images" / "web.Dockerfile"
    failing = "RUN echo the step fails on purpose >&2 && false && cd /src"
    dockerfile.write_text(dockerfile.read_text().replace("RUN cd /src", failing))
    before = state(engine)
    outcome = invoke("build-web", env=env)
    assert_one_line_error(outcome, "web.Dockerfile's RUN steps, then /result exited 1 before writing the image",
                          "the end of its output is above")
    assert "the step fails on purpose" in outcome.stderr
    assert left_since(engine, before) == NOTHING


def test_an_images_file_naming_another_image_is_refused_and_nothing_is_loaded(engine, web_image):
    before = state(engine)
    outcome = invoke("build-web", env={"INVOKE_WEB_NAME": "othertest"})
    assert_one_line_error(outcome, "the images file built web:", "not an image named othertest",
                          'set name = "othertest" in the images file')
    assert left_since(engine, before) == NOTHING  # the archive went to the engine without its manifest: no image
    assert not engine.images.list("othertest")


def test_registry_that_does_not_answer(web_tag):
    port = registries.free_port()
    outcome = invoke("push", web_tag, "--to", f"docker://127.0.0.1:{port}/web:1")
    assert_one_line_error(outcome, f"the registry 127.0.0.1:{port} does not answer")


@pytest.fixture
def registry_with_auth(tmp_path):
    """A second real registry that wants user alice, password right-password."""
    with registries.registry(tmp_path, password="right-password") as address:
        yield address


def test_refused_credentials_are_reported_and_never_shown(web_tag, registry_with_auth):
    env = {"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "wrong-password", "REGISTRY_HOST": registry_with_auth}
    outcome = invoke("push", web_tag, "--to", f"docker://{registry_with_auth}/web:1", env=env)
    assert_one_line_error(outcome, f"the registry {registry_with_auth} refused the credentials")
    secret = base64.b64encode(b"alice:wrong-password").decode()
    for text in (outcome.stdout, outcome.stderr):
        assert "wrong-password" not in text and secret not in text

    env["REGISTRY_PASSWORD"] = "right-password"
    outcome = invoke("push", web_tag, "--to", f"docker://{registry_with_auth}/web:1", env=env)
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.split()[1].startswith("sha256:")


def test_builder_image_cannot_be_downloaded(engine):
    outcome = invoke("build-base", env={"INVOKE_BUILDER_BASE": "nix-base-test:offline", "INVOKE_BUILDER_FROM_DEBIAN": "0"})
    assert_one_line_error(outcome, f"cannot download the builder image {PINNED_BUILDER}: no network",
                          "--from-debian")
    assert not engine.images.list("nix-base-test")


def test_pinned_nixpkgs_cannot_be_downloaded(engine, builder_image):
    outcome = invoke("build-base", env={
        # The Debian builder of the session's cache (trixie's Nix 2.26 evaluates the pin up to its download),
        # by its ID: with INVOKE_BUILDER_FROM_DEBIAN on, as in FIXTURE_CONFIG, builder.image is not read.
        "INVOKE_BUILDER_FROM_DEBIAN": "0",
        "INVOKE_BUILDER_IMAGE": builder_image.id,
        "INVOKE_WEB_PKGS": "nix/nixpkgs",
        "INVOKE_BUILDER_BASE": "nix-base-test:offline",
    })
    assert_one_line_error(outcome, "cannot download the pinned nixpkgs (nix/nixpkgs)", "offline")
    assert "unable to download" in outcome.stderr
    assert not engine.images.list("nix-base-test")


def test_port_already_taken(engine, web_image):
    with run_web_settings(engine, web_image.id) as settings:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            outcome = invoke("run-web", "--port", str(port), env=settings)
        assert_one_line_error(outcome, f"port {port} on 127.0.0.1 is already taken", "--port")
        assert not engine.containers.list(all=True, filters={"name": f"^{settings['INVOKE_WEB_CONTAINER']}$"})


def test_missing_images_file():
    outcome = invoke("build-web", env={"INVOKE_WEB_IMAGES": "nix/nope.nix"})
    assert_one_line_error(outcome, "the images file nix/nope.nix does not exist", "web.images")


def test_run_web_twice(engine, web_image):
    with run_web_settings(engine, web_image.id) as settings:
        assert invoke("run-web", "--port", str(registries.free_port()), env=settings).code == 0
        try:
            assert_one_line_error(invoke("run-web", "--port", str(registries.free_port()), env=settings),
                                  "already exists", "stop-web")
        finally:
            invoke("stop-web", env=settings)


def test_extract_into_an_unwritable_place(web_tag, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    outcome = invoke("extract", web_tag, "--to", f"rootfs:{blocker}/rootfs")
    assert_one_line_error(outcome, "cannot write under", "writable directory")
    assert Path(blocker).is_file()
