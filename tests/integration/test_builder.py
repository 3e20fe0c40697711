"""The builder made from Debian packages, and the Nix version the pinned nixpkgs
needs: Debian 13's builder evaluates the pin up to its download; an older Nix, in a
builder or on this machine, is refused in one line that says how to get a newer one."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from tests.conftest import assert_one_line_error, invoke
from tests.integration.conftest import project_copy

PINNED = {"INVOKE_WEB_PKGS": "nix/nixpkgs", "INVOKE_BUILDER_BASE": "nix-base-test:pin"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.search(r"(\d+)\.(\d+)", text).groups())


def test_the_default_debian_builder_has_a_nix_that_evaluates_the_pin(engine, builder_image):
    # The builder under the session's cache, by ID (the tag nix-builder:debian-trixie moves when it is made anew).
    release = engine.containers.run(builder_image.id, ["cat", "/etc/os-release"], remove=True).decode()
    assert "VERSION_CODENAME=trixie" in release.splitlines(), release
    printed = engine.containers.run(builder_image.id, ["nix", "--version"], remove=True).decode()
    assert _version(printed) >= (2, 18), printed


def test_the_pin_evaluates_in_the_default_builder_up_to_its_download(engine, cache_image):
    outcome = invoke("build-base", env=PINNED)
    assert_one_line_error(outcome, "cannot download the pinned nixpkgs (nix/nixpkgs)", "offline")
    assert "needs Nix" not in outcome.stderr
    assert not engine.images.list("nix-base-test")


def test_a_builder_with_an_older_nix_is_refused_in_one_line(engine, cache_image):
    outcome = invoke("build-base", "--suite", "bookworm", env=PINNED, timeout=600)
    assert_one_line_error(outcome, "the package set needs Nix 2.18 or newer, and the Nix there is 2.8",
                          "invoke build-base --from-debian", "trixie")
    assert "unable to download" not in outcome.stderr  # refused before any download
    assert not engine.images.list("nix-base-test")


@pytest.mark.parametrize("suite", ["Trixie", "trixie; rm -rf /", "../x"])
def test_a_suite_that_is_no_release_name_is_refused(engine, suite):
    outcome = invoke("build-base", "--suite", suite, env=PINNED)
    assert_one_line_error(outcome, "builder.suite is", "(from --suite)", "a Debian release is a name")


def test_an_empty_suite_setting_is_refused(engine):
    outcome = invoke("build-base", env={**PINNED, "INVOKE_BUILDER_SUITE": ""})
    assert_one_line_error(outcome, "builder.suite is '' (from INVOKE_BUILDER_SUITE)", "a Debian release is a name")


def test_a_suite_the_mirror_does_not_serve_is_refused_in_one_line(engine):
    outcome = invoke("build-base", "--suite", "nosuchrelease", env=PINNED, timeout=600)
    assert_one_line_error(outcome, "making a Debian nosuchrelease root filesystem with mmdebstrap failed",
                          "builder.suite")
    assert not engine.images.list("nix-builder:debian-nosuchrelease")


def _host_nix_version() -> tuple[int, ...]:
    return _version(subprocess.run(["nix-build", "--version"], capture_output=True, text=True).stdout)


def test_host_nix_too_old_for_the_pin_is_refused_in_one_line(nix_on_host):
    if _host_nix_version() >= (2, 18):
        pytest.skip("this machine's Nix can evaluate the pin")
    outcome = invoke("start", "services", env={"INVOKE_WEB_PKGS": "nix/nixpkgs"}, timeout=300)
    assert_one_line_error(outcome, "on this machine: the package set needs Nix 2.18 or newer", "--container")


def test_host_nix_without_its_build_users_is_a_machine_problem(nix_on_host, tmp_path):
    # A page of its own: Nix asks for its build users only when it has something to build.
    copy = project_copy(tmp_path, f"<p>{uuid.uuid4()}</p>\n")
    outcome = invoke("start", "services", timeout=300, env={
        **copy, "NIX_CONFIG": "build-users-group = nix-ci-no-such-group",
        "INVOKE_START_SERVICES_FILE": "tests/fixtures/services.nix"})
    assert_one_line_error(outcome, "this machine's Nix cannot build: the group 'nix-ci-no-such-group'",
                          "build-users-group =")
    assert "fix tests/fixtures/services.nix" not in outcome.error_line
