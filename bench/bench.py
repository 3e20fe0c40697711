#!/usr/bin/env python3
"""Benchmark: the toolkit against the seed's shell flow, side by side, in one run.

Both flows build the same benchmark image (tests/fixtures/bench/images.nix:
about 30 store paths and 60 MB, the page in its own small path) with the same
Dockerfiles, the same Debian-made builder and the same stand-in package set,
on the same engine. What differs is the orchestration:

  seed     the seed's build-cache.sh and build-web.sh, as shell commands:
           docker build nix-base and nix-cache; docker build of web.Dockerfile
           with a random tag, `docker run … /result | docker load`, docker rmi,
           docker tag latest; docker tag + docker push to publish.
  toolkit  invoke build-cache, invoke build-web, invoke push.

Situations: cold (no cache image), warm after a one-line page change, no-op
(nothing changed), push after a one-line page change, and signed push: the
same push signed; the seed's flow then runs `cosign sign` on what docker push
wrote (what build-push-action users add), the toolkit signs and attaches the
SBOM and provenance, signed too (push --sign-key). Each runs several
times; the table shows medians and the ratios seed/toolkit. Bytes pushed are
measured as the growth of the registry's blob store, for both flows. The
toolkit's own CPU time (user + system of the invoke process, all its threads;
not the commands it runs: git, skopeo, nor the engine and Nix, which work in
the engine's containers) is what the toolkit adds over the commands it runs;
the table also shows how much of it is not Python's and invoke's own start-up
(`invoke --version`), which any invoke task pays, and how much is not that and
the docker SDK's import (requests, urllib3), which any program on the SDK
pays: what remains is the toolkit's code and work. Python runs as users run
it, caching bytecode, even where the environment sets PYTHONDONTWRITEBYTECODE.

    python3 bench/bench.py [--runs 5] [--cold-runs 3] [--markdown bench/results.md]

Needs what the tests need (bash .ci/setup). It starts its own registry on a
free loopback port and removes the images it makes, not the Debian builder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
PARTS = (".dockerignore", "images", "nix", "tests/nixpkgs", "tests/fixtures")
PKGS, IMAGES, PAGE = "tests/nixpkgs", "tests/fixtures/bench/images.nix", "tests/fixtures/bench/index.html"
BASE, CACHE = "bench-nix-base:latest", "bench-nix-cache:latest"
DOCKER = "/usr/bin/docker"
console = Console(stderr=True)


@dataclass
class Sample:
    seconds: float
    cpu: float = 0.0  # the toolkit's: user + system time of the invoke process itself
    derivations: int = 0
    bytes_pushed: int = 0  # growth of the registry's blob store: layers, config and manifest
    layer_bytes_pushed: int = 0  # of which layer blobs
    changed_layers_bytes: int = 0  # compressed size of the layers the registry did not have


@dataclass
class Situation:
    name: str
    seed: list[Sample] = field(default_factory=list)
    toolkit: list[Sample] = field(default_factory=list)


def sh(command: str, *, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a shell command (the seed's flow is shell); its output, or exit on failure."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env={**environment, **(env or {})},
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench: `{command}` failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def timed(command: str, **kwargs) -> tuple[float, float, str]:
    """Wall time, CPU time of the processes it started, output."""
    before, start = _children_cpu(), time.perf_counter()
    output = sh(command, **kwargs)
    return time.perf_counter() - start, _children_cpu() - before, output


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def derivations_built(log: str) -> int:
    return len(re.findall(r"building '/nix/store/[^']+\.drv'", log))


class Project:
    """A copy of the project's build inputs, whose page the benchmark edits."""

    def __init__(self, directory: Path) -> None:
        self.root = directory
        for part in PARTS:
            source, target = ROOT / part, directory / part
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("result*", "__pycache__"))
            else:
                shutil.copy2(source, target)
        # A context of its own: the benchmark's images then share no ID (and no
        # build cache) with images other runs made from this repository.
        (directory / "nix" / ".bench").write_text("the benchmark's copy of the project\n")
        self.edits = 0

    def change_page(self) -> None:
        """A one-line change to the page."""
        self.edits += 1
        with (self.root / PAGE).open("a") as page:
            page.write(f"<!-- edit {self.edits} -->\n")


