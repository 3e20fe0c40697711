"""The error family's one-line form and the process runner's failure reports."""

import pytest

from ci.core import process
from ci.core.errors import CommandFailed, ToolkitError, ToolMissing


def test_line_joins_message_and_hint():
    assert ToolkitError("it broke", "do this").line() == "it broke; do this"
    assert ToolkitError("it broke").line() == "it broke"


def test_missing_program_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissing) as missing:
        process.run("skopeo", ["--version"])
    assert missing.value.line() == "skopeo is not on PATH; apt-get install skopeo, or add its directory to PATH"


def test_failed_command_keeps_the_tail_and_names_the_exit_code():
    with pytest.raises(CommandFailed) as failure:
        process.run("sh", ["-c", "for i in $(seq 1 50); do echo line $i; done; echo 'the reason' >&2; exit 3"])
    assert failure.value.line() == "sh failed (exit 3): the reason"
    assert failure.value.details.splitlines()[-1] == "the reason"
    assert len(failure.value.details.splitlines()) == 20


def test_output_is_streamed_line_by_line():
    seen = []
    result = process.run("sh", ["-c", "echo one; echo two"], on_line=seen.append)
    assert seen == ["one", "two"]
    assert result.output == "one\ntwo\n"
