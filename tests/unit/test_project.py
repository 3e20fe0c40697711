"""Reading the Dockerfiles: build arguments, pinned defaults, and which ones one container can run."""

from pathlib import Path

import pytest

from ci.core.errors import ConfigError
from ci.project import OneContainerBuild, Project

ROOT = Path(__file__).resolve().parents[2]


def project_with(tmp_path: Path, dockerfile: str) -> Project:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "web.Dockerfile").write_text(dockerfile)
    (tmp_path / "pkgs.nix").write_text("{ }: { }\n")
    (tmp_path / "images.nix").write_text("{ pkgs }: { }\n")
    return Project(tmp_path, "pkgs.nix", "images.nix")


def test_the_shipped_web_dockerfile_runs_in_one_container():
    project = Project(ROOT, "tests/nixpkgs", "tests/fixtures/images.nix")
    args = project.buildargs("web", CACHE_IMAGE="sha256:c0ffee", ATTR="services")
    assert project.one_container_build("web", args) == OneContainerBuild(
        image="sha256:c0ffee",
        context_to="/src",
        environment={"PKGS": "tests/nixpkgs", "IMAGES": "tests/fixtures/images.nix", "ATTR": "services",
                     "NIX_CONFIG": "", "LABELS": "{}"},
        runs=['cd /src && nix-build "${IMAGES}" --arg pkgs "import /src/${PKGS} {}" --attr "${ATTR}" '
              '--argstr labels "${LABELS}" --out-link /result'],
    )


def test_continued_lines_defaults_and_several_runs(tmp_path):
    project = project_with(tmp_path, "\n".join([
        "# the cache",
        "ARG BASE=nix-cache",
        "FROM $BASE",
        'ARG PKGS IMAGES=nix/images.nix GREETING="hello there" UNSET',
        "COPY . /work",
        "RUN nix-build \\",
        "      --version",
        "RUN echo done",
    ]) + "\n")
    steps = project.one_container_build("web", {"PKGS": "pkgs.nix"})
    assert steps == OneContainerBuild("nix-cache", "/work",
                                      {"PKGS": "pkgs.nix", "IMAGES": "nix/images.nix", "GREETING": "hello there"},
                                      ["nix-build       --version", "echo done"])


@pytest.mark.parametrize("dockerfile", [
    "FROM nix-cache\nCOPY . /src\nENV A=1\nRUN true\n",  # an ENV step
    "FROM nix-cache\nCOPY . /src\nRUN true\nRUN true\nCOPY . /other\n",  # COPY after RUN
    "FROM nix-cache\nCOPY flake.nix /src/\nRUN true\n",  # not the whole context
    "FROM nix-cache\nCOPY --chown=1000 . /src\nRUN true\n",  # a flag
    "FROM nix-cache\nCOPY . src\nRUN true\n",  # relative to WORKDIR
    'FROM nix-cache\nCOPY . /src\nRUN ["nix-build"]\n',  # exec form
    "FROM nix-cache AS builder\nCOPY . /src\nRUN true\n",  # a named stage
    "FROM ${UNDECLARED}\nCOPY . /src\nRUN true\n",  # an argument nobody gives
    "FROM nix-cache\nCOPY . /src\n",  # nothing to run
    "FROM nix-cache\nRUN true\nFROM scratch\nCOPY . /src\nRUN true\n",  # two stages
])
def test_anything_else_is_left_to_docker_build(tmp_path, dockerfile):
    assert project_with(tmp_path, dockerfile).one_container_build("web", {}) is None


def test_build_arguments_are_those_declared_and_pins_are_defaults(tmp_path):
    project = project_with(tmp_path, "ARG BUILDER_IMAGE=nixos/nix@sha256:ab\nFROM ${BUILDER_IMAGE}\nARG PKGS\n")
    assert project.buildargs("web", CACHE_IMAGE="x") == {"PKGS": "pkgs.nix"}
    assert project.default_arg("web", "BUILDER_IMAGE") == "nixos/nix@sha256:ab"
    with pytest.raises(ConfigError, match="has no default for PKGS"):
        project.default_arg("web", "PKGS")
