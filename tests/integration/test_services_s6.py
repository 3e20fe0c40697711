"""The scan directories of nix/s6.nix under the real s6, on this machine: built
with the host's Nix and the stand-in package set (Debian's s6 and execline in
the store), run by their runner, driven with s6-svc and s6-svscanctl."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, invoke
from tests.integration.conftest import unavailable

STATUS_PORT = 18181
# tests/fixtures/services.nix: busybox httpd standing in for nginx, and the status page.
FIXTURE_PORTS = (8080, 8081)
FIXTURE = {"INVOKE_START_SERVICES_FILE": "tests/fixtures/services.nix",
           "INVOKE_START_SERVICES_IMAGES": "tests/fixtures/services.nix",
           "INVOKE_START_NGINX_FILE": "tests/fixtures/runner.nix"}


@pytest.fixture(scope="session")
def s6_on_host(nix_on_host):
    for program in ("s6-svscan", "s6-svc", "s6-svstat", "s6-svscanctl", "patchelf", "nix-shell"):
        if shutil.which(program) is None:
            unavailable(f"{program} is not on PATH; apt-get install s6 execline patchelf nix-bin")


# The stand-in's tar writer (tests/nixpkgs/tar.awk) copies files with awk's system(), which runs
# /bin/sh; Debian's Nix gives its sandbox none, so the host's static busybox stands in there.
SANDBOX_SHELL = ["--option", "extra-sandbox-paths", "/bin/sh=/bin/busybox"]


def nix_build(*args: str) -> Path:
    built = subprocess.run(["nix-build", "--no-out-link", *SANDBOX_SHELL, *args], cwd=ROOT, capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return Path(built.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def demo_runner(s6_on_host):
    return nix_build("tests/fixtures/services-demo.nix", "--argstr", "statusPort", str(STATUS_PORT))


def svstat(service: Path) -> str:
    return subprocess.run(["s6-svstat", str(service)], capture_output=True, text=True).stdout.strip()


def pid_of(service: Path) -> int:
    return int(subprocess.run(["s6-svstat", "-o", "pid", str(service)], capture_output=True, text=True).stdout.strip() or -1)


def wait_for(condition, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Tree:
    """A runner started as `bin/run DIR`, with its output and the record its finish scripts write."""

    def __init__(self, runner: Path, directory: Path, tmp: Path, services: tuple[str, ...]):
        self.dir, self.record, self.output = directory, tmp / "record", tmp / "output"
        with self.output.open("w") as output:
            self.process = subprocess.Popen([str(runner / "bin" / "run"), str(directory)],
                                            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "S6TEST_RECORD": str(self.record)})
        for name in services:
            wait_for(lambda name=name: svstat(directory / name).startswith("up"), what=f"{name} up")

    def log(self) -> str:
        return self.output.read_text()

    def records(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            subprocess.run(["s6-svscanctl", "-t", str(self.dir)], capture_output=True)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def tree(demo_runner, tmp_path):
    started = Tree(demo_runner, tmp_path / "scan", tmp_path, ("sleeper", "stubborn", "status"))
    yield started
    started.close()


def test_every_service_starts_with_its_logger(tree):
    scan = tree.dir
    for name in ("sleeper", "stubborn", "status"):
        assert (scan / name / "run").is_file()
        assert (scan / name / "timeout-kill").read_text().strip() == ("1000" if name == "stubborn" else "3000")
    assert (scan / ".s6-svscan" / "finish").is_file() and (scan / ".s6-svscan" / "crash").is_file()
    assert (scan / "sleeper" / "log" / "run").is_file() and not (scan / "stubborn" / "log").exists()
    assert svstat(scan / "sleeper" / "log").startswith("up")
    # Scripts are execline and busybox only.
    for script in [scan / "sleeper" / "run", scan / "sleeper" / "finish", scan / ".s6-svscan" / "finish"]:
        assert script.read_text().startswith("#!/nix/store/") and "execline/bin/execlineb" in script.read_text().splitlines()[0]
        assert "bash" not in script.read_text() and "coreutils" not in script.read_text()
    # The status service answers with each service's state.
    lines = requests.get(f"http://127.0.0.1:{STATUS_PORT}/", timeout=5).text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["sleeper", "stubborn", "status"]
    assert all(": up (pid " in line for line in lines), lines
    # A logged service's lines carry its name; an unlogged one writes as it is.
    wait_for(lambda: "sleeper: started" in tree.log() and "stubborn started" in tree.log(), what="the log lines")
    assert f"demo: s6-svscan on {scan}: sleeper stubborn status" in tree.log()


def test_a_killed_service_is_restarted_and_its_finish_script_runs(tree):
    service = tree.dir / "sleeper"
    first = pid_of(service)
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (pid := pid_of(service)) not in (first, -1, 0) and pid, timeout=5, what="a new pid")
    assert svstat(service).startswith("up")
    assert second != first
    assert "sleeper finished 256 9 sleeper" in tree.records()


def test_s6_svc_down_stops_one_service_and_up_starts_it_again(tree):
    service = tree.dir / "sleeper"
    subprocess.run(["s6-svc", "-wD", "-T", "5000", "-d", str(service)], check=True)
    assert svstat(service).startswith("down (signal SIGTERM)")
    assert svstat(tree.dir / "stubborn").startswith("up") and svstat(tree.dir / "status").startswith("up")
    assert "sleeper finished 256 15 sleeper" in tree.records()
    subprocess.run(["s6-svc", "-wu", "-T", "5000", "-u", str(service)], check=True)
    assert svstat(service).startswith("up")


def test_told_to_exit_every_service_stops_then_the_finish_script_runs(tree):
    began = time.monotonic()
    subprocess.run(["s6-svscanctl", "-t", str(tree.dir)], check=True)
    assert tree.wait() == 0
    took = time.monotonic() - began
    # The stubborn service ignores SIGTERM: it is killed after its timeoutKill (1 s).
    assert 1 <= took < 5, took
    assert tree.records()[-1] == "svscan finished"
    assert "sleeper finished 256 15 sleeper" in tree.records()
    assert "demo: every service is down" in tree.log()
    assert not tree.dir.exists()  # the runner's copy goes with it


def test_sigterm_to_the_runner_stops_everything_with_exit_code_0(tree):
    # What `docker stop` sends to PID 1.
    tree.process.send_signal(signal.SIGTERM)
    assert tree.wait() == 0
    assert tree.records()[-1] == "svscan finished"


def test_a_second_runner_on_a_directory_in_use_is_refused(tree, demo_runner):
    second = subprocess.run([str(demo_runner / "bin" / "run"), str(tree.dir)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 100
    assert f"demo: s6-svscan already runs on {tree.dir}" in second.stderr
    assert svstat(tree.dir / "sleeper").startswith("up")


def test_a_directory_that_is_not_a_scan_directory_is_left_alone(demo_runner, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes").write_text("keep me")
    refused = subprocess.run([str(demo_runner / "bin" / "run"), str(tmp_path / "mine")], capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 100
    assert "is neither empty nor a scan directory; give a new or empty directory" in refused.stderr
    assert (tmp_path / "mine" / "notes").read_text() == "keep me"


def test_a_scan_directory_left_by_a_killed_run_is_emptied_and_reused(demo_runner, tmp_path):
    stale = tmp_path / "scan"
    (stale / ".s6-svscan").mkdir(parents=True)
    (stale / "gone").mkdir()
    (stale / "gone" / "run").write_text("#!/bin/false\n")
    started = Tree(demo_runner, stale, tmp_path, ("sleeper", "stubborn", "status"))
    try:
        assert not (stale / "gone").exists()
        assert f"demo: emptying {stale}, left by an earlier run" in started.log()
    finally:
        started.close()


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def fixture_ports_free():
    for port in FIXTURE_PORTS:
        if not port_free(port):
            pytest.fail(f"port {port} is taken; the fixture services listen on {FIXTURE_PORTS}")


def started_in_background(command: list[str], env: dict[str, str], scan: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        wait_for(lambda: process.poll() is None and svstat(scan / "nginx").startswith("up")
                 and svstat(scan / "status").startswith("up"), timeout=120, what="the fixture services")
    except AssertionError:
        process.kill()
        raise AssertionError(process.communicate()) from None
    return process


@pytest.mark.parametrize("pure", [True, False], ids=["pure-services-shell", "plain-nix-shell"])
def test_nix_shell_runs_the_services(s6_on_host, fixture_ports_free, tmp_path, pure):
    scan = tmp_path / "scan"
    command = ["nix-shell", *(["--pure", "-A", "services-shell"] if pure else []),
               "--arg", "services", "./tests/fixtures/services.nix", "--run", f"run {scan}"]
    # Offline there is no <nixpkgs> to take bashInteractive from: name the shell, as the README says.
    shell = started_in_background(command, {"NIX_BUILD_SHELL": shutil.which("bash")}, scan)
    try:
        page = requests.get(f"http://127.0.0.1:{FIXTURE_PORTS[0]}/", timeout=5)
        assert page.status_code == 200 and "web fixture" in page.text
        status = requests.get(f"http://127.0.0.1:{FIXTURE_PORTS[1]}/", timeout=5).text
        assert status.startswith("nginx: up (pid ") and "\nstatus: up (pid " in status
    finally:
        subprocess.run(["s6-svscanctl", "-t", str(scan)], capture_output=True)
        out, err = shell.communicate(timeout=30)
    assert shell.returncode == 0, err
    assert "services: every service is down" in err
    assert "error:" not in err and "will use bash from your environment" not in err


def test_the_seed_dummy_service_of_nix_services_nix(s6_on_host, tmp_path):
    runner = nix_build("nix/services.nix", "-A", "dummy-run", "--arg", "pkgs", "import ./tests/nixpkgs {}")
    tree = Tree(runner, tmp_path / "scan", tmp_path, ("dummy",))
    try:
        wait_for(lambda: "Dummy is starting..." in tree.log(), what="the dummy")
        subprocess.run(["s6-svc", "-r", str(tree.dir / "dummy")], check=True)  # what its 60 s sleep ends in
        wait_for(lambda: tree.log().count("Dummy is starting...") == 2, what="a restart")
        assert "Dummy is exiting..." in tree.log()
    finally:
        tree.close()
    assert tree.process.returncode == 0


def test_invoke_start_runs_the_services_in_the_foreground_until_sigterm(s6_on_host, fixture_ports_free, tmp_path):
    scan = tmp_path / "scan"
    started = started_in_background(["python3", "-m", "invoke", "start", "services", "--arg", str(scan)],
                                    {**FIXTURE, "INVOKE_WEB_PKGS": "tests/nixpkgs", "NO_COLOR": "1"}, scan)
    assert requests.get(f"http://127.0.0.1:{FIXTURE_PORTS[1]}/", timeout=5).text.startswith("nginx: up")
    started.send_signal(signal.SIGTERM)  # passed on to the runner: s6-svscan brings the services down
    out, err = started.communicate(timeout=30)
    assert started.returncode == 0, err
    assert out.strip().splitlines()[-1] == "services stopped"
    assert "building the runner services: nix-build tests/fixtures/services.nix -A services-run" in err
    assert not scan.exists()


def test_invoke_start_runs_the_nginx_runner_the_same_way(s6_on_host, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["python3", "-m", "invoke", "start", "nginx"], cwd=ROOT, text=True,
                               env={**os.environ, **FIXTURE, "INVOKE_WEB_PKGS": "tests/nixpkgs", "PORT": str(port)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        page = wait_for(lambda: not port_free(port) and requests.get(f"http://127.0.0.1:{port}/", timeout=5),
                        timeout=120, what="the nginx runner")
        assert "web fixture" in page.text
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip().splitlines()[-1] == "nginx stopped"  # after the runner's own output


def test_invoke_start_without_nix_on_the_machine_says_what_to_do(s6_on_host):
    outcome = invoke("start", "services", env={**FIXTURE, "PATH": "/nonexistent"})
    assert outcome.code != 0 and "Traceback" not in outcome.stderr
    assert outcome.error_line == ("error: starting services in the foreground needs Nix on this machine: nix-build is not "
                                  "on PATH; install Nix on this machine (apt-get install nix-bin), or start it as a "
                                  "container: --container")


# nix/services.nix with the stand-in, where nixpkgs' nginx, writeShellScript
# and fakeNss (used by nix/images.nix) are stubs: the production file's wiring.
STUBBED = """
let
  standIn = import ./tests/nixpkgs { };
  pkgs = standIn // {
    nginx = standIn.runCommand "nginx-stub" { } "mkdir -p $out/conf; touch $out/conf/mime.types";
    writeShellScript = name: text: standIn.writeScript name ("#!${standIn.busybox}/bin/sh\\n" + text);
    dockerTools = standIn.dockerTools // {
      fakeNss.override = _: standIn.writeTextDir "etc/passwd" "root:x:0:0::/:/bin/false";
    };
  };
in
import ./nix/services.nix { inherit pkgs; }
"""


def test_the_production_services_file_runs_images_nix_nginx_under_s6(s6_on_host):
    runner = nix_build("-E", STUBBED, "-A", "services-run")
    scan = Path(next(line.split()[-1] for line in (runner / "bin" / "run").read_text().splitlines()
                     if line.startswith("#   /nix/store/")))
    assert sorted(p.name for p in scan.iterdir()) == [".s6-svscan", "README", "nginx", "status"]
    assert "-web-cmd" in (scan / "nginx" / "run").read_text()  # images.nix's nginx command
    assert (scan / "nginx" / "log" / "run").exists() and (scan / "status" / "log" / "run").exists()
    image = nix_build("-E", STUBBED, "-A", "services")
    assert image.name.endswith("-stream-services") and os.access(image, os.X_OK)
    for attribute in ("services-shell", "dummy-run", "web", "web-cmd"):
        instantiated = subprocess.run(["nix-instantiate", "-E", STUBBED, "-A", attribute], cwd=ROOT, capture_output=True,
                                      text=True)
        assert instantiated.returncode == 0, instantiated.stderr[-2000:]
