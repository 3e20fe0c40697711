"""nix-ci, the installed command: the tasks of tasks.py as a program of their own.

It is invoke's `Program` given the task collection as its namespace (invoke's
"reusing Invoke's CLI module as a distinct binary"), so every task, flag and
configuration key is the same as `invoke …` in this repository. Two things
differ, because the tasks no longer sit in the project:
- the project is the current directory, unless `project.root` says otherwise;
- the project's configuration, invoke.yaml (or .yml, .json, .py), is read from
  the current directory, with INVOKE_* variables over it, as invoke does.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

from invoke import Program

NAME = "nix-ci"


class _Program(Program):
    def parse_collection(self) -> None:
        super().parse_collection()
        # invoke reads a project's config file beside a tasks.py it loads; a
        # namespace given to Program has none, so read the current directory's.
        self.config.set_project_location(os.getcwd())
        self.config.load_project()


def program() -> Program:
    from nix_ci import tasks  # tasks.py, as the wheel carries it

    tasks.ns.configure({"project": {"root": os.getcwd()}})
    try:
        release = version("nix-image-toolkit")
    except PackageNotFoundError:
        release = "unknown"
    return _Program(name=NAME, binary=NAME, namespace=tasks.ns, version=release)


def main() -> None:
    program().run()
