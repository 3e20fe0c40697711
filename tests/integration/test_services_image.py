"""The services image, end to end with the real engine: built with the web
image's flow from tests/fixtures/services.nix (busybox httpd standing in for
nginx), s6-svscan as PID 1, both services answering, `docker stop` bringing
them down through s6 in time, and their logs in `docker logs`."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from datetime import datetime

import docker.errors
import pytest
import requests

from tests.conftest import invoke
from tests.integration.conftest import identity_tag, printed_id
from tests.integration.test_services_s6 import FIXTURE


def two_free_ports() -> tuple[int, int]:
    with socket.socket() as one, socket.socket() as other:
        one.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        return one.getsockname()[1], other.getsockname()[1]


# A container name and ports of this run's own: another run of these tests may share the engine and the machine.
CONTAINER = f"services-test-{uuid.uuid4().hex[:8]}"
ENV = {**FIXTURE, "INVOKE_START_SERVICES_CONTAINER": CONTAINER}
WEB_PORT, STATUS_PORT = two_free_ports()
PUBLISH = ["--publish", f"{WEB_PORT}:8080", "--publish", f"{STATUS_PORT}:8081"]


@pytest.fixture(scope="session")
def services_build(cache_image):
    """build-services of the fixture services file, once: what it printed."""
    outcome = invoke("build-services", env=ENV)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return outcome


@pytest.fixture(scope="session")
def services_image(engine, services_build):
    """The services image, by the ID build-services printed (services:latest moves with any build of it)."""
    return engine.images.get(printed_id(services_build))


@pytest.fixture(scope="session")
def services_tag(services_build) -> str:
    """services_image's identity tag, services:id-<inputs>, for the tasks that take NAME:TAG."""
    return identity_tag(services_build)


@pytest.fixture
def container(engine, services_image):
    """The services container, started with `invoke start services --container`: the image it
    starts is the one its build names services:latest, which must be services_image."""
    outcome = invoke("start", "services", "--container", *PUBLISH, env=ENV)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert outcome.stdout.split() == [f"http://127.0.0.1:{WEB_PORT}/", f"http://127.0.0.1:{STATUS_PORT}/"]
    started = engine.containers.get(CONTAINER)
    try:
        assert started.image.id == services_image.id
        yield started
    finally:
        with contextlib.suppress(docker.errors.NotFound):  # a test may have removed it already
            started.remove(force=True)


def statuses() -> dict[str, str]:
    text = requests.get(f"http://127.0.0.1:{STATUS_PORT}/", timeout=5).text
    return dict(line.split(": ", 1) for line in text.splitlines())


def engine_time(text: str) -> datetime:
    return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00")


def test_the_image_is_built_like_web_and_runs_as_uid_101(services_image):
    tags = services_image.tags
    assert "services:latest" in tags and any(t.startswith("services:id-") for t in tags), tags
    config = services_image.attrs["Config"]
    assert config["User"] == "101:101"
    assert config["Cmd"][0].endswith("-services-run/bin/run") and config["Cmd"][1:] == ["/run/services"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "8081/tcp"}
    assert len(services_image.attrs["RootFS"]["Layers"]) > 2  # one per store path


def test_build_services_again_builds_nothing(services_image):
    outcome = invoke("build-services", env=ENV)
    assert outcome.code == 0, outcome.stderr
    assert "is up to date: nothing it is built from has changed" in outcome.stderr
    assert outcome.stdout.split()[1] == services_image.id


def test_s6_svscan_is_pid_1_and_both_services_answer(container):
    # ps inside the container: its own PIDs (docker top shows the host's).
    listing = container.exec_run(["ps", "-o", "pid,user,args"]).output.decode().splitlines()[1:]
    processes = {int(line.split()[0]): line.split(None, 2)[1:] for line in listing}
    assert processes[1] == ["services", "s6-svscan /run/services"], listing
    assert {user for user, _ in processes.values()} == {"services"}, listing  # uid 101, nothing as root
    page = requests.get(f"http://127.0.0.1:{WEB_PORT}/", timeout=5)
    assert page.status_code == 200 and "web fixture" in page.text
    state = statuses()
    assert list(state) == ["nginx", "status"]
    assert all(value.startswith("up (pid ") for value in state.values()), state


def test_a_service_killed_in_the_container_is_restarted(container):
    before = statuses()["nginx"]  # up (pid 19) 3 seconds, or with a newer s6 up (pid 19 pgid 19) 3 seconds
    pid = re.search(r"\(pid (\d+)", before)[1]
    assert container.exec_run(["kill", "-9", pid], user="101").exit_code == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            after = statuses()["nginx"]
            if after.startswith("up") and re.search(r"\(pid (\d+)", after)[1] != pid:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError(f"nginx was not restarted: {statuses()}")
    assert requests.get(f"http://127.0.0.1:{WEB_PORT}/", timeout=5).status_code == 200
    svstat = container.exec_run(["s6-svstat", "/run/services/nginx"], user="101")
    assert svstat.exit_code == 0 and svstat.output.decode().startswith("up (pid ")


def test_docker_stop_brings_the_services_down_through_s6_and_exits_0_in_time(container):
    assert requests.get(f"http://127.0.0.1:{WEB_PORT}/", timeout=5).status_code == 200  # a line for the log
    began = time.monotonic()
    container.stop(timeout=10)  # docker stop: SIGTERM to PID 1, SIGKILL after 10 s
    took = time.monotonic() - began
    container.reload()
    state = container.attrs["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert took < 10, took
    # The engine's own times say the same.
    assert (engine_time(state["FinishedAt"]) - engine_time(state["StartedAt"])).total_seconds() > 0
    logs = container.logs(stdout=True, stderr=True).decode()
    assert "services: s6-svscan on /run/services: nginx status" in logs
    assert "nginx: [::ffff:" in logs and "response:200" in logs  # nginx's log line, through its s6-log
    assert logs.rstrip().endswith("services: every service is down")


def test_invoke_stop_reports_how_long_it_took(container):
    outcome = invoke("stop", "services", env=ENV)
    assert outcome.code == 0, outcome.stderr
    verb, _in, seconds, unit = outcome.stdout.split()
    assert (verb, unit) == ("stopped", "s") and float(seconds) < 10
    assert invoke("stop", "services", env=ENV).stdout.strip() == "not running"


def test_a_second_start_is_refused_while_the_container_exists(container):
    outcome = invoke("start", "services", "--container", *PUBLISH, env=ENV)
    assert outcome.code != 0 and "Traceback" not in outcome.stderr
    assert outcome.error_line == (f"error: a container named {CONTAINER} already exists; "
                                  "stop it with `invoke stop services` first")


def test_the_services_image_can_be_pushed_like_web(services_tag, tmp_path):
    outcome = invoke("push", services_tag, "--to", f"oci:{tmp_path / 'layout'}:v1", env=ENV)
    assert outcome.code == 0, outcome.stderr
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [outcome.stdout.split()[1]]


def test_a_published_port_in_use_is_refused_before_anything_starts(engine, services_image):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        outcome = invoke("start", "services", "--container", "--publish", f"{port}:8080",
                         "--publish", f"{STATUS_PORT}:8081", env=ENV)
    assert outcome.code != 0 and "Traceback" not in outcome.stderr
    assert outcome.error_line == (f"error: port {port} on 127.0.0.1 is already taken; "
                                  "stop what uses it, or publish elsewhere: --publish OTHER:8080")
    assert not engine.containers.list(all=True, filters={"name": f"^{CONTAINER}$"})
