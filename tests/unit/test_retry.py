"""Retries of registry operations (ci.tools.skopeo.with_retries), which skopeo failures
are worth one, and what ci.core.process does with a program once the toolkit stops
waiting for it. skopeo's messages below are what skopeo 1.9 printed when a
real registry was killed, refused, or the disk filled up."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from ci.core import process
from ci.core.errors import BadReference, CommandFailed, DiskFull, RegistryError, RegistryUnreachable
from ci.tools import skopeo

FAST = skopeo.Retry(attempts=3, first_wait=0.01, max_wait=0.02)


class Flaky:
    """Fails with `error` the first `failures` times it is called, then returns "done"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


UNREACHABLE = RegistryUnreachable("the registry 127.0.0.1:5999 does not answer", "check that it is running")


def test_a_registry_that_comes_back_is_tried_again_with_one_line_per_retry(caplog):
    action = Flaky(2, UNREACHABLE)
    with caplog.at_level(logging.WARNING, logger="ci.tools.skopeo"):
        assert skopeo.with_retries(action, "copying to docker://127.0.0.1:5999/web:1", FAST) == "done"
    assert action.calls == 3
    retries = [record.getMessage() for record in caplog.records]
    assert len(retries) == 2
    assert retries[0].startswith("the registry 127.0.0.1:5999 does not answer while copying to docker://127.0.0.1:5999/web:1;"
                                 " trying again in 0.01 s (try 2 of 3)")
    assert "try 3 of 3" in retries[1] and all("\n" not in line for line in retries)


def test_the_tries_are_bounded_and_the_error_says_how_many():
    action = Flaky(10, UNREACHABLE)
    with pytest.raises(RegistryUnreachable) as failure:
        skopeo.with_retries(action, "reading docker://127.0.0.1:5999/web:1", FAST)
    assert action.calls == 3
    assert failure.value.line() == "the registry 127.0.0.1:5999 does not answer (tried 3 times); check that it is running"


def test_the_default_policy_is_a_few_tries_within_a_few_seconds():
    waits = [min(skopeo.RETRY.first_wait * 2 ** n, skopeo.RETRY.max_wait) for n in range(skopeo.RETRY.attempts - 1)]
    assert 3 <= skopeo.RETRY.attempts <= 5
    assert sum(waits) <= 10


@pytest.mark.parametrize("error", [
    RegistryError("the registry 127.0.0.1:5999 refused the credentials", "log in"),
    RegistryError("docker://127.0.0.1:5999/web:1 does not exist", "check the name and tag"),
    BadReference("'Web' is not a valid image reference"),
    CommandFailed("skopeo failed (exit 1): something else"),
], ids=["credentials", "missing", "reference", "other"])
def test_nothing_but_an_unreachable_registry_is_tried_again(error):
    action = Flaky(1, error)
    with pytest.raises(type(error)):
        skopeo.with_retries(action, "copying", FAST)
    assert action.calls == 1


# Debug lines of a push to a plain-HTTP loopback registry that then failed for another reason: they must not count.
DEBUG_LINES = (
    'time="2026-11-25T19:18:57Z" level=debug msg="Ping https://127.0.0.1:45627/v2/ err Get \\"https://127.0.0.1:45627/v2/\\": '
    'http: server gave HTTP response to HTTPS client (&url.Error{Op:\\"Get\\"})"\n'
    'time="2026-11-25T19:18:57Z" level=debug msg="GET http://127.0.0.1:45627/v2/x/manifests/1: 401 unauthorized"\n'
)


def explained(message: str, name: str = "docker://127.0.0.1:45627/x:1") -> Exception:
    output = f'{DEBUG_LINES}time="2026-11-25T19:18:57Z" level=fatal msg="{message}"\n'
    return skopeo._explain(CommandFailed("skopeo failed (exit 1)", output=output), name)


