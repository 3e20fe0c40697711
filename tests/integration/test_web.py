"""build-web, run-web, push and extract, end to end, with nothing mocked:
the real Dockerfiles, the Debian-made builder, Nix, skopeo, umoci, the
engine and the registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import invoke
from tests.integration.conftest import dangling_images, identity_tag, our_containers, project_copy, run_web_settings, served_page
from tests.integration.registries import free_port

PAGE = (Path(__file__).resolve().parent.parent / "fixtures" / "web" / "index.html").read_text()


def serve_and_fetch(engine, image_id: str, port: int) -> requests.Response:
    """run-web the image `image_id` (see run_web_settings), fetch its page, stop-web."""
    with run_web_settings(engine, image_id) as settings:
        outcome = invoke("run-web", "--port", str(port), env=settings)
        try:
            assert outcome.code == 0, outcome.stderr
            assert outcome.stdout.strip() == f"http://127.0.0.1:{port}/"
            assert engine.containers.get(settings["INVOKE_WEB_CONTAINER"]).image.id == image_id
            return requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        finally:
            assert invoke("stop-web", env=settings).code == 0


def test_load_flow_image_serves_the_page_as_an_unprivileged_user(engine, web_image):
    assert any(t.startswith("web:id-") for t in web_image.tags), web_image.tags
    assert web_image.attrs["Config"]["User"] == "101:101"
    # One layer per store path, plus the customisation layer.
    assert len(web_image.attrs["RootFS"]["Layers"]) > 2
    response = serve_and_fetch(engine, web_image.id, free_port())
    assert response.status_code == 200
    assert response.text == PAGE


def test_the_shipped_web_dockerfile_builds_in_one_container_and_makes_no_other_image(engine, web_image, tmp_path):
    page = f"<p>built in one container {uuid.uuid4()}</p>\n"
    images_before = {image.id for image in engine.images.list(all=True)}
    containers_before = {c.id for c in our_containers(engine)}
    try:
        outcome = invoke("build-web", env=project_copy(tmp_path, page))
        assert outcome.code == 0, outcome.stderr[-3000:]
        assert "running web.Dockerfile's RUN steps, then /result in a container of" in outcome.stderr
        assert "Step " not in outcome.stderr  # no docker build
        assert re.search(r"building '/nix/store/\w{32}-webroot\.drv'", outcome.stderr)  # the Nix build's log, as it came
        identity, built = outcome.stdout.split()[:2]
        assert {image.id for image in engine.images.list(all=True)} - images_before == {built}
        assert served_page(engine, identity) == page
        assert {c.id for c in our_containers(engine)} <= containers_before
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the repository's page, for whoever uses it next


def test_a_web_dockerfile_with_other_steps_is_built_by_docker_build(engine, web_image, tmp_path):
    page = f"<p>built by docker build {uuid.uuid4()}</p>\n"
    env = project_copy(tmp_path, page)
    dockerfile = tmp_path / "images" / "web.Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("COPY . /src", "ENV NIX_CI_TEST=1\nCOPY . /src"))
    dangling_before = dangling_images(engine)
    containers_before = {c.id for c in our_containers(engine)}
    try:
        outcome = invoke("build-web", env=env)
        assert outcome.code == 0, outcome.stderr[-3000:]
        assert re.search(r"Step \d/\d : ENV NIX_CI_TEST=1", outcome.stderr)
        assert served_page(engine, identity_tag(outcome)) == page
        assert {c.id for c in our_containers(engine)} <= containers_before
        assert dangling_images(engine) <= dangling_before  # the builder and its steps are gone
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the repository's page, for whoever uses it next


def test_run_web_process_runs_as_uid_101(engine, web_image):
    with run_web_settings(engine, web_image.id) as settings:
        assert invoke("run-web", "--port", str(free_port()), env=settings).code == 0
        try:
            container = engine.containers.get(settings["INVOKE_WEB_CONTAINER"])
            assert container.image.id == web_image.id
            top = container.top(ps_args="-o pid,uid,args")
            uids = {row[1] for row in top["Processes"]}
            assert uids == {"101"}, top
        finally:
            assert invoke("stop-web", env=settings).stdout.strip() == "stopped"
        assert invoke("stop-web", env=settings).stdout.strip() == "not running"


def test_complete_flow_builds_from_scratch_and_serves_the_page(engine, cache_image):
    try:
        outcome = invoke("build-web", "--complete")
        assert outcome.code == 0, outcome.stderr[-3000:]
        printed = [line.split()[:2] for line in outcome.stdout.strip().splitlines()]
        (identity, built), _date, latest = printed
        assert identity.startswith("web:id-") and latest == ["web:latest", built]
        image = engine.images.get(identity)
        assert image.id == built and "web:latest" in image.tags  # as the build left it, just now
        assert image.attrs["Config"]["User"] == "101:101"
        assert image.attrs["Config"]["Cmd"] == ["/run"]
        response = serve_and_fetch(engine, built, free_port())
        assert response.status_code == 200
        assert response.text == PAGE
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the load flow's image, for whoever uses it next


def test_push_prints_the_digest_the_registry_serves_and_the_image_comes_back(engine, web_image, web_tag, registry):
    target = f"{registry}/test-push/web"
    outcome = invoke("push", web_tag, "--to", f"docker://{target}:one", "--to", f"docker://{target}:two")
    assert outcome.code == 0, outcome.stderr
    printed = dict(line.split()[:2] for line in outcome.stdout.strip().splitlines())
    assert set(printed) == {f"docker://{target}:one", f"docker://{target}:two"}
    for destination, digest in printed.items():
        served = subprocess.run(["skopeo", "inspect", "--tls-verify=false", destination],
                                capture_output=True, text=True, check=True)
        assert json.loads(served.stdout)["Digest"] == digest
    assert len(set(printed.values())) == 1

    # Remove the local image, pull it back from the registry, run it again.
    original = engine.images.get(web_image.id)  # every tag it has now, to give back
    for tag in original.tags:
        engine.images.remove(tag, force=True)
    pulled = engine.images.pull(target, tag="one")
    assert pulled.id == web_image.id  # same config, so the same image ID
    for tag in original.tags:
        pulled.tag(*tag.rsplit(":", 1))
    engine.images.remove(f"{target}:one", noprune=True)  # the pull's own name
    response = serve_and_fetch(engine, web_image.id, free_port())
    assert response.text == PAGE


def test_push_to_an_oci_layout(web_tag, tmp_path):
    outcome = invoke("push", web_tag, "--to", f"oci:{tmp_path / 'layout'}:v1")
    assert outcome.code == 0, outcome.stderr
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    digest = outcome.stdout.split()[1]
    assert [m["digest"] for m in index["manifests"]] == [digest]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"


def within(rootfs: Path, path: str) -> Path:
    """`path` in the root filesystem `rootfs`, its symlinks followed inside `rootfs`: /etc/passwd links
    to /nix/store/…, which on this machine is the host's store, holding that path or not."""
    found = rootfs / path.lstrip("/")
    while found.is_symlink():
        target = os.readlink(found)
        found = rootfs / target.lstrip("/") if target.startswith("/") else found.parent / target
    return found


