"""The security rules every workflow file must follow, beyond GitHub's schema.

These are the project's own rules, checked by `invoke workflows --check`
next to check-jsonschema, actionlint and zizmor:

- **Permissions, top level:** declared, and read-only: a map of `read` or
  `none` scopes (or `{}`). A reusable workflow (only `on: workflow_call`)
  declares none: its jobs get what the calling job grants, and one that
  asked for more than that would not start. `write-all`, `read-all` and any `write` scope are
  refused there, since every job would inherit them.
- **Permissions, per job:** a job that needs to write says so itself, one
  scope at a time, with a comment on the same line saying why
  (`packages: write  # push the image`). `write-all` and `read-all` are
  refused in jobs too. A job that calls a reusable workflow declares its
  `permissions`, since they cap what the called workflow's jobs get.
- **Triggers:** `pull_request_target` and `workflow_run` are refused: both
  run with the base repository's secrets and a write token in reach of code
  or artifacts from a pull request.
- **What runs:** every action and reusable workflow from another repository
  is pinned to a 40-hex commit SHA, with its version in a comment; `./` and
  `$/` (this repository) are fine. `docker://` actions are refused: they run a
  registry image no commit pins, outside the checks above.
"""

from __future__ import annotations

import re
from typing import Any

from .workflows import Problem, Where, Workflow  # workflows imports this module only when it checks

FORBIDDEN_TRIGGERS = {
    "pull_request_target": "runs with the base repository's secrets and a write token on a pull request's event",
    "workflow_run": "runs with the base repository's secrets and a write token after workflows a pull request can start",
}

_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
_VERSION_COMMENT = re.compile(r"#\s*v?\d+(\.\d+)*\s*$")
_WRITE_SCOPE = re.compile(r"^\s*([\w-]+)\s*:\s*['\"]?write['\"]?\s*(#\s*\S.*)?$")


def problems(workflow: Workflow) -> list[Problem]:
    """Every rule above that `workflow` breaks."""
    found = _trigger_problems(workflow)
    found += _top_level_permissions(workflow)
    for job in workflow.jobs:
        found += _job_permissions(workflow, job.id, job.data, job.lines)
        uses = job.data.get("uses")
        if isinstance(uses, str):
            found += _uses_problems(workflow, Where(workflow.label, job.id), uses, job.lines[0])
        for step in job.steps:
            if step.uses:
                found += _uses_problems(workflow, step.where, step.uses, step.line)
    return found


def _trigger_problems(workflow: Workflow) -> list[Problem]:
    return [Problem(Where(workflow.label), f"is triggered by {trigger}, which {why}",
                    "use pull_request (read-only token, no secrets for forks), and push or schedule for what writes")
            for trigger, why in FORBIDDEN_TRIGGERS.items() if trigger in workflow.triggers]


def _top_level_permissions(workflow: Workflow) -> list[Problem]:
    where = Where(workflow.label)
    if "permissions" not in workflow.data:
        if workflow.reusable:
            return []
        return [Problem(where, "has no top-level permissions", "add `permissions: {contents: read}`")]
    granted = workflow.data["permissions"]
    if granted in ("write-all", "read-all"):
        return [Problem(where, f"grants {granted}", "list only the scopes it needs, e.g. `contents: read`")]
    writes = _writes(granted)
    if writes:
        return [Problem(where, f"grants {', '.join(f'{s}: write' for s in writes)} to every job",
                        "keep the top level read-only and grant the write in the job that needs it")]
    return []


def _job_permissions(workflow: Workflow, job: str, data: dict[str, Any], lines: tuple[int, int]) -> list[Problem]:
    where = Where(workflow.label, job)
    granted = data.get("permissions")
    if granted is None:
        if "uses" in data:
            return [Problem(where, "calls a reusable workflow without `permissions`",
                            "declare what the called workflow may use: its jobs get no more than this")]
        return []
    if granted in ("write-all", "read-all"):
        return [Problem(where, f"grants {granted}", "list only the scopes the job needs")]
    found = []
    text = workflow.text.splitlines()[lines[0] - 1:lines[1]]
    for scope in _writes(granted):
        line = next((match for match in map(_WRITE_SCOPE.match, text) if match and match[1] == scope), None)
        if line is None or not line[2]:
            found.append(Problem(where, f"grants {scope}: write without saying why",
                                 f"say on that line what the job writes, e.g. `{scope}: write  # push the image`"))
    return found


def _writes(granted: Any) -> list[str]:
    if not isinstance(granted, dict):
        return []
    return [str(scope) for scope, level in granted.items() if level == "write"]


def _uses_problems(workflow: Workflow, where: Where, uses: str, line: int) -> list[Problem]:
    if uses.startswith(("./", "$/")):
        return []
    if uses.startswith("docker://"):
        return [Problem(where, f"uses {uses}: a container image as an action, which no commit pins",
                        "run the tool in a `run:` step, or use an action pinned to a commit SHA")]
    what = "reusable workflow" if "/.github/workflows/" in uses else "action"
    if not _PINNED.match(uses):
        return [Problem(where, f"uses {uses}, a {what} not pinned to a full commit SHA",
                        "pin it: owner/repo[/path]@<40-hex SHA> # vX.Y.Z")]
    lines = workflow.text.splitlines()
    text = next((candidate for candidate in lines[line - 1:] if uses in candidate), "")
    if not _VERSION_COMMENT.search(text):
        return [Problem(where, f"uses {uses} without its version in a comment", "add the release it is, e.g. `# v7.0.1`")]
    return []
