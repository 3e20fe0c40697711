"""Several toolkit runs at once on one engine and one registry: each run's tags
name its own image, and every digest a push prints is the one served."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import FIXTURE_CONFIG, ROOT, Outcome
from tests.integration.conftest import project_copy, served_page


def invoke_in(args: list[str], env: dict[str, str]) -> Outcome:
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **FIXTURE_CONFIG, "NO_COLOR": "1", **env}, timeout=900)
    return Outcome(done.returncode, done.stdout, done.stderr)


def page(number: int) -> str:
    return f"<p>concurrent page {number}</p>\n"


def build_at_once(engine, numbers: range, tmp_path) -> tuple[dict[int, str], str]:
    """Build one variant per number, all at once; returns each run's identity tag, and the image
    web:latest names once they are all done."""
    projects = {n: project_copy(tmp_path / f"project-{n}", page(n)) for n in numbers}
    with ThreadPoolExecutor(len(projects)) as pool:
        outcomes = dict(zip(projects, pool.map(lambda n: invoke_in(["build-web"], projects[n]), projects), strict=True))
    for n, outcome in outcomes.items():
        assert outcome.code == 0, (n, outcome.stderr[-2000:])
    return {n: outcome.stdout.split()[0] for n, outcome in outcomes.items()}, engine.images.get("web:latest").id


def forget(engine, tags) -> None:
    """web:latest back to the repository's page (for whoever uses it next), then the variants' own tags
    removed: the variants go with them."""
    assert invoke_in(["build-web"], {}).code == 0
    for tag in tags:
        engine.images.remove(tag, noprune=True)


@pytest.fixture(scope="module")
def variants(engine, web_image, tmp_path_factory):
    """Four variants built at once: their identity tags, and what web:latest named right after."""
    built, latest = build_at_once(engine, range(4), tmp_path_factory.mktemp("four"))
    yield built, latest
    forget(engine, built.values())


def test_four_builds_at_once_each_tag_their_own_image(engine, variants):
    built, latest = variants
    assert len(set(built.values())) == 4
    for number, tag in built.items():
        assert served_page(engine, tag) == page(number)
    assert latest in {engine.images.get(tag).id for tag in built.values()}


def test_eight_pushes_at_once_print_what_the_registry_serves(engine, variants, registry, tmp_path):
    more, _ = build_at_once(engine, range(4, 8), tmp_path)
    try:
        images = {**variants[0], **more}
        jobs = {n: ["push", tag, "--to", f"docker://{registry}/test-concurrent/web-{n}:v1"] for n, tag in images.items()}
        with ThreadPoolExecutor(8) as pool:
            outcomes = dict(zip(jobs, pool.map(lambda n: invoke_in(jobs[n], {}), jobs), strict=True))
        for n, outcome in outcomes.items():
            assert outcome.code == 0, (n, outcome.stderr[-2000:])
            destination, digest = outcome.stdout.split()[:2]
            served = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", destination],
                                    capture_output=True, check=True).stdout
            assert f"sha256:{hashlib.sha256(served).hexdigest()}" == digest
            config = json.loads(subprocess.run(["skopeo", "inspect", "--config", "--raw", "--tls-verify=false",
                                                destination], capture_output=True, check=True).stdout)
            assert config["rootfs"]["diff_ids"] == engine.images.get(images[n]).attrs["RootFS"]["Layers"]
    finally:
        forget(engine, more.values())
