"""The Docker engine stopped in the middle of build-web, for real.

A second, private dockerd (its own data-root, exec-root, containerd, socket
and bridge: the main engine is never touched) is stopped with SIGTERM while
Nix builds in it, or while the image streams into its load. build-web must
end in one line naming the engine; once the engine is back on the same
data-root, the next build removes what the stopped one left, without touching
a build that runs meanwhile, and both build their image.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import Outcome, invoke
from tests.integration.conftest import STREAM_BUILT, project_copy, unavailable
from tests.integration.test_faults import Running, private_tmpdir

BENCH = "tests/fixtures/bench/images.nix"  # about 30 store paths: Nix builds for seconds, the stream carries 60 MB
MAIN_BRIDGE = Path("/sys/class/net/docker0")


class PrivateEngine:
    """A dockerd of the test's own, stopped and started again on the same data-root."""

    def __init__(self, state: Path, tag: str, bridge: str) -> None:
        self.state = state
        self.data_root = state / "data"
        self.exec_root = Path(f"/run/nixci-{tag}")  # short: containerd's sockets live under it
        self.log = state / "dockerd.log"
        self.config = state / "daemon.json"  # empty: nothing of /etc/docker/daemon.json applies
        self.config.write_text("{}\n")
        self.host = f"unix://{self.exec_root}/docker.sock"
        self.bridge = bridge
        self.process: subprocess.Popen | None = None
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:  # made once the engine answers: the client asks it for its API version
            self._client = docker.DockerClient(base_url=self.host, timeout=300)
        return self._client

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                ["/usr/sbin/dockerd", "--config-file", str(self.config),
                 "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.exec_root / "docker.pid"), "-H", self.host,
                 # a bridge of its own, made beforehand: dockerd must never manage docker0
                 f"--bridge={self.bridge}", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                 "--storage-driver=overlay2", "--shutdown-timeout=1",
                 # its own containerd (under exec-root), in namespaces of its own should it find a shared one
                 "--containerd-namespace=nixci-test", "--containerd-plugins-namespace=nixci-test-plugins"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                unavailable(f"a second Docker engine does not start: {self.log.read_text()[-1500:]}")
            time.sleep(0.1)

    def answers(self) -> bool:
        # The SDK leaves its socket open when the connection is refused (a ResourceWarning,
        # an error here): knock first with a socket of our own.
        with socket.socket(socket.AF_UNIX) as knock:
            try:
                knock.connect(self.host.removeprefix("unix://"))
            except OSError:
                return False
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 - not there (yet)
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def stop(self) -> None:
        """SIGTERM, as `systemctl stop docker` sends it; returns once dockerd has exited."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def leftovers(self) -> list[str]:
        """Every container and every untagged image that is not the parent of another: the engine is
        the test's, so anything of the kind is what a build left."""
        api = self.client.api
        return ([f"container {c['Id'][:12]} {c['Names']} {c['State']}" for c in api.containers(all=True)]
                + [f"image {i['Id'][7:19]}" for i in api.images(filters={"dangling": True})])

    def tags(self) -> set[str]:
        return {tag for image in self.client.api.images() for tag in image["RepoTags"] or () if tag != "<none>:<none>"}

    def page(self, tag: str) -> str:
        return self.client.containers.run(tag, ["/bin/busybox", "sh", "-c", "cat /nix/store/*-web*root/index.html"],
                                          remove=True, user="101:101", network_mode="none").decode()


def _ours_still_running(exec_root: Path) -> list[int]:
    """containerd and its shims started by the private engine, should dockerd have died without stopping them."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(exec_root).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _unmount_under(*roots: Path) -> None:
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts]
    for point in sorted(points, key=len, reverse=True):
        if any(point == str(root) or point.startswith(f"{root}/") for root in roots):
            subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture(scope="module")
def second_engine(engine, cache_image, tmp_path_factory):
    """A private dockerd holding a copy of the cache image; removed with everything it made afterwards."""
    if os.geteuid() != 0:
        unavailable("a second Docker engine needs root (its own dockerd, bridge and mounts)")
    if not os.access("/usr/sbin/dockerd", os.X_OK) or shutil.which("ip") is None:
        unavailable("a second Docker engine needs /usr/sbin/dockerd and ip (iproute2)")
    main_bridge_before = MAIN_BRIDGE.exists()
    tag = uuid.uuid4().hex[:6]
    bridge = f"nixci-{tag}"
    subnet = f"10.199.{random.randrange(1, 255)}"
    second = PrivateEngine(tmp_path_factory.mktemp("engine"), tag, bridge)
    try:
        made = [subprocess.run(command, capture_output=True, text=True) for command in (
            ["ip", "link", "add", bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{subnet}.1/24", "dev", bridge],
            ["ip", "link", "set", bridge, "up"])]
        if any(step.returncode for step in made):
            unavailable(f"cannot make a bridge for a second Docker engine: {' '.join(s.stderr for s in made)}")
        # The data-root on a shared mount, as on a systemd host. Under a private one (/ is private on
        # some machines) dockerd mounts its data-root over itself, and dockerd 20.10 then cannot
        # remove a build container whose root filesystem it left mounted when it stopped: no API
        # client can (README, "What happens when things go wrong").
        for command in (["mount", "--bind", str(second.state), str(second.state)],
                        ["mount", "--make-shared", str(second.state)]):
            subprocess.run(command, check=True)
        second.start()
        # The session's cache image, by its ID: nix-cache:latest names whatever the last build-cache made.
        for _ in second.client.api.load_image(engine.api.get_image(cache_image.id)):  # the builder, under its id
            pass
        second.client.api.tag(cache_image.id, "nix-cache", "latest")
        yield second
    finally:
        second.stop()
        for pid in _ours_still_running(second.exec_root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _unmount_under(second.state, second.exec_root)
        shutil.rmtree(second.data_root, ignore_errors=True)
        shutil.rmtree(second.exec_root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        second.close()
        assert MAIN_BRIDGE.exists() == main_bridge_before, "the main engine's docker0 bridge went away"


def build_env(directory: Path, second: PrivateEngine, page: str, *, bench: bool = True) -> dict[str, str]:
    """A copy of the project with a page of its own (so that Nix really builds), on the private engine;
    the benchmark's images file, or the small fixture one."""
    env = project_copy(directory, page)
    (directory / "tests" / "fixtures" / "bench" / "index.html").write_text(page)
    # A sweep stamp of its own (ci.tools.docker.sweep): the build started meanwhile sweeps too.
    return {**env, **({"INVOKE_WEB_IMAGES": BENCH} if bench else {}), "DOCKER_HOST": second.host,
            "XDG_CACHE_HOME": str(directory.with_name(f"{directory.name}-cache")),
            **private_tmpdir(directory.with_name(f"{directory.name}-tmp"))}


def stop_during(second: PrivateEngine, phase: str, env: dict[str, str]) -> Outcome:
    """build-web, and the engine stopped under it: while Nix builds in the build container, or
    while that container writes the image that the toolkit loads."""
    build = Running("build-web", env=env)
    if phase == "nix-build":
        build.wait_for(lambda: build.log.count("building '/nix/store/") >= 5, "Nix building")
    else:
        build.wait_for(lambda: STREAM_BUILT.search(build.log), "the stream")
    stopped = time.monotonic()
    stopping = threading.Thread(target=second.stop)
    stopping.start()
    outcome = build.finish(timeout=120)
    print(f"build-web ended {time.monotonic() - stopped:.1f} s after SIGTERM to dockerd")
    stopping.join()
    return outcome


@pytest.mark.parametrize("phase", ["nix-build", "stream"])
def test_engine_stopped_during_build_web_is_one_line_and_the_next_build_sweeps(second_engine, tmp_path, phase):
    second = second_engine
    page = f"<p>engine stopped during {phase} {uuid.uuid4().hex}</p>\n"
    env = build_env(tmp_path / "stopped", second, page)
    tags_before = second.tags()

    outcome = stop_during(second, phase, env)
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert outcome.code != 0, outcome
    assert "Traceback" not in outcome.stderr and "Exception in thread" not in outcome.stderr, outcome.stderr[-3000:]
    assert errors == [outcome.error_line], outcome.stderr[-3000:]
    assert outcome.error_line.startswith(f"error: the Docker engine at {second.host} stopped answering while building web; "
                                         "start it again and re-run"), outcome.error_line
    assert not os.listdir(env["TMPDIR"])  # the FIFO's directory went too

    second.start()  # same data-root
    left = second.leftovers()
    print("left by the stopped build:", left)
    assert left, "the stopped build left nothing: the engine was not stopped in the middle of it"
    assert second.tags() == tags_before  # no tag, temporary or final, came from it

    # The re-run, and another build started while the re-run's Nix is busy: the re-run sweeps
    # what the stopped build left; the other's sweep finds the re-run's own untagged step images
    # (made since the engine started) and leaves them.
    other_page = f"<p>built meanwhile {uuid.uuid4().hex}</p>\n"
    rerun = Running("build-web", env=env)
    rerun.wait_for(lambda: "building '/nix/store/" in rerun.log, "Nix building in the re-run")
    other = invoke("build-web", env=build_env(tmp_path / "other", second, other_page, bench=False))
    again = rerun.finish()
    assert again.code == 0, again.stderr[-3000:]
    assert other.code == 0, other.stderr[-3000:]
    assert "left by builds the engine stopped under" in again.stderr, again.stderr[-3000:]

    assert second.leftovers() == []
    built = {line.split()[0] for line in again.stdout.splitlines()} | {line.split()[0] for line in other.stdout.splitlines()}
    assert second.tags() == tags_before | built  # id-, date and latest tags, and no other
    assert second.page(again.stdout.split()[0]) == page
    assert second.page(other.stdout.split()[0]) == other_page
