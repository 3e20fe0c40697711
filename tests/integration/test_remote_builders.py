"""Nix remote builders (ci.remote) against a real one: a second container with Nix and sshd on a
loopback port, its host key made here. A remote build gives the image a local build gives; a
no-op stays one; bad input is one line, leaves nothing, and never shows the key."""

from __future__ import annotations

import os
import re
import threading
import uuid
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, invoke
from tests.integration import remote_builder
from tests.integration.conftest import STREAM_BUILT, project_copy

BASE = "remotetest-nix-base:latest"
CACHE = "remotetest-nix-cache:latest"
TAGS = {"INVOKE_BUILDER_BASE": BASE, "INVOKE_BUILDER_CACHE": CACHE}
REMOTELY = re.compile(r"^building '(/nix/store/\S+\.drv)' on 'ssh-ng://root@127\.0\.0\.1'", re.M)


@pytest.fixture(scope="module")
def cache(engine):
    """nix-base and nix-cache of these tests' own, from the Debian builder (which has ssh)."""
    outcome = invoke("build-cache", "--from-debian", env=TAGS)
    assert outcome.code == 0, outcome.stderr[-3000:]
    yield CACHE
    for tag in (CACHE, BASE):
        engine.images.remove(tag)


@pytest.fixture(scope="module")
def builder(engine, tmp_path_factory):
    started = remote_builder.start(engine, tmp_path_factory.mktemp("remote-builder"))
    yield started
    started.container.remove(force=True)


def settings(builder, *, spec: str | None = None, known_hosts: str | None = None, key: Path | None = None,
             **more: str) -> dict[str, str]:
    """The environment of a build on `builder`: its spec, pinned key, the client key; the host's network."""
    return {**TAGS, "INVOKE_REMOTE_BUILDERS": spec or builder.spec(),
            "INVOKE_REMOTE_HOST_KEYS": known_hosts or builder.known_hosts,
            "INVOKE_REMOTE_SSH_KEY_FILE": str(key or builder.client_key), "INVOKE_REMOTE_NETWORK": "host", **more}


def secret(builder) -> str:
    """A line from the middle of the private key: in no output, no command line."""
    return builder.client_key.read_text().splitlines()[2]


def remote_containers(engine) -> list:
    """Containers that were given the remote builders' settings: none may outlive a build."""
    found = []
    for container in engine.containers.list(all=True, filters={"label": "io.github.nix-ci.toolkit"}):
        try:
            if any(e.startswith("NIX_SSHOPTS=") for e in container.attrs["Config"]["Env"] or []):
                found.append(container)
        except KeyError:
            continue
    return found