class SeedFlow:
    """The seed's scripts, with this project's Dockerfiles and build arguments."""

    def __init__(self, project: Project, builder: str) -> None:
        self.project = project
        self.args = f"--build-arg PKGS={PKGS} --build-arg IMAGES={IMAGES}"
        self.builder = builder

    def build_cache(self) -> tuple[float, float, str]:  # build-cache.sh
        return timed(
            f"{DOCKER} build {self.args} --build-arg BUILDER_IMAGE={self.builder} -f images/nix-base.Dockerfile -t {BASE} . "
            f"&& {DOCKER} build {self.args} --build-arg BASE_IMAGE={BASE} -f images/nix-cache.Dockerfile -t {CACHE} .",
            cwd=self.project.root, env={"DOCKER_BUILDKIT": "0"})

    def build_web(self) -> tuple[float, float, str]:  # build-web.sh
        return timed(
            'TAG="$(date --utc --iso-8601)-$(od -An -N4 -tx4 /dev/urandom | tr -d " ")"\n'
            f'{DOCKER} build {self.args} --build-arg CACHE_IMAGE={CACHE} -f images/web.Dockerfile -t "builder:$TAG" .\n'
            f'loaded=$({DOCKER} run --rm "builder:$TAG" /result | {DOCKER} load)\n'
            f'{DOCKER} rmi "builder:$TAG" >/dev/null\n'
            f'{DOCKER} tag "${{loaded#Loaded image: }}" web:latest\n'
            'echo "$loaded"',
            cwd=self.project.root, env={"DOCKER_BUILDKIT": "0"})

    def push(self, target: str) -> tuple[float, float, str]:
        return timed(f"{DOCKER} tag web:latest {target} && {DOCKER} push {target}", cwd=self.project.root)

    def signed_push(self, target: str, key: Path) -> tuple[float, float, str]:
        return timed(f"{DOCKER} tag web:latest {target} && {DOCKER} push {target} && "
                     f"cosign sign --yes --tlog-upload=false --allow-insecure-registry --key {key} "
                     f"$({DOCKER} inspect --format '{{{{index .RepoDigests 0}}}}' {target})",
                     cwd=self.project.root, env={"COSIGN_PASSWORD": KEY_PASSWORD})


# The passphrase of the benchmark's throw-away cosign key pair.
KEY_PASSWORD = "bench"


class Toolkit:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.env = {
            "INVOKE_PROJECT_ROOT": str(project.root), "INVOKE_WEB_PKGS": PKGS, "INVOKE_WEB_IMAGES": IMAGES,
            "INVOKE_BUILDER_FROM_DEBIAN": "1", "INVOKE_BUILDER_BASE": BASE, "INVOKE_BUILDER_CACHE": CACHE,
            "COSIGN_PASSWORD": KEY_PASSWORD,
        }

    def invoke(self, *args: str, first: str = "") -> tuple[float, float, str]:
        """Wall time, the invoke process's own CPU time, output; `first` is Python run before invoke."""
        with tempfile.NamedTemporaryFile("r") as cpu:
            seconds, _, output = timed(shlex.join([sys.executable, "-c", first + OWN_CPU, cpu.name, *args]),
                                       cwd=ROOT, env=self.env)
            return seconds, float(cpu.read()), output


# `python -m invoke ARGS`, which then writes its own CPU time (every thread's; not its
# children's) to the file named first.
OWN_CPU = ("import atexit, resource, runpy, sys; out = sys.argv.pop(1); sys.argv[0] = 'invoke'; "
           "atexit.register(lambda: open(out, 'w').write(str(sum(resource.getrusage(resource.RUSAGE_SELF)[:2])))); "
           "runpy.run_module('invoke', run_name='__main__', alter_sys=True)")


