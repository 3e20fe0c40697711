"""Faults injected for real into real components: a registry killed in the
middle of a push, Ctrl-C during build-web and push, a disk that fills up while
extracting or bundling. Each test checks the one-line error, that nothing is
left behind, and that the same command works once the fault is gone.

The tests build their own image, faulttest-web-<random> (the 60 MB benchmark
fixture under a name of this run's), from a copy of the project whose build
context holds a marker file of its own: containers and images holding that
marker are this test's, whatever else runs on the engine at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from ci.edge import report_errors
from ci.tools import skopeo
from tests.conftest import FIXTURE_CONFIG, ROOT, Outcome, assert_one_line_error, invoke
from tests.integration import registries
from tests.integration.conftest import STREAM_BUILT, identity_tag, project_copy, unavailable

NAME = f"faulttest-web-{uuid.uuid4().hex[:8]}"  # this run's own: other runs of these tests may share the engine
BENCH = "tests/fixtures/bench/images.nix"
PROMPTLY = 15  # seconds from Ctrl-C to the exit


# --- helpers ---------------------------------------------------------------------------------


def fault_project(directory: Path, images: str = BENCH, name: str = NAME) -> tuple[dict[str, str], str]:
    """A copy of the project whose image is `name` and whose build context holds a marker file of
    its own (so its build is new, and what it leaves is recognisable); the environment and marker."""
    env = project_copy(directory)
    images_file = directory / images
    images_file.write_text(images_file.read_text().replace('name = "web";', f'name = "{name}";'))
    marker = f"faulttest-{uuid.uuid4().hex}"
    (directory / "tests" / "fixtures" / marker).write_text(marker)
    return {**env, "INVOKE_WEB_IMAGES": images, "INVOKE_WEB_NAME": name}, marker


def private_tmpdir(directory: Path) -> dict[str, str]:
    """TMPDIR for one run of the toolkit, so that its temporary files are told from other runs'."""
    directory.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(directory)}


class Running:
    """The toolkit's command line started in the background, as a user starts it in a terminal;
    its output is collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str], own_group: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "invoke", *args], cwd=ROOT,
            env={**os.environ, **FIXTURE_CONFIG, "NO_COLOR": "1", **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            process_group=0 if own_group else None,  # a group of its own: Ctrl-C can go to all of it, not to pytest
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        with stream:
            for line in stream:
                lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.stderr)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 900) -> None:
        """Return once `condition()` holds; fail if the command ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the command ended ({self.process.returncode}) before {what}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout} s:\n{self.log[-3000:]}")
            time.sleep(0.02)

    def interrupt(self, to_group: bool) -> None:
        """Ctrl-C: SIGINT to the toolkit's process, or to its whole group as a terminal sends it."""
        if to_group:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 900) -> Outcome:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        for reader in self._readers:
            reader.join(10)
        return Outcome(code, "".join(self.stdout), self.log)


def _holds(graph_driver: dict, marker: str) -> bool | None:
    """Whether an image's or container's layers hold the marker file; None when the engine's
    storage cannot be read here (another driver, another machine, no permission)."""
    data = graph_driver.get("Data") or {}
    directories = [d for key in ("UpperDir", "LowerDir") for d in (data.get(key) or "").split(":") if d]
    if graph_driver.get("Name") != "overlay2" or not directories:
        return None
    try:
        return any((Path(d) / "src" / "tests" / "fixtures" / marker).exists() for d in directories)
    except PermissionError:
        return None


def engine_state(engine) -> tuple[set[str], set[str]]:
    """Every container and every image (intermediate ones too) of the engine."""
    return ({c["Id"] for c in engine.api.containers(all=True)}, {i["Id"] for i in engine.api.images(all=True)})


