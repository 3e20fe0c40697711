"""Hostile but honest input (issue 18, classes 1, 2 and 7), through the real command line: each
gives its exit code and one `error:` line, no traceback, before any work, and nothing is left,
made or replaced."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_CONFIG, ROOT, Outcome, assert_one_line_error, invoke
from tests.integration.conftest import project_copy


def tasks_elsewhere(directory: Path, config: str | None = None, *args: str, env: dict[str, str] | None = None):
    """invoke ARGS with tasks.py copied to `directory`, so that its project invoke.yaml (`config`)
    is there, not in the checkout other tests read."""
    shutil.copy2(ROOT / "tasks.py", directory / "tasks.py")
    if config is not None:
        (directory / "invoke.yaml").write_text(config)
    completed = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(directory), *args],
                               cwd=directory, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                               env={**os.environ, **FIXTURE_CONFIG, "PYTHONPATH": str(ROOT), **(env or {})})
    return Outcome(completed.returncode, completed.stdout, completed.stderr)


def own(web_image) -> str:
    """The fixture's image by its identity tag: web:latest may move while other tests build."""
    return next(tag for tag in web_image.tags if tag.startswith("web:id-"))


def one_line(outcome, *phrases):
    assert_one_line_error(outcome, *phrases)
    assert len([line for line in outcome.stderr.splitlines() if line.strip()]) == 1, outcome.stderr


# --- class 1: settings of the wrong type or range ---------------------------------------


@pytest.mark.parametrize(("env", "args", "phrases"), [
    ({"INVOKE_WEB_PORT": "abc"}, ["run-web"], ["web.port is 'abc' (from INVOKE_WEB_PORT)", "from 1 to 65535"]),
    ({}, ["run-web", "--port", "70000"], ["web.port is '70000' (from --port)", "from 1 to 65535"]),
    ({}, ["run-web", "--port", "0"], ["web.port is '0' (from --port)"]),
    ({"INVOKE_WEB_TIMEOUT": "-5"}, ["run-web"], ["web.timeout is '-5'"]),
    ({"INVOKE_BUILDER_FROM_DEBIAN": "maybe"}, ["build-web"], ["builder.from_debian is 'maybe'", "1 or 0"]),
    ({"INVOKE_BUILDER_MAX_AGE_DAYS": "a week"}, ["build-web"], ["builder.max_age_days"]),
    ({"INVOKE_START_SERVICES_PORTS": "9080:8080"}, ["start", "services", "--container"], ["a list cannot come"]),
    ({"INVOKE_WEB_PROT": "8000"}, ["run-web"], ["INVOKE_WEB_PROT is set but names no setting"]),
    ({}, ["stop", "services", "--grace", "abc"], ["stop.grace is 'abc' (from --grace)"]),
    ({}, ["run-vm", "--memory", "2G"], ["vm.memory is '2G' (from --memory)"]),
    ({}, ["run-vm", "--cpus", "0"], ["vm.cpus is '0' (from --cpus)"]),
    ({}, ["build-vm", "--disk-size", "12"], ["vm.disk_size is '12' (from --disk-size)"]),
    ({}, ["cidata", "--format", "ext4"], ["vm.seed_format is 'ext4' (from --format)"]),
    ({}, ["bundle", "--compression", "gzip"], ["bundle.compression is 'gzip' (from --compression)"]),
    ({}, ["build-base", "--from-debian", "--tool", "apt"], ["builder.tool is 'apt' (from --tool)"]),
    ({}, ["build-web", "--cache-from", "not a namespace"], ["builder.registry is 'not a namespace'"]),
    ({"INVOKE_PROJECT_ROOT": "/nonexistent/project"}, ["build-web"], ["project.root", "existing directory"]),
])
def test_a_bad_setting_is_one_line_before_any_work(tmp_path, env, args, phrases):
    marker = f"hostile-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    outcome = invoke(*args, env={"INVOKE_WEB_CONTAINER": marker, "XDG_CACHE_HOME": str(tmp_path), **env}, timeout=120)
    one_line(outcome, *phrases)
    assert time.monotonic() - started < 20  # no wait for a container that cannot answer (--port 0 waited 30 s)
    assert subprocess.run(["docker", "inspect", marker], capture_output=True).returncode != 0  # nothing started
    assert not list(tmp_path.iterdir())  # not even the engine sweep's note


@pytest.mark.parametrize(("config", "phrases"), [
    ("web: [1\n", ["invoke.yaml is not valid YAML: line 2, column 1"]),
    ("web: 5\n", ["is not a mapping of settings"]),
    ("web:\n  port: abc\n", ["web.port is 'abc' (from ", "invoke.yaml): a port is a whole number"]),
    ("web:\n  port: '9000'\n", ["written without quotes"]),
    ("builder:\n  from_debian: maybe\n", ["builder.from_debian is 'maybe'"]),
    ("wbe:\n  port: 1\n", ["'wbe' in", "is not a section"]),
    ("run: null\n", ["run in", "is not a mapping"]),
    ("hello\n", ["is not a mapping of sections"]),
])
def test_a_bad_project_file_is_one_line_even_for_invoke_list(tmp_path, config, phrases):
    for args in (["stop-web"], ["--list"]):
        one_line(tasks_elsewhere(tmp_path, config, *args), *phrases)


