"""tasks.py is the user's manual: every task has a summary and every flag a help line."""

import importlib.util
import inspect

import tasks
from tests.conftest import ROOT, invoke


def fresh_tasks():
    """tasks.py executed anew, under another module name: invoke pops each flag's help out of
    task.help once it has made the task's parser (as any test that parses a command line with
    tasks.ns does), so the help of the imported module depends on which tests ran before."""
    spec = importlib.util.spec_from_file_location("tasks_as_written", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_task_has_a_summary_and_every_flag_help():
    for name, task in fresh_tasks().ns.tasks.items():
        assert task.__doc__ and task.__doc__.strip().splitlines()[0].endswith("."), name
        parameters = [p for p in inspect.signature(task.body).parameters if p != "c"]
        documented = {key.replace("-", "_") for key in task.help}
        assert set(parameters) <= documented, f"{name}: no help for {set(parameters) - documented}"


def test_invoke_list_shows_every_task():
    listed = invoke("--list").stdout
    for name in tasks.ns.task_names:
        assert f"  {name} " in listed or listed.rstrip().endswith(name), name