def left_behind(engine, before: tuple[set[str], set[str]], marker: str) -> list[str]:
    """Containers and images made since `before` that hold `marker`. Where the storage cannot be
    read, every new one counts (right when nothing else uses the engine, as in CI)."""
    containers, images = engine_state(engine)
    found = []
    for kind, new, inspect in (("container", containers - before[0], engine.api.inspect_container),
                               ("image", images - before[1], engine.api.inspect_image)):
        for item in new:
            with contextlib.suppress(Exception):  # gone meanwhile: not left behind
                if _holds(inspect(item).get("GraphDriver") or {}, marker) is not False:
                    found.append(f"{kind} {item[:19]}")
    return found


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if text in line:
                    found.append(f"{entry.name}: {line}")
    return found


def remote_digest(reference: str) -> str | None:
    """The manifest digest docker://reference has, or None when the tag does not exist."""
    shown = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{reference}"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        assert "manifest unknown" in shown.stderr, shown.stderr
        return None
    return json.loads(shown.stdout)["Digest"]


def acknowledged_blobs(server: registries.RegistryServer, repository: str) -> set[str]:
    """The blobs whose upload to `repository` the registry has acknowledged (201 in its access log):
    the client knows they are there. (A blob stored, but killed before its answer, is sent again.)"""
    answered = re.findall(rf'"PUT /v2/{re.escape(repository)}/blobs/uploads/\S*digest=sha256%3A([0-9a-f]{{64}}) HTTP/1.1" 201 ',
                          server.log.read_text(errors="replace") if server.log.exists() else "")
    return set(answered)