def test_extract_to_a_rootfs_holds_the_image_files(web_tag, tmp_path):
    rootfs = tmp_path / "rootfs"
    outcome = invoke("extract", web_tag, "--to", f"rootfs:{rootfs}")
    assert outcome.code == 0, outcome.stderr
    assert "www:x:101:101" in within(rootfs, "/etc/passwd").read_text()
    pages = list((rootfs / "nix" / "store").glob("*-webroot/index.html"))
    assert [p.read_text() for p in pages] == [PAGE]
    assert (rootfs / "tmp").stat().st_mode & 0o1777 == 0o1777
    assert [p.name for p in tmp_path.iterdir()] == ["rootfs"]  # no work directory left


def test_extract_to_a_docker_archive_and_an_oci_layout(engine, web_image, web_tag, tmp_path):
    archive = tmp_path / "web.tar"
    assert invoke("extract", web_tag, "--to", f"docker-archive:{archive}").code == 0
    loaded = engine.images.load(archive.read_bytes())  # tagged web_tag, which it already is
    assert loaded[0].id == web_image.id
    assert invoke("extract", web_tag, "--to", f"oci:{tmp_path / 'oci'}:x").code == 0
    assert (tmp_path / "oci" / "index.json").exists()


@pytest.mark.parametrize("target", ["docker-archive", "rootfs"])
def test_extract_refuses_to_overwrite(web_tag, tmp_path, target):
    (tmp_path / "exists").mkdir()
    outcome = invoke("extract", web_tag, "--to", f"{target}:{tmp_path / 'exists'}")
    assert outcome.code != 0
    assert "already exists" in outcome.error_line
