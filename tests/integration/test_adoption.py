"""Another repository adopts the toolkit: a wheel built from this one, installed
into a new virtual environment, run as `nix-ci` from a second git repository
that holds only an images file, a page, its package set and a config file.

The second repository brings its own package set: the stand-in (tests/nixpkgs),
copied in as its pin, since the shipped default (nix/nixpkgs) needs the network.
Its names (image, builder images, container, port) are its own, so that tests
running at the same time on the engine keep theirs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import venv
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT

pytestmark = pytest.mark.engine

PORT = 19417


def run(argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**_environment(), "NO_COLOR": "1"})


def _environment() -> dict[str, str]:
    import os

    # Nothing of this repository's configuration may reach the other one.
    return {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}


@pytest.fixture(scope="module")
def nix_ci(tmp_path_factory) -> Path:
    """The nix-ci command of a wheel of this repository, installed as the README says, in a new venv."""
    where = tmp_path_factory.mktemp("adoption")
    wheels = where / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], ROOT)
    assert built.returncode == 0, built.stderr
    environment = where / "venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    for args in (["--require-hashes", "-r", str(ROOT / "requirements.txt")], ["--no-deps", *map(str, wheels.glob("*.whl"))]):
        installed = run([python, "-m", "pip", "install", "-q", *args], where)
        assert installed.returncode == 0, installed.stderr
    return environment / "bin" / "nix-ci"


@pytest.fixture
def second_repository(tmp_path, engine) -> Path:
    """A git repository with only its images file, page, package set and config: no tasks.py, ci/ or images/."""
    name = f"adopted{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "site"
    shutil.copytree(ROOT / "tests" / "nixpkgs", repo / "pkgs", ignore=shutil.ignore_patterns("result*"))
    (repo / "web").mkdir()
    (repo / "web" / "index.html").write_text(f"<p>{name} builds with nix-ci</p>\n")
    images = (ROOT / "tests" / "fixtures" / "images.nix").read_text()
    assert 'import ../nixpkgs { }' in images and 'name = "web";' in images, "the fixture changed: update this test"
    (repo / "images.nix").write_text(images.replace("import ../nixpkgs { }", "import ./pkgs { }")
                                     .replace('name = "web";', f'name = "{name}";'))
    (repo / "invoke.yaml").write_text(
        f"web:\n  images: images.nix\n  pkgs: pkgs\n  name: {name}\n  container: {name}\n  port: {PORT}\n"
        f"builder:\n  from_debian: true\n  base: {name}-nix-base:latest\n  cache: {name}-nix-cache:latest\n")
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "site"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    yield repo
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    for image in engine.images.list():
        if any(tag.startswith((f"{name}:", f"{name}-nix-")) for tag in image.tags):
            for tag in image.tags:
                engine.images.remove(tag, noprune=False)


def test_another_repository_builds_runs_and_serves_its_page_with_the_installed_command(nix_ci, second_repository):
    repo = second_repository
    assert not (repo / "tasks.py").exists() and not (repo / "images").exists()
    for task in (["build-cache"], ["build-web"], ["run-web"]):
        outcome = run([str(nix_ci), *task], repo)
        assert outcome.returncode == 0, f"nix-ci {task[0]}:\n{outcome.stderr[-3000:]}"
    try:
        assert outcome.stdout.strip() == f"http://127.0.0.1:{PORT}/"
        response = requests.get(f"http://127.0.0.1:{PORT}/", timeout=5)
        assert response.status_code == 200
        assert response.text == (repo / "web" / "index.html").read_text()
    finally:
        stopped = run([str(nix_ci), "stop-web"], repo)
        assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped", stopped.stderr


def test_the_installed_command_has_the_same_tasks_and_flags(nix_ci, tmp_path):
    listed = run([str(nix_ci), "--list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    theirs = run([sys.executable, "-m", "invoke", "--list"], ROOT)
    # invoke heads the list "Available tasks:", a program with its own namespace "Subcommands:".
    assert listed.stdout.split("\n", 1)[1] == theirs.stdout.split("\n", 1)[1]
    helped = run([str(nix_ci), "--help", "build-web"], tmp_path)
    assert "--cache-from" in helped.stdout and "--complete" in helped.stdout


def test_a_missing_images_file_is_one_line_naming_the_current_directory(nix_ci, tmp_path):
    outcome = run([str(nix_ci), "build-web"], tmp_path)
    assert outcome.returncode != 0 and "Traceback" not in outcome.stderr, outcome.stderr
    line = outcome.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: the package set nix/nixpkgs does not exist under {tmp_path}"), line
