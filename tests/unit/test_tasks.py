"""tasks.py is the user's manual: every task has a summary and every flag a help line."""

import inspect

import tasks
from tests.conftest import invoke


def test_every_task_has_a_summary_and_every_flag_help():
    for name, task in tasks.ns.tasks.items():
        assert task.__doc__ and task.__doc__.strip().splitlines()[0].endswith("."), name
        parameters = [p for p in inspect.signature(task.body).parameters if p != "c"]
        documented = {key.replace("-", "_") for key in task.help}
        assert set(parameters) <= documented, f"{name}: no help for {set(parameters) - documented}"


def test_invoke_list_shows_every_task():
    listed = invoke("--list").stdout
    for name in tasks.ns.task_names:
        assert f"  {name} " in listed or listed.rstrip().endswith(name), name