@contextlib.contextmanager
def registry(directory: Path) -> Iterator[tuple[str, Path]]:
    """A docker-registry of the benchmark's own, so that its blob store can be measured."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yml").write_text(json.dumps({
        "version": 0.1, "storage": {"filesystem": {"rootdirectory": str(directory / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    server = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", directory / "data"
    finally:
        server.terminate()
        server.wait(10)


def new_layers(reference: str, before: set[str]) -> dict[str, int]:
    """Digest and compressed size of the layers of `reference` the registry did not have before."""
    manifest = json.loads(sh(f"skopeo inspect --raw --tls-verify=false docker://{reference}", cwd=ROOT))
    return {layer["digest"]: layer["size"] for layer in manifest["layers"] if layer["digest"] not in before}


def registry_blobs(storage: Path) -> dict[str, int]:
    blobs = storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}": p.stat().st_size for p in blobs.rglob("data")} if blobs.exists() else {}


def remove_images(*references: str) -> None:
    subprocess.run(f"{DOCKER} rmi -f {' '.join(references)} >/dev/null 2>&1 || true", shell=True)


def forget_cache() -> None:
    """Cold: no cache image, so no docker layer cache above the builder either.

    The images go by ID, with every tag they have (a test run may have tagged
    the same image nix-cache:latest), so that no cached build step survives.
    """
    ids = sh(" && ".join(f"{DOCKER} images -q {name}" for name in (BASE, CACHE, "web")), cwd=ROOT).split()
    ids = sorted(set(ids))
    remove_images(*ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each warm, no-op and push situation")
    parser.add_argument("--cold-runs", type=int, default=3, help="runs of the cold situation")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    parser.add_argument("--only-push", action="store_true",
                        help="only the push and signed push situations (a reduced run)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nix-ci-bench-") as work:
        work_dir = Path(work)
        project = Project(work_dir / "project")
        toolkit = Toolkit(project)
        builder = sh(f"{sys.executable} -c 'from ci import debian; print(debian.builder_image().id)'", cwd=ROOT).split()[-1]
        seed = SeedFlow(project, builder)
        names = ("push", "signed push") if options.only_push else ("cold", "warm", "no-op", "push", "signed push")
        situations = {name: Situation(name) for name in names}
        key = work_dir / "cosign.key"
        sh(f"cosign generate-key-pair --output-key-prefix {work_dir / 'cosign'}", cwd=ROOT,
           env={"COSIGN_PASSWORD": KEY_PASSWORD})

        start_up = StartUp(statistics.median(toolkit.invoke("--version")[1] for _ in range(9)),
                           statistics.median(toolkit.invoke("--version", first="import docker; ")[1] for _ in range(9)))
        console.print(f"cold: {options.cold_runs} runs of each flow")
        for _ in range(0 if options.only_push else options.cold_runs):
            for flow in ("seed", "toolkit"):
                forget_cache()
                if flow == "seed":
                    cache_s, cache_cpu, cache_log = seed.build_cache()
                    web_s, web_cpu, web_log = seed.build_web()
                else:
                    cache_s, cache_cpu, cache_log = toolkit.invoke("build-cache")
                    web_s, web_cpu, web_log = toolkit.invoke("build-web")
                getattr(situations["cold"], flow).append(
                    Sample(cache_s + web_s, max(cache_cpu, web_cpu), derivations_built(cache_log + web_log)))

        console.print(f"warm and no-op: {options.runs} runs of each flow")
        for _ in range(0 if options.only_push else options.runs):
            for flow, build in (("seed", seed.build_web), ("toolkit", lambda: toolkit.invoke("build-web"))):
                project.change_page()
                seconds, cpu, log = build()
                getattr(situations["warm"], flow).append(Sample(seconds, cpu, derivations_built(log)))
                seconds, cpu, log = build()
                getattr(situations["no-op"], flow).append(Sample(seconds, cpu, derivations_built(log)))

        if options.only_push:  # the cache image the cold situation would have made
            toolkit.invoke("build-cache")
        console.print(f"push: {options.runs} runs of each flow")
        with registry(work_dir / "registry") as (address, storage):
            for run in range(options.runs + 1):
                for situation, flow in (("push", "seed"), ("push", "toolkit"), ("signed push", "seed"),
                                        ("signed push", "toolkit")):
                    project.change_page()
                    (seed.build_web if flow == "seed" else lambda: toolkit.invoke("build-web"))()
                    target = f"{address}/{flow}{'-signed' if situation == 'signed push' else ''}/web:run-{run}"
                    before = registry_blobs(storage)
                    if flow == "seed":
                        seconds, cpu, _ = seed.push(target) if situation == "push" else seed.signed_push(target, key)
                    else:
                        signing = ["--sign-key", str(key)] if situation == "signed push" else []
                        seconds, cpu, _ = toolkit.invoke("push", "web", "--to", f"docker://{target}", *signing)
                    if run == 0:
                        continue  # the first push of each flow fills its repository
                    after = registry_blobs(storage)
                    added = {digest: size for digest, size in after.items() if digest not in before}
                    changed = new_layers(target, set(before))
                    getattr(situations[situation], flow).append(Sample(
                        seconds, cpu, 0, sum(added.values()), sum(added.get(d, 0) for d in changed), sum(changed.values())))
        forget_cache()
        remove_images(*[f"{address}/{flow}{suffix}/web:run-{run}" for flow in ("seed", "toolkit")
                        for suffix in ("", "-signed") for run in range(options.runs + 1)])

    report(situations, start_up, options.markdown)


def median(samples: list[Sample], attribute: str) -> float:
    return statistics.median(getattr(s, attribute) for s in samples)


@dataclass
class StartUp:
    """CPU time any invoke task pays before its own code runs (`invoke --version`), and with the docker SDK imported."""

    invoke: float
    with_sdk: float


def report(situations: dict[str, Situation], start_up: StartUp, markdown: Path | None) -> None:
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}, Linux {platform.release()}, "
               f"Docker {sh(DOCKER + ' version --format {{.Server.Version}}', cwd=ROOT).strip()}")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    header = ["situation", "runs", "seed (s)", "toolkit (s)", "seed/toolkit", "toolkit's own CPU per task (s)",
              "of which past Python and invoke's start-up (s)", "and past the docker SDK's import (s)",
              "derivations built (seed / toolkit)",
              "bytes pushed, all (seed / toolkit)", "layer bytes pushed (seed / toolkit)",
              "changed layers, compressed (seed / toolkit)"]
    rows = []
    for situation in situations.values():
        seed_s, tool_s = median(situation.seed, "seconds"), median(situation.toolkit, "seconds")
        pushed = layers = changed = "-"
        if situation.name in ("push", "signed push"):
            pushed, layers, changed = (
                f"{median(situation.seed, a):,.0f} / {median(situation.toolkit, a):,.0f}"
                for a in ("bytes_pushed", "layer_bytes_pushed", "changed_layers_bytes"))
        cpu = median(situation.toolkit, "cpu")
        own_cpu, past_start, past_sdk = f"{cpu:.2f}", f"{cpu - start_up.invoke:.2f}", f"{cpu - start_up.with_sdk:.2f}"
        rows.append([situation.name, str(len(situation.toolkit)), f"{seed_s:.2f}", f"{tool_s:.2f}",
                     f"{seed_s / tool_s:.1f}x", own_cpu, past_start, past_sdk,
                     f"{median(situation.seed, 'derivations'):.0f} / {median(situation.toolkit, 'derivations'):.0f}",
                     pushed, layers, changed])
    table = Table(title=f"Medians, {date}: {machine}")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if markdown:
        lines = [f"Medians measured on {date}, {machine}. Python and invoke's start-up "
                 f"(`invoke --version`): {start_up.invoke:.2f} s of CPU; with the docker SDK imported too: "
                 f"{start_up.with_sdk:.2f} s.", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        markdown.write_text("\n".join(lines) + "\n")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
