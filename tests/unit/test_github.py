"""GitHub's conventions inside the tasks: log groups, error annotations, step
outputs and the job summary, written to the files GitHub would give a step."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci import github
from tests.conftest import assert_one_line_error, invoke


def read_outputs(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner reads it: NAME=VALUE or NAME<<DELIMITER, the last value winning."""
    outputs: dict[str, str] = {}
    lines = iter(path.read_text().split("\n"))
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value = []
            for body in lines:
                if body == delimiter:
                    break
                value.append(body)
            else:
                raise AssertionError(f"no closing {delimiter} for {name}")
            outputs[name] = "\n".join(value)
        elif line:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs


@pytest.fixture
def on_github(monkeypatch, tmp_path) -> dict[str, Path]:
    """The variables and files GitHub gives a step."""
    files = {"GITHUB_OUTPUT": tmp_path / "output", "GITHUB_STEP_SUMMARY": tmp_path / "summary"}
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    for name, path in files.items():
        path.touch()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setattr(github, "_records", {})
    monkeypatch.setattr(github, "_open_group", None)
    return files


def test_nothing_happens_off_github(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    with github.group("build"):
        github.error("it broke")
        github.report("build-web", github.ImageRecord("web", ("web:latest",), id="sha256:1"))
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "output").exists()


def test_groups_fold_and_do_not_nest(on_github, capsys):
    with github.group("invoke build-cache"):
        with github.group("nix-base"):
            pass
        github.end_group()
    # GitHub shows groups flat: the inner one ends the outer, and nothing ends twice.
    assert capsys.readouterr().err.splitlines() == [
        "::group::invoke build-cache", "::endgroup::", "::group::nix-base", "::endgroup::",
    ]


def test_errors_become_escaped_annotations(on_github, capsys):
    github.error("50% done\nthen: failed", title="invoke push, web")
    assert capsys.readouterr().err == "::error title=invoke push%2C web::50%25 done%0Athen: failed\n"


def test_outputs_use_a_heredoc_for_multi_line_values(on_github):
    github.set_outputs({"digest": "sha256:abc", "tags": "web:1\nweb:latest"})
    text = on_github["GITHUB_OUTPUT"].read_text()
    assert text.startswith("digest=sha256:abc\ntags<<ghadelimiter_")
    assert read_outputs(on_github["GITHUB_OUTPUT"]) == {"digest": "sha256:abc", "tags": "web:1\nweb:latest"}


def test_report_writes_outputs_and_one_summary_table(on_github):
    github.report("push", github.ImageRecord("docker://r/web:1", ("docker://r/web:1",), digest="sha256:d1",
                                             bytes_pushed=2_500_000))
    github.report("push", github.ImageRecord("docker://r/web:latest", ("docker://r/web:latest",), digest="sha256:d1",
                                             bytes_pushed=0))
    outputs = read_outputs(on_github["GITHUB_OUTPUT"])
    assert outputs["digest"] == "sha256:d1"
    assert outputs["tags"] == "docker://r/web:1\ndocker://r/web:latest"
    assert outputs["bytes-pushed"] == "0"
    summary = on_github["GITHUB_STEP_SUMMARY"].read_text().splitlines()
    assert summary == [
        "", "### push", "",
        "| image | tags | digest | size | layers | bytes pushed |",
        "|---|---|---|---|---|---|",
        "| `docker://r/web:1` | `docker://r/web:1` | `sha256:d1` | – | – | 2.5 MB |",
        "| `docker://r/web:latest` | `docker://r/web:latest` | `sha256:d1` | – | – | 0 B |",
    ]


def test_a_built_image_reports_its_id_size_and_layers(on_github):
    class Built:
        id, tags, size, layers = "sha256:i", ("web:id-1", "web:latest"), 12_345_678, ("sha256:a", "sha256:b")

    github.report("build-web", github.built("web", Built()))
    outputs = read_outputs(on_github["GITHUB_OUTPUT"])
    assert outputs == {"image": "web", "id": "sha256:i", "size": "12345678", "layers": "2", "tags": "web:id-1\nweb:latest"}
    assert "| `web` | `web:id-1`<br>`web:latest` | `sha256:i` (id) | 12.3 MB | 2 | – |" in \
        on_github["GITHUB_STEP_SUMMARY"].read_text()


def test_credentials_are_never_written(on_github, monkeypatch, capsys):
    monkeypatch.setenv("REGISTRY_PASSWORD", "hunter2-token")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_secretvalue")
    where = "docker://robot:hunter2-token@ghcr.io/o/web"
    github.report("push", github.ImageRecord(where, (where,), digest="sha256:d"))
    github.error(f"push to {where} refused ghs_secretvalue")
    written = "".join(path.read_text() for path in on_github.values()) + capsys.readouterr().err
    assert "hunter2" not in written and "ghs_secretvalue" not in written and "robot" not in written
    assert "docker://***@ghcr.io/o/web" in written


def test_a_failing_task_annotates_its_one_line_error(tmp_path):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")}
    outcome = invoke("push", "nope", "--to", f"oci:{tmp_path}/layout", env=env)
    assert_one_line_error(outcome, "unknown image 'nope'")
    lines = outcome.stderr.splitlines()
    assert lines[0] == "::group::invoke push"
    assert lines[-3:] == ["::endgroup::", f"::error title=invoke push::{outcome.error_line.removeprefix('error: ')}",
                          outcome.error_line]
    assert not (tmp_path / "output").exists() and not (tmp_path / "summary").exists()


def test_a_failing_task_off_github_prints_no_workflow_commands(tmp_path):
    outcome = invoke("push", "nope", "--to", f"oci:{tmp_path}/layout", env={"GITHUB_ACTIONS": ""})
    assert_one_line_error(outcome, "unknown image 'nope'")
    assert "::" not in outcome.stderr


def test_warnings_become_annotations(on_github, capsys):
    github.warning("the cache image is 9.0 days old, more than 7 days", title="stale cache image")
    assert capsys.readouterr().err == "::warning title=stale cache image::the cache image is 9.0 days old, more than 7 days\n"


def test_a_missing_cache_is_a_warning_annotation_on_github(on_github, capsys):
    from ci import cache

    cache.missing(cache.CacheSettings("nix-base:latest", "nix-cache:latest", None, 7))
    assert capsys.readouterr().err == ("::warning title=no cache image::no cache image: building nix-base:latest and "
                                       "nix-cache:latest first (invoke build-cache)\n")


def test_warnings_are_silent_off_github(monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    github.warning("anything")
    assert capsys.readouterr().err == ""