class CommandLines:
    """Every process's command line, read from /proc while a build runs (the containers' too)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    continue
            self._stop.wait(0.05)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_remote_build_gives_the_image_a_local_build_gives(engine, cache, builder, tmp_path):
    project = project_copy(tmp_path, page=f"<p>built remotely {uuid.uuid4()}</p>")
    with CommandLines() as lines:
        remote = invoke("build-web", "--remote-only", env={**settings(builder), **project})
    assert remote.code == 0, remote.stderr[-3000:]
    built_there = REMOTELY.findall(remote.stderr)
    assert built_there, remote.stderr[-3000:]  # every derivation: max-jobs = 0
    assert "nothing is built here: max-jobs = 0" in remote.stderr
    stream = STREAM_BUILT.search(remote.stderr)[0]
    assert builder.has(stream)  # the builder's store holds what it built
    assert any(path.endswith("-stream-web.drv") for path in built_there)
    key_line = secret(builder)
    assert key_line not in remote.stdout + remote.stderr
    assert not any(key_line.encode() in line for line in lines.seen)
    assert not remote_containers(engine)  # the key went with the container
    image_id = remote.stdout.split()[1]

    again = invoke("build-web", "--remote-only", env={**settings(builder), **project})
    assert again.code == 0 and "is up to date" in again.stderr  # where it was built is no input

    for tag in [line.split()[0] for line in remote.stdout.splitlines()]:
        engine.images.remove(tag)
    local = invoke("build-web", env={**TAGS, **project})
    assert local.code == 0, local.stderr[-3000:]
    assert not REMOTELY.search(local.stderr)
    assert local.stdout.split()[1] == image_id  # built here or there: the same image


def test_shared_results_are_what_the_next_runner_substitutes(engine, cache, builder, registry, tmp_path):
    keys = {"INVOKE_BUNDLE_SECRET_KEY": str(tmp_path / "key.sec"), "INVOKE_BUNDLE_PUBLIC_KEY": str(tmp_path / "key.pub")}
    made = invoke("bundle-key", "--name", "remotetest-1", env={**TAGS, **keys})
    assert made.code == 0, made.stderr[-3000:]
    project = project_copy(tmp_path / "project", page=f"<p>shared {uuid.uuid4()}</p>")
    shared = f"{registry}/remotetest/shared:{uuid.uuid4().hex[:8]}"
    first = invoke("build-web", "--remote-only", "--share", shared, env={**settings(builder), **project, **keys})
    assert first.code == 0, first.stderr[-3000:]
    assert re.search(r"^shared \d+ store paths \(the new ones and their closures\): ", first.stderr, re.M), first.stderr[-3000:]
    assert not remote_containers(engine)
    image_id = first.stdout.split()[1]
    stream = STREAM_BUILT.search(first.stderr)[0]

    for tag in [line.split()[0] for line in first.stdout.splitlines()]:
        engine.images.remove(tag)
    # The next runner: no builders, the shared cache as substituter; it builds none of what was shared.
    second = invoke("build-web", "--substituter", shared, env={**TAGS, **project, **keys})
    assert second.code == 0, second.stderr[-3000:]
    assert f"copying path '{stream}' from 'file:///src/.nix-substituter'" in second.stderr, second.stderr[-3000:]
    assert "building '" not in second.stderr
    assert second.stdout.split()[1] == image_id


def test_build_vm_builds_on_the_remote_builder(engine, cache, builder, tmp_path):
    public = tmp_path / "id.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t\n")
    output = tmp_path / "nixos.qcow2"
    outcome = invoke("build-vm", "--ssh-key-file", str(public), "--hostname", f"vm{uuid.uuid4().hex[:6]}",
                     "--output", str(output), "--remote-only",
                     env=settings(builder, INVOKE_VM_EXPRESSION="tests/fixtures/vm/image.nix",
                                  INVOKE_WEB_PKGS="tests/nixpkgs/default.nix"))
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert REMOTELY.search(outcome.stderr), outcome.stderr[-3000:]
    assert output.is_file()
    assert not remote_containers(engine)


def test_build_cache_builds_its_closure_remotely_and_substitutes_it(engine, cache, builder):
    tag = f"remotetest-nix-cache-remote:{uuid.uuid4().hex[:8]}"
    outcome = invoke("build-cache", "--remote-only", env=settings(builder, INVOKE_BUILDER_CACHE=tag))
    try:
        assert outcome.code == 0, outcome.stderr[-3000:]
        assert "building the cache's closure on the remote builders first" in outcome.stderr
        assert "from 'file:///src/.nix-substituter'" in outcome.stderr  # docker build substituted, built nothing
        history = " ".join(str(step) for step in engine.api.history(tag))
        assert secret(builder) not in history and "PRIVATE KEY" not in history
    finally:
        engine.images.remove(tag, force=True) if outcome.code == 0 else None
    assert not remote_containers(engine)


# --- bad input: one line each, nothing left, no key shown ---------------------------------

@pytest.fixture
def unbuilt(tmp_path):
    """A project whose image nobody built: the build gets as far as the builders."""
    return project_copy(tmp_path, page=f"<p>never built {uuid.uuid4()}</p>")


def refused(engine, builder, outcome, *phrases):
    assert_one_line_error(outcome, *phrases)
    assert secret(builder) not in outcome.stdout + outcome.stderr
    assert not remote_containers(engine)


def test_a_builder_that_does_not_answer_fails(engine, cache, builder, unbuilt):
    silent = remote_builder.free_port()
    outcome = invoke("build-web", "--remote-only", env={**unbuilt, **settings(
        builder, spec=builder.spec(port=silent), known_hosts=f"[127.0.0.1]:{silent} {builder.host_key}")})
    refused(engine, builder, outcome, f"the builder ssh-ng://root@127.0.0.1:{silent} does not answer",
            "Connection refused", "--fallback-local")


def test_a_builder_that_does_not_answer_falls_back_when_allowed(engine, cache, builder, unbuilt):
    silent = remote_builder.free_port()
    outcome = invoke("build-web", "--remote-only", "--fallback-local", env={**unbuilt, **settings(
        builder, spec=builder.spec(port=silent), known_hosts=f"[127.0.0.1]:{silent} {builder.host_key}")})
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert "does not answer" in outcome.stderr and "building here instead" in outcome.stderr
    assert not REMOTELY.search(outcome.stderr)


def test_a_changed_host_key_is_refused(engine, cache, builder, unbuilt, tmp_path):
    impostor = remote_builder.keygen(tmp_path / "other", "impostor")
    outcome = invoke("build-web", env={**unbuilt, **settings(builder, known_hosts=f"[127.0.0.1]:{builder.port} {impostor}")})
    refused(engine, builder, outcome, "the host key of the builder", "has changed", "refused")


def test_an_unpinned_host_key_is_refused_before_anything_runs(engine, builder, unbuilt):
    outcome = invoke("build-web", env={**unbuilt, **settings(builder, known_hosts=f"other.example {builder.host_key}")})
    refused(engine, builder, outcome, f"no host key is pinned for the builder ssh-ng://root@127.0.0.1:{builder.port}",
            "ssh-keyscan")


@pytest.mark.parametrize(("make", "phrase"), [
    (lambda path: None, "it does not exist"),
    (lambda path: path.mkdir(), "it is a directory"),
])
def test_a_missing_or_unreadable_key_file(engine, builder, unbuilt, tmp_path, make, phrase):
    key = tmp_path / "missing-key"
    make(key)
    outcome = invoke("build-web", env={**unbuilt, **settings(builder, key=key)})
    refused(engine, builder, outcome, f"cannot read the SSH key file {key}", phrase)


def test_a_builder_of_another_system(engine, cache, builder, unbuilt):
    outcome = invoke("build-web", env={**unbuilt, **settings(builder, spec=builder.spec(system="aarch64-linux"))})
    refused(engine, builder, outcome, "no remote builder builds x86_64-linux", "aarch64-linux")


def test_the_complete_flow_refuses_remote_builders(engine, builder, unbuilt):
    outcome = invoke("build-web", "--complete", env={**unbuilt, **settings(builder)})
    refused(engine, builder, outcome, "cannot be used by the complete flow", "SSH or signing key")
