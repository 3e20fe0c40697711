"""Secrets and TLS, against real registries: credentials given through the
environment or an auth file never appear in a process's command line (read
from /proc while the command runs), in the programs' environments, in the logs,
in error messages or in what the tasks write for GitHub; and TLS is verified for
a registry that is not on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from ci.core.refs import is_loopback
from ci.project import Project
from tests.conftest import Outcome, assert_one_line_error, invoke
from tests.integration import registries
from tests.integration.conftest import unavailable
from tests.integration.test_faults import fault_project, private_tmpdir, remove_tags

USER = "alice"


def secret_forms(password: str) -> list[str]:
    """The password, and user:password as registries and auth files carry it (base64)."""
    return [password, base64.b64encode(f"{USER}:{password}".encode()).decode()]


class ProcessWatch:
    """Reads every process's command line from /proc, again and again, while a command runs;
    and the environment and auth file of every skopeo it sees."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s.encode() for s in secrets]
        self.leaks: set[str] = set()
        self.skopeo: dict[int, str] = {}  # pid: command line
        self.auth_files: dict[str, tuple[int, int]] = {}  # path: (mode of the file, mode of its directory)
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        own = str(os.getpid())
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and entry.name != own:
                    with contextlib.suppress(OSError):
                        self._look_at(entry)
            self.scans += 1

    def _look_at(self, entry: Path) -> None:
        cmdline = (entry / "cmdline").read_bytes()
        shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
        self.leaks.update(f"command line of {entry.name}: {shown}" for s in self.secrets if s in cmdline)
        if not cmdline.split(b"\0")[0].endswith(b"skopeo"):
            return
        self.skopeo[int(entry.name)] = shown
        environment = (entry / "environ").read_bytes()
        self.leaks.update(f"environment of skopeo {entry.name}" for s in self.secrets if s in environment)
        for word in shown.split():
            if word.startswith("--authfile="):
                path = Path(word.removeprefix("--authfile="))
                with contextlib.suppress(OSError):
                    self.auth_files[str(path)] = (stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode))


@pytest.fixture
def github_files(tmp_path) -> dict[str, Path]:
    files = {"GITHUB_OUTPUT": tmp_path / "github-output", "GITHUB_STEP_SUMMARY": tmp_path / "github-summary"}
    for path in files.values():
        path.touch()
    return files


def on_github(files: dict[str, Path]) -> dict[str, str]:
    return {"GITHUB_ACTIONS": "true", **{name: str(path) for name, path in files.items()}}


def assert_nowhere(secrets: list[str], outcome: Outcome, files: dict[str, Path], watch: ProcessWatch) -> None:
    assert watch.scans > 10, "the command lines were hardly read"
    assert watch.leaks == set()
    for secret in secrets:
        assert secret not in outcome.stdout and secret not in outcome.stderr
        for path in files.values():
            assert secret not in path.read_text(), path


@pytest.fixture
def auth_registry(tmp_path):
    """A registry that wants alice and a password of its own; yields (address, password)."""
    password = f"faulttest-{uuid.uuid4().hex}"
    with registries.registry(tmp_path / "auth-registry", password=password) as address:
        yield address, password


def test_credentials_from_the_environment_show_nowhere(web_tag, auth_registry, github_files, tmp_path):
    address, password = auth_registry
    env = {"REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": password, "REGISTRY_HOST": address,
           "CI_DEBUG": "1",  # every command in the log
           **on_github(github_files), **private_tmpdir(tmp_path / "tmp")}
    with ProcessWatch(secret_forms(password)) as watch:
        outcome = invoke("push", web_tag, "--to", f"docker://{address}/secrets/web", env=env)  # every tag: inspects and copies
    assert outcome.code == 0, outcome.stderr
    assert_nowhere(secret_forms(password), outcome, github_files, watch)

    assert any("--authfile=" in line for line in watch.skopeo.values()), watch.skopeo  # it was watched
    assert watch.auth_files and set(watch.auth_files.values()) == {(0o600, 0o700)}, watch.auth_files
    assert not any(Path(path).exists() for path in watch.auth_files)
    assert not os.listdir(env["TMPDIR"])
    assert "sha256:" in github_files["GITHUB_OUTPUT"].read_text()  # the outputs were written


