"""The hash-locked requirements: every Python package the toolkit installs,
direct or not, pinned to one version and the sha256 of each of its files.

pyproject.toml pins the direct dependencies; `invoke lock` resolves the rest
with uv (`uv pip compile --generate-hashes`) into requirements.txt (what
using the toolkit needs) and requirements-test.txt (and what its tests
need). The set-up scripts install them with `pip install --require-hashes`,
then the toolkit itself with `--no-deps`, so that nothing unpinned or
altered can slip in. The locks are for Python 3.11 on any platform
(`--universal`), the Python of Debian 12 and of the workflows.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .core import process
from .core.errors import ToolMissing

PYTHON = "3.11"
COMMAND = "invoke lock"  # written into each file's header, as the way to regenerate it

# Each lock file and the pyproject extras it holds.
LOCKS: dict[str, tuple[str, ...]] = {
    "requirements.txt": (),
    "requirements-test.txt": ("test",),
}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class Lock:
    path: Path
    pins: dict[str, str]  # normalised name -> version


def regenerate(root: Path) -> list[Lock]:
    """Resolve pyproject.toml's dependencies (and extras) into each lock file, with hashes."""
    written = []
    for name, extras in LOCKS.items():
        args = ["pip", "compile", "pyproject.toml", "--generate-hashes", "--universal", "--python-version", PYTHON,
                "--custom-compile-command", COMMAND, "--quiet", "--output-file", name]
        for extra in extras:
            args += ["--extra", extra]
        try:
            process.run("uv", args, cwd=str(root))
        except ToolMissing as exc:
            raise ToolMissing(exc.message, "pip install uv (it is in the [test] extra, pinned)") from None
        written.append(read(root / name))
    return written


def read(path: Path) -> Lock:
    """The pins of a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalise(match[1])] = match[2]
    return Lock(path, pins)


def declared(pyproject: Path, extras: tuple[str, ...] = ()) -> dict[str, str]:
    """pyproject.toml's pinned dependencies (and those of `extras`): normalised name -> version."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    return {normalise(m[1]): m[2] for m in map(_PIN.match, requirements) if m}


def normalise(name: str) -> str:
    """PEP 503's name: lowercase, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()