def pushed(outcome: Outcome) -> dict[str, str]:
    """destination, digest, uploaded, skipped from push's result line."""
    destination, digest, *counts = outcome.stdout.split()
    return {"destination": destination, "digest": digest, **dict(count.split("=") for count in counts)}


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `directory` (as root, or with sudo -n), unmounted after."""
    directory.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(directory)]
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    mounted = subprocess.run([*sudo, *command], capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs at {directory} ({mounted.stderr.strip()}); run as root or with sudo")
    try:
        yield directory
    finally:
        subprocess.run([*sudo, "umount", str(directory)], check=True)


def remove_tags(engine, repository: str) -> None:
    """Remove every tag of `repository` (the images go with their last tag)."""
    for image in engine.images.list(repository):
        for tag in image.tags:
            if tag.rpartition(":")[0] == repository:
                with contextlib.suppress(Exception):
                    engine.images.remove(tag)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_tag(engine, cache_image, tmp_path_factory) -> str:
    """The 60 MB benchmark image, large enough to kill a registry in the middle of its push, by
    its identity tag (NAME:id-…): the tests hand it to push and extract, never NAME:latest, which
    the Ctrl-C tests' builds of the same name could move."""
    env, _ = fault_project(tmp_path_factory.mktemp("bench-project"))
    outcome = invoke("build-web", env=env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    yield identity_tag(outcome)
    remove_tags(engine, NAME)


@pytest.fixture
def bench_env(bench_tag, tmp_path) -> dict[str, str]:
    return {"INVOKE_WEB_NAME": NAME, **private_tmpdir(tmp_path / "tmp")}


# --- a registry killed in the middle of a push --------------------------------------------------


def test_registry_killed_mid_push_fails_in_one_line_and_the_push_resumes_later(bench_tag, bench_env, tmp_path):
    with registries.registry_server(tmp_path / "registry") as server:
        target = f"{server.address}/faulttest/web:1"
        registries.push_handmade_image(target, architecture="amd64", labels={}, workdir=tmp_path)
        old_digest, had = remote_digest(target), acknowledged_blobs(server, "faulttest/web")

        push = Running("push", bench_tag, "--to", f"docker://{target}", env=bench_env)
        push.wait_for(lambda: len(acknowledged_blobs(server, "faulttest/web") - had) >= 2, "blobs stored")
        server.kill()
        killed = time.monotonic()
        assert push.process.poll() is None, "the push ended before the registry was killed: nothing was injected"
        outcome = push.finish()
        print(f"the push failed {time.monotonic() - killed:.1f} s after the registry was killed")

        assert_one_line_error(outcome, f"the registry {server.address} does not answer (tried {skopeo.RETRY.attempts} times)",
                              "check that it is running")
        retries = re.findall(r"^the registry .* does not answer while copying to .*; trying again in .*$", outcome.stderr, re.M)
        assert len(retries) == skopeo.RETRY.attempts - 1, outcome.stderr

        server.start()  # same port, same storage
        assert remote_digest(target) == old_digest  # the tag was not moved

        again = invoke("push", bench_tag, "--to", f"docker://{target}", env=bench_env)
        assert again.code == 0, again.stderr
        result = pushed(again)
        assert remote_digest(target) == result["digest"]
        sizes = registries.layer_sizes(target)
        total = sum(sizes.values())
        uploaded, skipped = int(result["uploaded"]), int(result["skipped"])
        print(f"after the registry came back: uploaded={uploaded} skipped={skipped} of {total} bytes")
        assert uploaded + skipped == total
        assert skipped > 0 and uploaded < total, (uploaded, skipped, total)  # what arrived before the kill is not sent again
    assert not os.listdir(bench_env["TMPDIR"])


def test_a_registry_back_within_the_retries_gets_the_push(bench_tag, bench_env, tmp_path):
    with registries.registry_server(tmp_path / "registry") as server:
        target = f"{server.address}/faulttest/web:2"
        push = Running("push", bench_tag, "--to", f"docker://{target}", env=bench_env)
        push.wait_for(lambda: len(acknowledged_blobs(server, "faulttest/web")) >= 2, "blobs stored")
        server.kill()
        push.wait_for(lambda: "trying again in" in push.log, "a retry")
        server.start()
        outcome = push.finish()

        assert outcome.code == 0, outcome.stderr
        assert re.search(r"^the registry .* does not answer while copying to .*; trying again in \S+ s \(try 2 of \d\)$",
                         outcome.stderr, re.M), outcome.stderr
        result = pushed(outcome)
        assert remote_digest(target) == result["digest"]
        total = sum(registries.layer_sizes(target).values())
        assert int(result["uploaded"]) + int(result["skipped"]) == total
        assert int(result["skipped"]) > 0  # blobs stored before the kill were not sent again


# --- Ctrl-C ---------------------------------------------------------------------------------


def check_interrupted(run: Running, interrupted_at: float) -> Outcome:
    outcome = run.finish(timeout=PROMPTLY + 60)
    took = time.monotonic() - interrupted_at
    print(f"exited {took:.2f} s after Ctrl-C")
    assert took < PROMPTLY, f"exited {took:.1f} s after Ctrl-C"
    assert outcome.code == 130, outcome
    assert outcome.error_line == "error: interrupted", outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr and "Exception in thread" not in outcome.stderr, outcome.stderr[-3000:]
    return outcome


@pytest.mark.parametrize("to_group", [False, True], ids=["process", "group"])
@pytest.mark.parametrize("phase", ["nix-build", "stream"])
def test_ctrl_c_during_build_web_leaves_nothing(engine, cache_image, tmp_path, phase, to_group):
    env, marker = fault_project(tmp_path / "project")
    env = {**env, **private_tmpdir(tmp_path / "tmp"), "CI_DEBUG": "1"}
    tags_before = {tag for image in engine.images.list(NAME) for tag in image.tags}
    before = engine_state(engine)

    build = Running("build-web", env=env, own_group=to_group)
    if phase == "nix-build":  # web.Dockerfile's RUN step: Nix builds in the build container
        build.wait_for(lambda: "building '/nix/store/" in build.log, "Nix building")
    else:  # the same container runs the stream script, which the toolkit loads into the engine
        build.wait_for(lambda: STREAM_BUILT.search(build.log), "the stream")
    build.interrupt(to_group)
    check_interrupted(build, time.monotonic())

    assert left_behind(engine, before, marker) == []
    assert {tag for image in engine.images.list(NAME) for tag in image.tags} == tags_before
    assert not os.listdir(env["TMPDIR"])  # nix-ci-stream-* and the like


@pytest.mark.parametrize("to_group", [False, True], ids=["process", "group"])
def test_ctrl_c_during_push_stops_skopeo_and_leaves_nothing(bench_tag, bench_env, tmp_path, to_group):
    tmpdir = Path(bench_env["TMPDIR"])
    with registries.registry_server(tmp_path / "registry") as server:
        target = f"{server.address}/faulttest/web:interrupted"
        push = Running("push", bench_tag, "--to", f"docker://{target}", env=bench_env, own_group=to_group)
        # skopeo keeps its copy of the image under the toolkit's temporary directory, not /var/tmp
        push.wait_for(lambda: "Copying blob" in push.log and list(tmpdir.glob("nix-ci-copy-*/docker-tar*")),
                      "skopeo copying blobs")
        push.interrupt(to_group)
        check_interrupted(push, time.monotonic())

        assert processes_mentioning(str(tmpdir)) == []  # no skopeo left running
        assert not os.listdir(tmpdir)  # nor its copy of the image, nor the toolkit's directories
        assert remote_digest(target) is None


# --- the disk fills up -------------------------------------------------------------------------


@pytest.mark.parametrize("target, size", [
    ("rootfs", "1m"),  # skopeo's OCI layout does not fit
    ("rootfs", "90m"),  # the layout (60 MB) fits, umoci's unpacked root filesystem does not
    ("docker-archive", "1m"),
    ("oci", "1m"),
])
def test_disk_full_while_extracting_leaves_nothing_partial(bench_tag, bench_env, tmp_path, target, size):
    with small_filesystem(tmp_path / "small", size) as small:
        outcome = invoke("extract", bench_tag, "--to", f"{target}:{small / 'x'}", env=bench_env)
        assert_one_line_error(outcome, f"no space left on device under {small}; free space or choose another directory")
        assert os.listdir(small) == []  # no x, no .extract-*
    assert not os.listdir(bench_env["TMPDIR"])

    roomy = invoke("extract", bench_tag, "--to", f"{target}:{tmp_path / 'x'}", env=bench_env)
    assert roomy.code == 0, roomy.stderr
    assert (tmp_path / "x").exists()


def test_disk_full_while_bundling_leaves_nothing_partial(cache_image, tmp_path):
    keys = tmp_path / "keys"
    env = {"INVOKE_BUNDLE_SECRET_KEY": str(keys / "faulttest.sec"), "INVOKE_BUNDLE_PUBLIC_KEY": str(keys / "faulttest.pub"),
           "INVOKE_BUNDLE_EXPRESSION": "tests/fixtures/runner.nix", **private_tmpdir(tmp_path / "tmp")}
    made_key = invoke("bundle-key", "--name", "faulttest-1", env=env)
    assert made_key.code == 0, made_key.stderr
    with small_filesystem(tmp_path / "small", "1m") as small:  # the bundle is about 1.1 MB
        outcome = invoke("bundle", "--output", str(small / "x.tar"), env=env)
        assert_one_line_error(outcome, f"no space left on device under {small}; free space or choose another directory")
        assert os.listdir(small) == []  # no x.tar, no .bundle-*
    assert not os.listdir(env["TMPDIR"])

    roomy = invoke("bundle", "--output", str(tmp_path / "x.tar"), env=env)
    assert roomy.code == 0, roomy.stderr
    assert (tmp_path / "x.tar").stat().st_size > 1 << 20


def test_a_full_disk_anywhere_else_is_one_line_too():
    """Writes outside the places that name their directory (extract, bundle) still end in one line, no traceback."""
    @report_errors
    def task() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/somewhere/full/file")

    with pytest.raises(Exit) as ended:
        task()
    assert ended.value.message == ("error: no space left on device writing /somewhere/full/file; "
                                   "free space or choose another directory")
    assert ended.value.code == 1