@pytest.mark.parametrize("message", [
    r'writing blob: Patch \"http://127.0.0.1:45627/v2/x/blobs/uploads/d4538aa2?_state=-EZo\": write tcp '
    r'127.0.0.1:60422->127.0.0.1:45627: write: connection reset by peer',
    r'writing blob: Post \"http://127.0.0.1:45627/v2/x/blobs/uploads/\": EOF',
    r'writing blob: Patch \"http://127.0.0.1:45627/v2/x/blobs/uploads/a947?_state=IZvR\": write tcp '
    r'127.0.0.1:34026->127.0.0.1:45627: use of closed network connection',
    r'writing blob: Put \"http://127.0.0.1:45627/v2/x/blobs/uploads/21db?digest=sha256%3Aa8\": EOF',
    r'initializing destination docker://127.0.0.1:45627/x:1: pinging container registry 127.0.0.1:45627: '
    r'Get \"https://127.0.0.1:45627/v2/\": dial tcp 127.0.0.1:45627: connect: connection refused',
], ids=["reset", "eof-post", "closed", "eof-put", "refused"])
def test_a_registry_that_died_or_is_down_is_unreachable(message):
    error = explained(message)
    assert isinstance(error, RegistryUnreachable)
    assert error.line() == ("the registry 127.0.0.1:45627 does not answer; "
                            "check that it is running and that the host and port are right")


@pytest.mark.parametrize("message, kind, phrase", [
    ("writing blob: initiating layer upload: unauthorized: authentication required", RegistryError, "refused the credentials"),
    (r'pinging container registry nowhere.invalid: Get \"https://nowhere.invalid/v2/\": dial tcp: lookup nowhere.invalid: '
     "no such host", RegistryError, "no such host"),
    ("writing blob: write /mnt/x/.extract-1/layout/blobs/sha256/ab12: no space left on device", DiskFull,
     "no space left on device writing /mnt/x/.extract-1/layout/blobs/sha256/ab12"),
    (r'reading manifest 1 in 127.0.0.1:45627/x: manifest unknown: manifest unknown', RegistryError, "does not exist"),
    ("copying system image from manifest list: something new went wrong", CommandFailed, "skopeo failed"),
], ids=["credentials", "no-such-host", "disk-full", "missing", "other"])
def test_other_failures_are_never_unreachable(message, kind, phrase):
    error = explained(message)
    assert type(error) is kind
    assert phrase in error.line()


def test_a_program_is_stopped_when_the_toolkit_stops_waiting(tmp_path):
    pid_file = tmp_path / "pid"

    def stop_reading(_line: str) -> None:
        raise RuntimeError("the toolkit stops here (as on Ctrl-C)")

    with pytest.raises(RuntimeError):
        process.run("sh", ["-c", f"echo $$ > {pid_file}; echo started; exec sleep 60"], on_line=stop_reading)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # gone, and reaped: not even a zombie
        os.kill(pid, 0)


def test_a_program_that_ignores_sigterm_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "STOP_TIMEOUT", 0.5)
    pid_file = tmp_path / "pid"

    def stop_reading(_line: str) -> None:
        raise RuntimeError("stop")

    started = time.monotonic()
    with pytest.raises(RuntimeError):
        process.run("sh", ["-c", f"trap '' TERM; echo $$ > {pid_file}; echo started; while :; do sleep 0.1; done"],
                   on_line=stop_reading)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_program_ended_by_ctrl_c_is_an_interrupt():
    with pytest.raises(KeyboardInterrupt):
        process.run("sh", ["-c", f"kill -{signal.SIGINT} $$"])


def test_the_registry_password_is_withheld_from_programs(monkeypatch):
    monkeypatch.setenv("REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("REGISTRY_PASSWORD", "hunter2-secret")
    seen = process.run("sh", ["-c", 'echo "user=$REGISTRY_USERNAME password=${REGISTRY_PASSWORD:-none}"']).output
    assert seen.strip() == "user=alice password=none"
