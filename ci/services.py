"""Runners: one way to start the nginx runner, the services under s6, or any
other, in the foreground or as a container.

A runner is a Nix derivation with `bin/run` (nix/runner.nix's `run`,
nix/services.nix's `services-run`). In the foreground the toolkit builds it
with the host's Nix and runs `bin/run` on the terminal until Ctrl-C. As a
container it builds the runner's image with the web image's flow (an image
attribute of an images file, streamed into the engine; see ci.build), starts
it with its ports published, and returns once every port answers HTTP.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import containers
from .core import process
from .core.errors import BuildFailed, CommandFailed, ConfigError, ToolkitError, ToolMissing
from .tools import docker, nix

log = logging.getLogger(__name__)

NO_HOST_NIX = "install Nix on this machine (apt-get install nix-bin), or start it as a container: --container"
NEWER_HOST_NIX = ("install Nix {minimum} or newer on this machine (Debian 13's nix-bin is 2.26), "
                  "or start it as a container: --container")


@dataclass(frozen=True)
class StartEntry:
    """One entry of the `start` configuration."""

    name: str
    file: str  # the Nix file of the runner, relative to the project
    attr: str | None  # its attribute; None: the file itself is the runner
    images: str  # the images file holding its image
    image: str | None  # the image attribute there, also the image's name; None: no container
    ports: tuple[tuple[int, int], ...]  # (host port, container port)
    container: str  # the container's name
    host: str  # the address ports are published on
    timeout: float  # seconds to wait for every port to answer


def entry(name: str, settings: Mapping[str, Any] | None, *, known: list[str], images: str,
          publish: list[str] | None = None) -> StartEntry:
    """The runner `name` from its settings (a `start` entry); `images` is the default images
    file, `publish` (HOST:CONTAINER) replaces the configured ports."""
    if not settings:
        raise ConfigError(f"unknown runner '{name}'", f"known runners: {', '.join(known)} (start in invoke.yaml)")
    missing = [key for key in ("file", "ports") if settings.get(key) is None]
    if missing:
        raise ConfigError(f"the runner {name} has no {' nor '.join(missing)}", f"set start.{name}.{missing[0]} in invoke.yaml")
    return StartEntry(
        name=name,
        file=settings["file"],
        attr=settings.get("attr") or None,
        images=settings.get("images") or images,
        image=settings.get("image") or None,
        ports=parse_ports(publish, "--publish") if publish else parse_ports(settings["ports"], f"start.{name}.ports"),
        container=settings.get("container") or name,
        host=settings.get("host") or "127.0.0.1",
        timeout=float(settings.get("timeout") or 30),
    )


def parse_ports(specs: list[str] | tuple[str, ...], what: str) -> tuple[tuple[int, int], ...]:
    """HOST:CONTAINER port pairs, as docker run -p writes them (no address)."""
    pairs = []
    for spec in specs:
        match = re.fullmatch(r"(\d{1,5}):(\d{1,5})", str(spec).strip())
        if not match or not all(0 < int(port) < 65536 for port in match.groups()):
            raise ConfigError(f"bad port mapping '{spec}' in {what}", "write HOST:CONTAINER, e.g. 9080:8080")
        pairs.append((int(match[1]), int(match[2])))
    return tuple(pairs)


def build_runner(root: Path, entry: StartEntry, pkgs: str) -> Path:
    """nix-build the runner on this machine; its store path (a GC root under build/runners)."""
    expression = root / entry.file
    if not expression.exists():
        raise ConfigError(f"the runner {entry.name} is {entry.file}, which does not exist under {root}",
                          f"set start.{entry.name}.file in invoke.yaml to a Nix file of the project")
    out_link = root / "build" / "runners" / entry.name
    out_link.parent.mkdir(parents=True, exist_ok=True)
    args = [str(expression), "--arg", "pkgs", f"import {root / pkgs} {{}}", "--out-link", str(out_link)]
    if entry.attr:
        args += ["--attr", entry.attr]
    described = f"{entry.file}{' -A ' + entry.attr if entry.attr else ''}"
    log.info("building the runner %s: nix-build %s", entry.name, described)
    try:
        built = process.run("nix-build", args)
    except ToolMissing as exc:
        raise ToolMissing(f"starting {entry.name} in the foreground needs Nix on this machine: {exc.message}",
                          NO_HOST_NIX) from None
    except CommandFailed as exc:
        problem = nix.machine_problem(exc.output) or nix.too_old(exc.output, f"nix-build {described} on this machine",
                                                                    NEWER_HOST_NIX)
        if problem is not None:
            raise problem from None
        reason = nix.first_error(exc.output) or exc.message
        raise BuildFailed(f"nix-build {described} failed: {reason}",
                          f"fix {entry.file}; the end of the Nix log is above", details=exc.details) from None
    path = Path(built.output.strip().splitlines()[-1])
    if not (path / "bin" / "run").is_file():
        raise ConfigError(f"{described} built {path}, which has no bin/run", "a runner is a derivation with bin/run")
    return path


# How a runner ends when it was told to stop (Ctrl-C, or SIGTERM passed on):
# by the signal itself, or by exiting 128 + its number.
_STOPPED = {0, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


def run_foreground(name: str, path: Path, args: list[str]) -> None:
    """Run `path`/bin/run on this terminal until it stops; ToolkitError unless it was stopped."""
    log.info("running %s/bin/run; Ctrl-C stops it", path)
    code = process.run_attached(str(path / "bin" / "run"), args)
    if code not in _STOPPED:
        how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
        raise ToolkitError(f"the runner {name} {how}", "its output is above")


def start_container(entry: StartEntry, image: str) -> containers.Started:
    """Start `image` as the runner's container; return once each published port answers HTTP."""
    return containers.start(image, name=entry.container, host=entry.host, ports=entry.ports, timeout=entry.timeout,
                            hints=containers.Hints(
                                no_image=f"build it first: invoke start {entry.name} --container",
                                exists=f"stop it with `invoke stop {entry.name}` first",
                                port_taken="stop what uses it, or publish elsewhere: --publish OTHER:{inside}",
                                no_answer="its log is above; check the ports it listens on (start.NAME.ports)"))


@dataclass(frozen=True)
class Stopped:
    seconds: float
    killed: bool  # still running when the grace time was over: the engine killed it


def stop_container(name: str, grace: int) -> Stopped | None:
    """`docker stop` (SIGTERM, SIGKILL after `grace` s) and remove; None when there was none."""
    began = time.monotonic()
    if not docker.remove_container(name, timeout=grace):
        return None
    seconds = time.monotonic() - began
    if seconds >= grace:
        log.warning("warning: %s did not stop within %d s of SIGTERM and was killed: its PID 1 ignores SIGTERM "
                    "(a program without a handler, as PID 1), or under s6 a service outlived its timeoutKill",
                    name, grace)
    return Stopped(seconds, killed=seconds >= grace)
