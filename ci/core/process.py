"""The one place where the toolkit starts a process.

Every external program (skopeo, umoci, nix, mmdebstrap, ...) runs through
`run`, which finds the binary on PATH, logs the command, keeps its output, and
turns a failure into a CommandFailed carrying the tail of that output. A
program never outlives the toolkit's interest in it: on Ctrl-C or any other
exception it is stopped. The Docker engine is not a process: ci.tools.docker talks
to it through the SDK.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sh

from .credentials import PASSWORD_VARIABLE
from .errors import CommandFailed, ToolMissing

log = logging.getLogger(__name__)

# How to get each program the toolkit runs, for the "not on PATH" message.
INSTALL_HINTS = {
    "skopeo": "apt-get install skopeo",
    "umoci": "apt-get install umoci",
    "nix-build": "apt-get install nix-bin",
    "nix-instantiate": "apt-get install nix-bin",
    "nix-store": "apt-get install nix-bin",
    "mmdebstrap": "apt-get install mmdebstrap",
    "debootstrap": "apt-get install debootstrap",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "qemu-img": "apt-get install qemu-utils",
    "mkfs.vfat": "apt-get install dosfstools",
    "fsck.vfat": "apt-get install dosfstools",
    "mcopy": "apt-get install mtools",
    "mdir": "apt-get install mtools",
    "xorriso": "apt-get install xorriso",
    "cosign": "bash .ci/setup (it installs Debian 13's cosign)",
}

TAIL_LINES = 20

# Seconds a program gets to end after SIGTERM, once the toolkit stops waiting for it.
STOP_TIMEOUT = 5

# Never passed on: programs get credentials through files (ci.tools.skopeo.auth_file).
WITHHELD_VARIABLES = (PASSWORD_VARIABLE,)


@dataclass(frozen=True)
class Completed:
    """A finished process: what ran and what it printed (stdout and stderr merged)."""

    argv: list[str]
    output: str

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def which(program: str) -> str:
    """The absolute path of `program`, or ToolMissing saying how to install it."""
    path = shutil.which(program)
    if path is None:
        hint = INSTALL_HINTS.get(program, f"install {program}")
        raise ToolMissing(f"{program} is not on PATH", f"{hint}, or add its directory to PATH")
    return path


def run(
    program: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Completed:
    """Run `program args...`, logging the command; raise CommandFailed on a non-zero exit.

    `env` adds to the current environment, less WITHHELD_VARIABLES (secrets
    go in files, never in args). `on_line` receives each output line as it
    arrives, for progress; an error it raises is raised once the program
    ends. When the toolkit stops waiting (Ctrl-C), the program is stopped; a
    program ended by SIGINT (Ctrl-C sent to the whole process group) raises
    KeyboardInterrupt.
    """
    argv = [which(program), *args]
    log.debug("$ %s", shlex.join([program, *args]))
    lines: list[str] = []
    failures: list[Exception] = []
    kill_later: list[threading.Timer] = []

    # sh passes the running command to a callback with three parameters; it calls it in its reader thread.
    def take(line: str, _stdin: object, running: sh.RunningCommand) -> None:
        lines.append(line)
        if on_line is None or failures:
            return
        try:
            on_line(line.rstrip("\n"))
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread, once the program is stopped
            failures.append(exc)
            running.signal(signal.SIGTERM)
            kill_later.append(threading.Timer(STOP_TIMEOUT, running.signal, [signal.SIGKILL]))
            kill_later[0].start()

    environment = {name: value for name, value in {**os.environ, **(env or {})}.items() if name not in WITHHELD_VARIABLES}
    process = None
    try:
        # This thread waits and sh's reader thread hands over the lines. sh's
        # iterator (_iter) can stall a second after a short program ends: its
        # reader waits for an exit that only the waiting thread records. An
        # empty stdin spares the 0.1 s poll of sh's stdin thread.
        with open(os.devnull, "rb") as nothing:
            process = sh.Command(argv[0])(
                *argv[1:],
                _bg=True,
                _bg_exc=False,  # the error is raised here, not printed by sh's thread
                _in=nothing,
                _out=take,
                _err_to_out=True,
                _tty_out=False,  # no pager, no colour codes in what we keep
                _env=environment,
                _cwd=cwd,
            )
            process.wait()
    except sh.ErrorReturnCode as exc:
        if failures:
            raise failures[0] from None
        raise _failed(program, args, exc, "".join(lines)) from None
    finally:
        for timer in kill_later:
            timer.cancel()
        if process is not None:
            _stop(process, program)
    if failures:
        raise failures[0]
    return Completed([program, *args], "".join(lines))


def _failed(program: str, args: Sequence[str], exc: sh.ErrorReturnCode, output: str) -> Exception:
    if isinstance(exc, sh.SignalException):
        if exc.exit_code == -signal.SIGINT:
            return KeyboardInterrupt()
        return CommandFailed(f"{program} was killed by signal {-exc.exit_code}",
                             argv=[program, *args], exit_code=exc.exit_code, output=output)
    last = _last_line(output) or f"exit code {exc.exit_code}"
    return CommandFailed(f"{program} failed (exit {exc.exit_code}): {last}",
                         argv=[program, *args], exit_code=exc.exit_code, output=output)


def _stop(process: sh.RunningCommand, program: str) -> None:
    """End a program still running: SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
    if not process.is_alive():
        return
    log.debug("stopping %s (pid %d)", program, process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except sh.TimeoutException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(sh.ErrorReturnCode):
            process.wait()
    except sh.ErrorReturnCode:
        pass  # it ended, as asked


def _last_line(output: str) -> str:
    for line in reversed(output.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


def run_attached(program: str, args: Sequence[str]) -> int:
    """Run `program args...` on the user's terminal and return its exit code.

    For interactive programs such as a VM's serial console: stdin, stdout and
    stderr are the toolkit's own, so nothing is kept. The command is logged
    like `run`'s. SIGTERM and SIGHUP sent to the toolkit are passed on to the
    program, so that it never outlives the toolkit.
    """
    argv = [which(program), *args]
    log.debug("$ %s", shlex.join([program, *args]))
    child = subprocess.Popen(argv)
    passed_on = (signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, lambda number, _frame: child.send_signal(number)) for number in passed_on}
    try:
        return child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if child.poll() is None:  # the toolkit itself is stopping (Ctrl-C, an exception)
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
