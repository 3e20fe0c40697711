"""Where a task may write (core.files), what a failed cleanup tells the user, and the messages of
class 7 that need no engine: pure Python."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import stat
from pathlib import Path

import docker.errors
import pytest

from ci.core import files
from ci.core.errors import CommandFailed, ConfigError
from ci.project import Project
from tests.conftest import ROOT


def refused(path: Path, shape: str) -> str:
    with pytest.raises(ConfigError) as caught, files.output(path, shape, "--to"):
        pytest.fail("a refused place must not be handed out")
    return caught.value.line()


def test_a_device_socket_fifo_or_link_is_never_replaced(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "socket"))
        (tmp_path / "link").symlink_to(tmp_path / "target")
        for name, kind in (("fifo", "a FIFO"), ("socket", "a socket"), ("link", "a symbolic link")):
            assert f"is {kind}, not a regular file" in refused(tmp_path / name, "file")
        assert stat.S_ISSOCK((tmp_path / "socket").lstat().st_mode)
    assert "is a character device" in refused(Path("/dev/null"), "file")
    assert "is a character device" in refused(Path("/dev/null"), "file-or-directory")


def test_layouts_go_only_into_empty_or_layout_directories(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine").write_text("x")
    assert "is neither empty nor an OCI layout" in refused(tmp_path / "full", "oci-layout")
    (tmp_path / "empty").mkdir()
    with files.output(tmp_path / "empty", "oci-layout", "--to") as path:
        assert path == tmp_path / "empty"
    (tmp_path / "full" / "oci-layout").write_text("{}")
    with files.output(tmp_path / "full", "oci-layout", "--to"):
        pass
    assert "already exists" in refused(tmp_path / "empty", "new-directory")
    assert "already exists" in refused(tmp_path / "full" / "mine", "new-file")


def test_an_unwritable_place_is_refused_and_leaves_no_directory(tmp_path):
    assert "cannot write under /proc" in refused(Path("/proc/x/y"), "file")
    (tmp_path / "file").write_text("x")
    assert f"{tmp_path / 'file'} is a file" in refused(tmp_path / "file" / "sub" / "out.img", "file")
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


def test_directories_made_for_a_failed_task_are_removed(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), files.output(tmp_path / "kept" / "a" / "b" / "out.img", "file", "--output") as path:
        assert path.parent.is_dir()
        raise RuntimeError("the task failed")
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not any((tmp_path / "kept").iterdir())


def test_a_failed_cleanup_names_what_it_left():
    docker_client = importlib.import_module("ci.tools.docker.client")  # the package's `client` is a function
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append

    def fails():
        raise docker.errors.APIError("conflict", explanation="device or resource busy")

    def gone():
        raise docker.errors.NotFound("no such container")

    docker_client.log.addHandler(handler)
    try:
        assert not docker_client._quietly(fails, container="nix-ci-stream-1")
        assert not docker_client._quietly(fails, image="sha256:abc")
        assert docker_client._quietly(gone, container="nix-ci-stream-2")
    finally:
        docker_client.log.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [
        "warning: could not remove the container nix-ci-stream-1 (device or resource busy); it is left behind: "
        "`docker rm -f nix-ci-stream-1` removes it",
        "warning: could not remove the image sha256:abc (device or resource busy); it is left behind: "
        "`docker rmi sha256:abc` removes it",
    ]


def test_skopeo_fatal_message_is_said_once_with_a_hint():
    from ci.tools import skopeo

    output = ('time="2026-12-03T18:34:30Z" level=fatal msg="initializing destination oci:/x/l:x: '
              'invalid character \'g\' looking for \\"beginning\\" of value"\n')
    failure = CommandFailed(f"skopeo failed (exit 1): {output.strip()}", argv=["skopeo"], exit_code=1, output=output)
    explained = skopeo._explain(failure, "oci:/x/l:x")
    assert explained.line() == ("skopeo failed: initializing destination oci:/x/l:x: invalid character 'g' looking for "
                                "\"beginning\" of value; check the source and the destination")
    assert "level=fatal" not in explained.details


def context_with(tmp_path: Path, name: str, target: str) -> Project:
    for part in ("nix", "tests/nixpkgs", "tests/fixtures"):
        (tmp_path / part).mkdir(parents=True, exist_ok=True)
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    (tmp_path / "nix" / "images.nix").write_text("{}")
    (tmp_path / "outside.txt").write_text("left out")
    (tmp_path / "nix" / "page.html").write_text("a page")
    (tmp_path / "nix" / name).symlink_to(target)
    return Project(tmp_path, "tests/nixpkgs", "nix/images.nix")


@pytest.mark.parametrize(("target", "phrase"), [
    ("/etc/shadow", "a symbolic link to '/etc/shadow', which is an absolute path"),
    ("../../../../../../../../etc/passwd", "which is outside the project"),
    ("../outside.txt", "which the build context leaves out (.dockerignore)"),
])
def test_a_link_out_of_the_build_context_is_refused_naming_it(tmp_path, target, phrase):
    with pytest.raises(ConfigError) as caught:
        context_with(tmp_path, "index.html", target).context_files  # noqa: B018
    assert caught.value.line().startswith(f"nix/index.html in the build context is {phrase.split(', which')[0]}") \
        or phrase in caught.value.line()
    assert phrase in caught.value.line()


def test_a_link_inside_the_build_context_is_kept(tmp_path):
    assert "nix/index.html" in context_with(tmp_path, "index.html", "page.html").context_files
