"""zizmor, the GitHub Actions security auditor, run on workflow files.

It runs offline (no audit that asks GitHub's API), with the pedantic persona
(code smells included), and with no configuration file: the only way to
silence a finding is an inline `# zizmor: ignore[audit]` comment in the
workflow, next to the reason. Findings come back as typed records parsed
from its JSON report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import process
from ..core.errors import CommandFailed, ToolMissing

log = logging.getLogger(__name__)

ARGS = ["--offline", "--persona", "pedantic", "--no-config", "--no-exit-codes", "--no-progress", "--color", "never",
        "--quiet", "--format", "json"]
INSTALL = "pip install zizmor (it is in the [test] extra)"


@dataclass(frozen=True)
class Finding:
    path: str  # as zizmor names the file
    line: int  # 1-based
    audit: str  # zizmor's audit id, e.g. excessive-permissions
    what: str  # its description, with the annotation of the primary location
    severity: str
    url: str


def version() -> str | None:
    """zizmor's version, or None when it is not installed."""
    try:
        return process.run("zizmor", ["--version"]).output.split()[-1]
    except ToolMissing:
        return None


def audit(files: Sequence[Path]) -> list[Finding]:
    """Every finding zizmor has on `files` that no inline comment ignores.

    zizmor skips, with a warning, a file that fails GitHub's schema: the schema
    check reports those.
    """
    if not files:
        return []
    try:
        output = process.run("zizmor", [*ARGS, *map(str, files)]).output
    except ToolMissing as exc:
        raise ToolMissing(exc.message, INSTALL) from None
    except CommandFailed as exc:
        if "no inputs collected" in exc.output:
            return []  # every file failed its schema check, which names them itself
        raise CommandFailed(f"zizmor could not audit the workflows: {exc.message}", "run it by hand: zizmor --offline FILE",
                            argv=exc.argv, exit_code=exc.returncode, output=exc.output) from None
    return [finding for item in _report(output) if (finding := _finding(item)) is not None]


def _report(output: str) -> list[dict[str, Any]]:
    """The JSON array in its output (warnings about skipped files may come first)."""
    start = output.find("[")
    if start < 0:
        return []
    report, _ = json.JSONDecoder().raw_decode(output[start:])
    return report if isinstance(report, list) else []


def _finding(item: dict[str, Any]) -> Finding | None:
    if item.get("ignored"):
        return None
    locations = item.get("locations") or [{}]
    primary = next((loc for loc in locations if loc.get("symbolic", {}).get("kind") == "Primary"), locations[0])
    symbolic = primary.get("symbolic", {})
    path = symbolic.get("key", {}).get("Local", {}).get("verbatim_path", "?")
    row = primary.get("concrete", {}).get("location", {}).get("start_point", {}).get("row", -1)
    annotation = symbolic.get("annotation", "")
    what = item.get("desc", "") + (f" ({annotation})" if annotation else "")
    return Finding(path, int(row) + 1, str(item.get("ident", "?")), what,
                   str(item.get("determinations", {}).get("severity", "")), str(item.get("url", "")))