def test_the_user_and_runtime_files_are_checked_too(tmp_path):
    (tmp_path / ".invoke.yaml").write_text("vm:\n  cpus: lots\n")
    one_line(tasks_elsewhere(tmp_path, None, "stop-web", env={"HOME": str(tmp_path)}),
             f"vm.cpus is 'lots' (from {tmp_path / '.invoke.yaml'})")
    (tmp_path / "runtime.yaml").write_text("web:\n  host: localhost\n")
    one_line(tasks_elsewhere(tmp_path, None, "-f", str(tmp_path / "runtime.yaml"), "stop-web"),
             f"web.host is 'localhost' (from {tmp_path / 'runtime.yaml'})")


# --- class 2: output paths that are not ordinary writable places ----------------------


def test_extract_to_proc_a_read_only_place_or_a_fifo_is_refused(web_image, tmp_path):
    one_line(invoke("extract", own(web_image), "--to", "rootfs:/proc/x"), "cannot write under /proc")
    os.mkfifo(tmp_path / "fifo")
    one_line(invoke("extract", own(web_image), "--to", f"docker-archive:{tmp_path / 'fifo'}"), "is a FIFO, not a regular file")
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True).returncode:
        read_only.chmod(0o555)  # not root: permissions do it
    try:
        one_line(invoke("extract", own(web_image), "--to", f"rootfs:{read_only / 'x'}"), f"cannot write under {read_only}")
        one_line(invoke("cidata", "--output", str(read_only / "sub" / "c.img")), f"cannot write under {read_only / 'sub'}")
    finally:
        subprocess.run(["umount", str(read_only)], capture_output=True)
    assert not list(read_only.iterdir())


def test_oci_layouts_go_only_into_empty_or_layout_directories(web_image, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for task in ("extract", "push"):
        one_line(invoke(task, own(web_image), "--to", f"oci:{mine}"), f"{mine} is neither empty nor an OCI layout")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    before = sorted(p.name for p in ROOT.iterdir())
    one_line(invoke("extract", own(web_image), "--to", "oci::x"), "'oci::x' names no directory")
    assert sorted(p.name for p in ROOT.iterdir()) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("extract", own(web_image), "--to", f"oci:{empty}").code == 0
    assert (empty / "index.json").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can write /dev")
@pytest.mark.parametrize("args", [
    ["cidata", "--output", "/dev/full"],
    ["build-vm", "--ssh-key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2I6C3N4zYt1GZ0lXx4bIcbdWzTsnpX0EJvVGNLRFhE x",
     "--output", "/dev/full"],
    ["bundle", "--output", "/dev/full"],
    ["cache-pull", "127.0.0.1:5000/none/none:1", "--to", "/dev/full"],
    ["pull-vm", "127.0.0.1:5000/none/none:1", "--to", "/dev/full"],
    ["extract", "WEB", "--to", "docker-archive:/dev/full"],
])
def test_a_device_node_is_never_replaced(web_image, args):
    outcome = invoke(*[own(web_image) if arg == "WEB" else arg for arg in args], env={"INVOKE_BUNDLE_SECRET_KEY": "/dev/null"})
    one_line(outcome, "/dev/full is a character device")
    assert stat.S_ISCHR(Path("/dev/full").lstat().st_mode)


def test_bundle_key_into_a_device_is_refused_and_makes_no_directory(tmp_path):
    outcome = invoke("bundle-key", env={"INVOKE_BUNDLE_SECRET_KEY": str(tmp_path / "new" / "k.sec"),
                                        "INVOKE_BUNDLE_PUBLIC_KEY": "/dev/null"})
    one_line(outcome, "/dev/null is a character device")
    assert not (tmp_path / "new").exists()


# --- class 7: misleading messages --------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../../../../../../etc/passwd"])
def test_a_page_linked_out_of_the_project_is_refused_naming_it(tmp_path, target):
    env = project_copy(tmp_path)
    page = tmp_path / "tests" / "fixtures" / "web" / "index.html"
    page.unlink()
    page.symlink_to(target)
    outcome = invoke("build-web", env=env)
    # refused before the cache is looked up: no container, no image, no other line
    one_line(outcome, "tests/fixtures/web/index.html in the build context is a symbolic link to")


def test_a_page_that_is_a_directory_says_so(web_image, tmp_path):
    env = project_copy(tmp_path)
    page = tmp_path / "tests" / "fixtures" / "web" / "index.html"
    page.unlink()
    page.mkdir()
    (page / "a.html").write_text("a page in a directory")
    outcome = invoke("build-web", env=env)
    assert_one_line_error(outcome, "tests/fixtures/web/index.html is a directory in the build context, but a file",
                          "make it a file again")
    assert "Error processing tar file" not in outcome.stderr


@pytest.mark.parametrize(("args", "phrase"), [
    (["push", "WEB", "--to", "docker://127.0.0.1:5000/t/web:1\n"], "'127.0.0.1:5000/t/web:1\\n' is not a valid"),
    (["push", "web\n", "--to", "docker://127.0.0.1:5000/t/web"], "unknown image 'web\\n'"),
    (["extract", "WEB", "--to", "oci:/tmp/x:latest\n"], "'latest\\n' is not a valid tag"),
    (["extract", "WEB", "--to", "rootfs:/tmp/x\n"], "names a path with a control character"),
])
def test_a_reference_with_a_newline_is_one_line(web_image, args, phrase):
    one_line(invoke(*[own(web_image) if arg == "WEB" else arg for arg in args]), phrase)


def test_skopeo_fatal_message_comes_once_with_a_hint(web_image, tmp_path):
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text("garbage")
    outcome = invoke("push", own(web_image), "--to", f"oci:{layout}")
    assert_one_line_error(outcome, "skopeo failed: initializing destination oci:", "check the source and the destination")
    assert "level=fatal" not in outcome.stderr
    assert (layout / "index.json").read_text() == "garbage"
