"""The task edge: logging set-up, and the one place errors become exit codes.

Library code logs and raises; only this module prints errors. A
ToolkitError becomes its one line (and the log tail that explains it) and a
non-zero exit, as does a full disk (ENOSPC) and Ctrl-C (`error: interrupted`,
130); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from invoke.exceptions import Exit

from . import github
from .core.errors import NO_SPACE_HINT, DiskFull, ToolkitError

F = TypeVar("F", bound=Callable[..., Any])

# Logs and errors go to stderr, unwrapped so that CI logs stay greppable;
# results (tags, digests, URLs) go to stdout, one per line.


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("ci")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose or os.environ.get("CI_DEBUG") else logging.INFO)
    root.propagate = False


def report_errors(function: F) -> F:
    """Turn ToolkitErrors raised by a task into one line and a non-zero exit."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        title = f"invoke {function.__name__.replace('_', '-')}"
        try:
            with github.group(title):  # on GitHub: the task's log folds
                return function(*args, **kwargs)
        except ToolkitError as exc:
            _fail(exc, title)
        except KeyboardInterrupt:
            raise Exit("error: interrupted", code=130) from None
        except OSError as exc:  # a full disk is no bug, wherever the write was; anything else is
            if exc.errno != errno.ENOSPC:
                raise
            _fail(DiskFull(f"no space left on device{f' writing {exc.filename}' if exc.filename else ''}", NO_SPACE_HINT),
                  title)

    return wrapper  # type: ignore[return-value]


def check_settings(defaults: Mapping[str, Any], project: Path) -> None:
    """Check the configuration files and INVOKE_* variables invoke is about to read (ci.settings),
    as tasks.py is imported; a bad one ends invoke with its one line, before any task or --list."""
    from . import settings

    try:
        settings.check_sources(defaults, project, runtime=_runtime_file())
    except ToolkitError as exc:
        setup_logging()
        _fail(exc, "invoke")


def _runtime_file() -> str | None:
    """The configuration file given with invoke's -f, when invoke's own program is running (the
    invoke command, python -m invoke): it has parsed its own flags before it imports tasks.py."""
    from invoke.main import program

    try:
        value = program.args.config.value
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _fail(exc: ToolkitError, title: str) -> NoReturn:
    if exc.details:
        print(exc.details, file=sys.stderr)
    github.error(exc.line(), title=title)
    raise Exit(f"error: {exc.line()}", code=exc.exit_code) from None


def say(text: str) -> None:
    """A result line for the user, on stdout."""
    github.end_group()  # results stay in sight, outside the folded log
    print(text, flush=True)