def test_credentials_from_an_auth_file_show_nowhere(web_tag, auth_registry, github_files, tmp_path):
    address, password = auth_registry
    auth_file = tmp_path / "auth.json"  # as `skopeo login --authfile` writes it
    auth_file.write_text(json.dumps({"auths": {address: {"auth": secret_forms(password)[1]}}}))
    env = {"REGISTRY_AUTH_FILE": str(auth_file), "CI_DEBUG": "1", **on_github(github_files)}
    with ProcessWatch(secret_forms(password)) as watch:
        outcome = invoke("push", web_tag, "--to", f"docker://{address}/secrets/web:from-file", env=env)
    assert outcome.code == 0, outcome.stderr
    assert_nowhere(secret_forms(password), outcome, github_files, watch)
    assert watch.skopeo and not any("--authfile=" in line for line in watch.skopeo.values())  # skopeo read the file itself


def test_a_refused_password_shows_nowhere(web_tag, auth_registry, github_files, tmp_path):
    address, password = auth_registry
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {"REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": wrong, "REGISTRY_HOST": address, "CI_DEBUG": "1",
           **on_github(github_files)}
    with ProcessWatch(secret_forms(wrong) + secret_forms(password)) as watch:
        outcome = invoke("push", web_tag, "--to", f"docker://{address}/secrets/web:refused", env=env)
    assert_one_line_error(outcome, f"the registry {address} refused the credentials")
    assert "::error title=invoke push::" in outcome.stderr  # the annotation, scrubbed like the rest
    assert outcome.stderr.count("trying again") == 0  # refused credentials are not tried again
    assert_nowhere(secret_forms(wrong) + secret_forms(password), outcome, github_files, watch)


def test_a_cache_pulled_with_credentials_shows_them_nowhere(engine, cache_image, auth_registry, github_files, tmp_path):
    """build-web pulls the cache image through the engine (its API, no process of ours)."""
    address, password = auth_registry
    name = f"faulttest-secrets-{uuid.uuid4().hex[:8]}"
    env, _ = fault_project(tmp_path / "project", images="tests/fixtures/images.nix", name=name)
    pkgs = Project(Path(env["INVOKE_PROJECT_ROOT"]), "tests/nixpkgs", "tests/fixtures/images.nix").package_set_id()
    remote = f"{address}/secrets/nix-cache:pkgs-{pkgs}"
    local = f"faulttest-cache:{uuid.uuid4().hex[:12]}"  # missing, so that build-web pulls
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {address: {"auth": secret_forms(password)[1]}}}))
    subprocess.run(["skopeo", f"--policy={registries.POLICY}", "copy", f"--authfile={auth_file}", "--dest-tls-verify=false",
                    f"docker-daemon:{cache_image.id}", f"docker://{remote}"], check=True, capture_output=True)
    env = {**env, "REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": password, "REGISTRY_HOST": address,
           "INVOKE_BUILDER_CACHE": local,
           "CI_DEBUG": "1", **on_github(github_files), **private_tmpdir(tmp_path / "tmp")}
    try:
        with ProcessWatch(secret_forms(password)) as watch:
            outcome = invoke("build-web", "--cache-from", f"{address}/secrets", env=env)
        assert outcome.code == 0, outcome.stderr[-3000:]
        assert f"pulling {remote}" in outcome.stderr and f"using the cache image {remote}" in outcome.stderr
        assert_nowhere(secret_forms(password), outcome, github_files, watch)
        assert not os.listdir(env["TMPDIR"])
    finally:
        remove_tags(engine, name)
        for tag in (local, remote):
            with contextlib.suppress(Exception):
                engine.images.remove(tag)


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_registry(tmp_path):
    """A registry with a self-signed certificate on this machine's own non-loopback address."""
    address = registries.non_loopback_address()
    if address is None:
        unavailable("this machine has no non-loopback IPv4 address for a TLS registry")
    assert not is_loopback(address)
    certificate = registries.self_signed_certificate(tmp_path / "tls", address)
    with registries.registry_server(tmp_path / "tls-registry", host=address, tls=certificate) as server:
        yield server.address


def test_a_registry_off_loopback_must_have_a_certificate_we_trust(web_tag, tls_registry):
    target = f"docker://{tls_registry}/tls/web:1"
    refused = invoke("push", web_tag, "--to", target)
    assert_one_line_error(refused, f"the registry {tls_registry} has a certificate that cannot be verified",
                          "pass --insecure if you trust it")
    assert "trying again" not in refused.stderr

    trusted = invoke("push", web_tag, "--to", target, "--insecure")
    assert trusted.code == 0, trusted.stderr
    served = subprocess.run(["skopeo", "inspect", "--tls-verify=false", target], check=True, capture_output=True, text=True)
    assert json.loads(served.stdout)["Digest"] == trusted.stdout.split()[1]
