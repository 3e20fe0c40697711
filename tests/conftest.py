"""Shared test helpers: running the toolkit's command line as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The stand-in package set and the fixture images file (see tests/nixpkgs, tests/fixtures).
FIXTURE_CONFIG = {
    "INVOKE_WEB_PKGS": "tests/nixpkgs",
    "INVOKE_WEB_IMAGES": "tests/fixtures/images.nix",
    "INVOKE_BUILDER_FROM_DEBIAN": "1",
}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The last line on stderr: where the one-line error message must be."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def invoke(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> Outcome:
    """Run `invoke ARGS` in the repository with the fixture package set."""
    completed = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env={**os.environ, **FIXTURE_CONFIG, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Outcome(completed.returncode, completed.stdout, completed.stderr)


def assert_one_line_error(outcome: Outcome, *phrases: str) -> None:
    """A failure the user caused: non-zero exit, no traceback, a line naming the problem."""
    assert outcome.code != 0, outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.error_line.startswith("error: "), outcome.stderr
    for phrase in phrases:
        assert phrase in outcome.error_line, outcome.error_line


def processes(program: str, marker: str) -> list[int]:
    """PIDs of `program` processes whose command line mentions `marker` (a path unique to the test)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(program.encode()) and any(marker.encode() in a for a in argv):
            found.append(int(pid))
    return found


@pytest.fixture
def toolkit():
    return invoke


def pytest_terminal_summary(terminalreporter, config):
    """The seed of pytest-randomly's test order, at the end of the output, where a failure is read, and under -q
    too (its own line is in the header, which -q leaves out)."""
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"Using --randomly-seed={seed} (pass it to run the tests in this order again)")
