"""On GitHub, real tasks write their images to the step's outputs and the job
summary, and fold their logs: run with the variables and files GitHub gives a
step, against the real engine, skopeo and the built web image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import invoke
from tests.unit.test_github import read_outputs

SECRET = "not-a-real-token-3f9a"


@pytest.fixture
def github_step(tmp_path) -> tuple[dict[str, str], dict[str, Path]]:
    files = {"GITHUB_OUTPUT": tmp_path / "output", "GITHUB_STEP_SUMMARY": tmp_path / "summary"}
    for path in files.values():
        path.touch()
    env = {"GITHUB_ACTIONS": "true", "REGISTRY_PASSWORD": SECRET, **{k: str(v) for k, v in files.items()}}
    return env, files


def test_push_writes_its_digest_and_tags_and_a_summary_row(web_tag, tmp_path, github_step):
    env, files = github_step
    layout = tmp_path / "layout"
    outcome = invoke("push", web_tag, "--to", f"oci:{layout}:v1", env=env)
    assert outcome.code == 0, outcome.stderr
    destination, digest = outcome.stdout.split()[:2]
    assert [m["digest"] for m in json.loads((layout / "index.json").read_text())["manifests"]] == [digest]

    outputs = read_outputs(files["GITHUB_OUTPUT"])
    assert outputs["digest"] == digest
    assert outputs["tags"] == destination
    uploaded = dict(word.split("=") for word in outcome.stdout.split()[2:])["uploaded"]
    assert outputs["bytes-pushed"] == uploaded
    summary = files["GITHUB_STEP_SUMMARY"].read_text()
    assert summary.startswith("\n### push\n\n| image | tags | digest | size | layers | bytes pushed |\n")
    assert f"| `{destination}` | `{destination}` | `{digest}` |" in summary
    assert outcome.stderr.splitlines()[0] == "::group::invoke push"
    assert "::endgroup::" in outcome.stderr
    assert SECRET not in "".join(path.read_text() for path in files.values())


def test_build_web_writes_the_image_id_tags_size_and_layers(web_image, github_step):
    env, files = github_step
    outcome = invoke("build-web", env=env)  # nothing changed since the fixture: quick
    assert outcome.code == 0, outcome.stderr
    outputs = read_outputs(files["GITHUB_OUTPUT"])
    assert outputs["id"] == web_image.id
    printed = [line.split()[0] for line in outcome.stdout.strip().splitlines()]
    assert outputs["tags"].splitlines() == printed
    assert printed[-1] == "web:latest"
    assert int(outputs["layers"]) == len(web_image.attrs["RootFS"]["Layers"])
    assert int(outputs["size"]) == web_image.attrs["Size"]
    assert f"`{web_image.id}` (id)" in files["GITHUB_STEP_SUMMARY"].read_text()
