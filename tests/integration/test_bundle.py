"""Closure bundles and binary caches against the real tools: Nix in the
builder container, the runner image, the registry, oras. Nothing is mocked:
bundles are restored into real stores, whose contents are compared before
and after a refused one."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import docker.errors
import pytest
import requests

from ci import bundles
from ci.core.errors import ConfigError
from ci.tools import oras
from tests.conftest import ROOT, assert_one_line_error, invoke, processes
from tests.integration import registries
from tests.integration.conftest import project_copy

# This run's own names: another run of these tests on the same engine and registry removes its own when it ends.
RUN = uuid.uuid4().hex[:8]
BASE = f"bundletest-nix-base:{RUN}"
RUNNER = f"bundletest-runner:{RUN}"
PAGE = (ROOT / "tests" / "fixtures" / "web" / "index.html").read_text()
NIX = "nix --extra-experimental-features nix-command"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- fixtures: the builder base, keys, a bundle, the runner image ---------------------

@pytest.fixture(scope="module")
def base(engine):
    """The builder base under a name of these tests' own, made from Debian packages."""
    outcome = invoke("build-base", "--from-debian", env={"INVOKE_BUILDER_BASE": BASE})
    assert outcome.code == 0, outcome.stderr[-3000:]
    yield BASE
    engine.images.remove(BASE)


@pytest.fixture(scope="module")
def keys(base, tmp_path_factory):
    """Two key pairs: the one bundles are signed with, and another."""
    directory = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("bundletest-1", "bundletest-other-1"):
        env = {"INVOKE_BUILDER_BASE": base, "INVOKE_BUNDLE_SECRET_KEY": str(directory / f"{name}.sec"),
               "INVOKE_BUNDLE_PUBLIC_KEY": str(directory / f"{name}.pub")}
        outcome = invoke("bundle-key", "--name", name, env=env)
        assert outcome.code == 0, outcome.stderr
        pairs[name] = env
    return pairs


@pytest.fixture(scope="module")
def env(keys, tmp_path_factory):
    """The bundle settings of these tests: the fixture runner, the first key, their own files and names."""
    directory = tmp_path_factory.mktemp("bundle")
    return {**keys["bundletest-1"], "INVOKE_BUNDLE_EXPRESSION": "tests/fixtures/runner.nix",
            "INVOKE_BUNDLE_OUTPUT": str(directory / "closure.tar"), "INVOKE_BUNDLE_CACHE_DIR": str(directory / "cache"),
            "INVOKE_BUNDLE_RUNNER_IMAGE": RUNNER}


@pytest.fixture(scope="module")
def made(env):
    """The fixture runner's bundle."""
    started = time.monotonic()
    outcome = invoke("bundle", env=env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    print(f"bundle: {outcome.stdout.strip()} in {time.monotonic() - started:.1f} s")
    return Path(env["INVOKE_BUNDLE_OUTPUT"])


@pytest.fixture(scope="module")
def runner(engine, env, base):
    outcome = invoke("build-runner", env=env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    yield RUNNER
    engine.images.remove(RUNNER, force=True)


def public_key(env) -> str:
    return Path(env["INVOKE_BUNDLE_PUBLIC_KEY"]).read_text().strip()


def run_once(engine, image: str, *, volumes=None, environment=None, command=None, entrypoint=None,
             network_mode=None) -> tuple[int, str]:
    """Run a container to its end; its exit code and output. It is removed whatever happens."""
    container = engine.containers.create(image, command=command, entrypoint=entrypoint, environment=environment or {},
                                         volumes=volumes or {}, network_mode=network_mode,
                                         name=f"bundletest-{uuid.uuid4().hex[:8]}")
    try:
        container.start()
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def mounted(path: Path) -> dict:
    return {str(path): {"bind": "/closure.tar", "mode": "ro"}}


# A restore in a store whose valid paths are listed before and after.
COMPARE = f"""
{NIX} path-info --all | sort > /tmp/before
/usr/local/bin/restore-bundle true
code=$?
{NIX} path-info --all | sort > /tmp/after
cmp -s /tmp/before /tmp/after && echo "store unchanged: $(wc -l < /tmp/before) paths" || echo "store changed"
[ -e /result ] && echo "result exists"
exit $code
"""


def restore_and_compare(engine, runner, bundle_file: Path, **environment) -> tuple[int, str]:
    return run_once(engine, runner, volumes=mounted(bundle_file), environment=environment,
                    entrypoint=["/bin/sh", "-c"], command=[COMPARE])


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a bundle with `change(name, data) -> data` applied to each file."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else None
            if data is not None:
                data = change(member.name, data)
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    return target


def error_line(logs: str) -> str:
    return [line for line in logs.splitlines() if line.strip()][-1]


# --- the runner Nix file --------------------------------------------------------------

def test_nginx_runner_is_the_seeds(nix_on_host):
    """nix/runner.nix with a package set whose nginx and coreutils are stand-ins: its config and run script."""
    expression = """
      let
        s = import ./tests/nixpkgs { };
        pkgs = s // { nginx = s.busybox; coreutils = s.busybox;
                      writeShellScriptBin = name: text: s.writeTextFile {
                        inherit name text; destination = "/bin/${name}"; executable = true; }; };
        runner = import ./nix/runner.nix { inherit pkgs; };
      in { config = runner.config.text; run = runner.run.text; }
    """
    shown = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expression], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout
    texts = json.loads(shown)
    config = texts["config"]
    assert "listen 8080;" in config and "daemon off;" in config
    assert re.search(r"root /nix/store/\w{32}-site;", config)
    for directive in ("pid", "error_log", "access_log", "client_body_temp_path", "proxy_temp_path"):
        assert re.search(rf"^\s*{directive}\s+/tmp/", config, re.M), directive
    assert "exec /nix/store/" in texts["run"] and "-p /tmp/" in texts["run"]


# --- bundle, then run it ----------------------------------------------------------------

def test_bundle_holds_a_signed_cache_and_the_result_link(made, env):
    info = bundles.inspect_bundle(made)
    assert info.store_path.endswith("-run")
    assert info.cache.signers == ("bundletest-1",) and not info.cache.unsigned
    assert {i.compression for i in info.cache.narinfos} == {"zstd"}
    with tarfile.open(made) as archive:
        assert "Priority: 10" in archive.extractfile("cache/nix-cache-info").read().decode()


def test_bundle_is_the_same_bytes_each_time(made, env, tmp_path):
    again = tmp_path / "again.tar"
    outcome = invoke("bundle", "--output", str(again), env=env)
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(made.read_bytes()).digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tar"]  # no temporary file left


def test_bundle_with_xz(made, env, tmp_path):
    outcome = invoke("bundle", "--compression", "xz", "--output", str(tmp_path / "xz.tar"), env=env)
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert {i.compression for i in bundles.inspect_bundle(tmp_path / "xz.tar").cache.narinfos} == {"xz"}


def test_runner_restores_the_bundle_and_serves_the_page(engine, runner, made):
    port = free_port()
    name = f"bundletest-serve-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    container = engine.containers.run(runner, detach=True, name=name, volumes=mounted(made),
                                      ports={"8080/tcp": ("127.0.0.1", port)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, container.logs().decode()
                container.reload()
                assert container.status == "running", container.logs().decode()
                time.sleep(0.1)
        print(f"runner answered {time.monotonic() - started:.2f} s after docker run")
        assert response.status_code == 200 and response.text == PAGE
        logs = container.logs().decode()
        assert re.search(r"restored /nix/store/\w{32}-run from /closure.tar: 3 paths \(3 new\), signed by bundletest-1", logs)
    finally:
        container.remove(force=True)


# --- registries ---------------------------------------------------------------------------

def test_bundle_through_the_registry_into_a_fresh_store(engine, runner, made, env, registry):
    reference = f"{registry}/bundletest/runner:{uuid.uuid4().hex[:8]}"
    pushed = invoke("cache-push", "--to", reference, env=env)
    assert pushed.code == 0, pushed.stderr
    pinned = pushed.stdout.splitlines()[0]
    manifest = oras.inspect(pinned)
    assert manifest.artifact_type == bundles.BUNDLE_TYPE
    assert [layer.media_type for layer in manifest.layers] == [bundles.BUNDLE_MEDIA_TYPE]
    assert manifest.annotations[bundles.STORE_PATH_ANNOTATION] == bundles.inspect_bundle(made).store_path
    # A fresh store lacks the paths ...
    store_path = bundles.inspect_bundle(made).store_path
    code, _ = run_once(engine, runner, entrypoint=["nix-store"], command=["--check-validity", store_path])
    assert code != 0
    # ... until a runner pulls the bundle from the registry, checks it and restores it, then runs what it asked.
    code, logs = run_once(engine, runner, network_mode="host", environment={"BUNDLE_REF": pinned},
                          command=["sh", "-c", f'nix-store --check-validity "$(readlink /result)" && echo valid {store_path}'])
    assert code == 0, logs
    assert f"valid {store_path}" in logs and "signed by bundletest-1" in logs


def test_runner_from_the_registry_serves_the_page(engine, runner, made, env, registry):
    reference = f"{registry}/bundletest/runner:serve-{RUN}"
    assert invoke("cache-push", "--to", reference, env=env).code == 0
    port = free_port()  # the container shares the host's network: it reaches 127.0.0.1:5000, and listens on PORT
    container = engine.containers.run(runner, detach=True, name=f"bundletest-ref-{uuid.uuid4().hex[:8]}",
                                      network_mode="host", environment={"BUNDLE_REF": reference, "PORT": str(port)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert requests.get(f"http://127.0.0.1:{port}/", timeout=2).text == PAGE
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, container.logs().decode()
                time.sleep(0.1)
    finally:
        container.remove(force=True)


def test_cache_pull_gives_the_bundle_back(made, env, registry, tmp_path):
    reference = f"{registry}/bundletest/runner:pull-{RUN}"
    assert invoke("cache-push", "--to", reference, env=env).code == 0
    outcome = invoke("cache-pull", reference, "--to", str(tmp_path / "pulled.tar"), env=env)
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "pulled.tar").read_bytes() == made.read_bytes()
    assert "bundle: 3 paths" in outcome.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulled.tar"]


@pytest.fixture(scope="module")
def pushed_cache(made, env, registry, tmp_path_factory):
    """The bundle's binary cache, pushed as a cache artifact (one layer per file)."""
    directory = tmp_path_factory.mktemp("cache-source")
    with tarfile.open(made) as archive:
        archive.extractall(directory, members=[m for m in archive.getmembers() if m.name.startswith("cache")],
                           filter="data")
    reference = f"{registry}/bundletest/cache:{uuid.uuid4().hex[:8]}"
    outcome = invoke("cache-push", "--cache", str(directory / "cache"), "--to", reference, env=env)
    assert outcome.code == 0, outcome.stderr
    return reference


def test_binary_cache_through_the_registry(pushed_cache, env, tmp_path):
    artifact = oras.inspect(pushed_cache)
    assert artifact.artifact_type == bundles.CACHE_TYPE
    assert sorted({layer.media_type for layer in artifact.layers}) == sorted(
        [bundles.CACHE_INFO_MEDIA_TYPE, bundles.NARINFO_MEDIA_TYPE, bundles.NAR_MEDIA_TYPE])
    target = tmp_path / "cache"
    outcome = invoke("cache-pull", pushed_cache, "--to", str(target), env=env)
    assert outcome.code == 0, outcome.stderr
    assert len(list(target.glob("*.narinfo"))) == 3 and len(list((target / "nar").iterdir())) == 3
    assert bundles.cache_directory(target).signers == ("bundletest-1",)
    # Again, over the cache it wrote: replaced whole.
    assert invoke("cache-pull", pushed_cache, "--to", str(target), env=env).code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def substitute_in_a_fresh_builder(engine, base, cache: Path, key: str) -> str:
    """nix-build the fixture runner in a new container of the builder, with `cache` as substituter; the log."""
    script = ('nix-build /p/tests/fixtures/runner.nix -A run --arg pkgs "import /p/tests/nixpkgs { }" --no-out-link'
              ' && nix-store --check-validity "$(nix-build /p/tests/fixtures/runner.nix -A run'
              ' --arg pkgs "import /p/tests/nixpkgs { }" --no-out-link 2>/dev/null)"')
    code, logs = run_once(
        engine, base, command=["sh", "-c", script],
        environment={"NIX_CONFIG": f"extra-substituters = file:///substituter\nextra-trusted-public-keys = {key}\n"},
        volumes={str(cache): {"bind": "/substituter", "mode": "ro"},
                 str(ROOT / "tests"): {"bind": "/p/tests", "mode": "ro"}})
    assert code == 0, logs
    return logs


def test_after_cache_pull_a_fresh_builder_substitutes_instead_of_building(engine, base, pushed_cache, env, keys, tmp_path):
    target = tmp_path / "cache"
    assert invoke("cache-pull", pushed_cache, "--to", str(target), env=env).code == 0
    logs = substitute_in_a_fresh_builder(engine, base, target, public_key(env))
    assert re.search(r"copying path '/nix/store/\w{32}-run' from 'file:///substituter'", logs), logs
    assert not re.search(r"building '/nix/store/\w{32}-run\.drv'", logs), logs
    # Signed by a key the builder does not trust, the same cache is ignored and Nix builds.
    logs = substitute_in_a_fresh_builder(engine, base, target, public_key(keys["bundletest-other-1"]))
    assert re.search(r"building '/nix/store/\w{32}-run\.drv'", logs), logs
    # Nix 2.8 says why ("is not signed by any of the keys"); 2.26 passes over the path without a word.
    assert not re.search(r"copying path '/nix/store/\w{32}-run' from 'file:///substituter'", logs), logs


def test_build_cache_substitutes_from_a_registry(engine, base, env, registry, tmp_path):
    """A cold machine: build-cache with a bundle of the web image as substituter downloads instead of building."""
    copy = {**env, **project_copy(tmp_path / "project"), "INVOKE_BUILDER_BASE": f"bundletest-sub-base:{RUN}",
            "INVOKE_BUILDER_CACHE": f"bundletest-sub-cache:{RUN}"}
    made_web = invoke("bundle", "--expression", "tests/fixtures/images.nix", "--attr", "web",
                      "--output", str(tmp_path / "web.tar"), env={**copy, "INVOKE_BUILDER_BASE": base})
    assert made_web.code == 0, made_web.stderr[-2000:]
    assert "has no bin/run" in made_web.stderr  # a bundle of something else still serves as a cache
    reference = f"{registry}/bundletest/web-cache:{uuid.uuid4().hex[:8]}"
    assert invoke("cache-push", "--bundle", str(tmp_path / "web.tar"), "--to", reference, env=copy).code == 0
    try:
        outcome = invoke("build-cache", "--substituter", reference, env=copy)
        assert outcome.code == 0, outcome.stderr[-3000:]
        assert re.search(r"copying path '/nix/store/\w{32}-stream-web' from 'file:///src/\.nix-substituter'", outcome.stderr)
        assert "using the substituter" in outcome.stderr

        # build-web too: a new page, built elsewhere and bundled, is downloaded rather than built.
        changed = {**copy, **project_copy(tmp_path / "changed", f"<p>a page built elsewhere {uuid.uuid4()}</p>\n")}
        made_page = invoke("bundle", "--expression", "tests/fixtures/images.nix", "--attr", "web",
                           "--output", str(tmp_path / "page.tar"), env={**changed, "INVOKE_BUILDER_BASE": base})
        assert made_page.code == 0, made_page.stderr[-2000:]
        page_reference = f"{registry}/bundletest/web-page:{uuid.uuid4().hex[:8]}"
        assert invoke("cache-push", "--bundle", str(tmp_path / "page.tar"), "--to", page_reference, env=changed).code == 0
        built = invoke("build-web", "--substituter", page_reference, env=changed)
        assert built.code == 0, built.stderr[-3000:]
        assert re.search(r"copying path '/nix/store/\w{32}-webroot' from 'file:///src/\.nix-substituter'", built.stderr)
        assert not re.search(r"building '/nix/store/\w{32}-webroot\.drv'", built.stderr)
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the repository's page
        for image in (f"bundletest-sub-cache:{RUN}", f"bundletest-sub-base:{RUN}"):
            with contextlib.suppress(docker.errors.ImageNotFound):  # a build that failed made none
                engine.images.remove(image, force=True)


def test_unreachable_substituter_is_reported_and_skipped(caplog):
    with bundles.substituter(f"127.0.0.1:{free_port()}/bundletest/none:1", ("k-1:" + "A" * 43 + "=",)) as used:
        assert used is None
    assert "building without it" in caplog.text


def test_substituter_of_another_type_is_refused(registry, tmp_path):
    reference = vm_artifact(registry, tmp_path)
    with pytest.raises(ConfigError, match="neither a bundle nor a binary cache"), \
            bundles.substituter(reference, ("k-1:" + "A" * 43 + "=",)):
        pass


# --- refused bundles: one line, and the store as it was -----------------------------------

def test_unsigned_bundle_is_refused_and_the_store_stays(engine, runner, made, tmp_path):
    unsigned = rewrite(made, tmp_path / "unsigned.tar",
                       lambda name, data: re.sub(rb"^Sig: .*\n", b"", data, flags=re.M) if name.endswith(".narinfo") else data)
    code, logs = restore_and_compare(engine, runner, unsigned)
    assert code == 3, logs
    assert "error: /closure.tar is not signed" in logs
    assert re.search(r"store unchanged: \d+ paths", logs) and "result exists" not in logs


def test_partly_signed_bundle_leaves_no_path_behind(engine, runner, made, tmp_path):
    """busybox is signed, run is not: a plain `nix copy` would add busybox before refusing run."""
    def strip_run(name, data):
        return re.sub(rb"^Sig: .*\n", b"", data, flags=re.M) if name.endswith(".narinfo") and b"-run\n" in data else data

    partly = rewrite(made, tmp_path / "partly.tar", strip_run)
    code, logs = restore_and_compare(engine, runner, partly)
    assert code == 3, logs
    assert re.search(r"error: /closure.tar holds /nix/store/\w{32}-run unsigned", logs), logs
    assert "store unchanged" in logs and "result exists" not in logs


def test_tampered_nar_is_refused(engine, runner, made, tmp_path):
    def flip(name, data):
        if "/nar/" in name and len(data) > 100_000:  # busybox's NAR
            return data[:50_000] + bytes([data[50_000] ^ 0xFF]) + data[50_001:]
        return data

    tampered = rewrite(made, tmp_path / "tampered.tar", flip)
    code, logs = restore_and_compare(engine, runner, tampered)
    assert code == 3, logs
    assert re.search(r"error: /closure.tar (was modified after it was signed|is damaged): ", logs), logs
    assert "store unchanged" in logs


def test_tampered_narinfo_is_refused(engine, runner, made, tmp_path):
    """A reference taken out of a signed narinfo (the NAR stays as it was): the signature no longer matches."""
    def edit(name, data):
        if name.endswith(".narinfo") and b"-run\n" in data:
            return re.sub(rb"^(References: .*?) ?\S+-runner-webroot", rb"\1", data, flags=re.M)
        return data

    tampered = rewrite(made, tmp_path / "narinfo.tar", edit)
    code, logs = restore_and_compare(engine, runner, tampered)
    assert code == 3, logs
    assert re.search(r"error: /closure.tar was modified after it was signed: the signature of /nix/store/\w{32}-run "
                     r"by bundletest-1 does not match", logs), logs
    assert "store unchanged" in logs


def test_wrong_key_is_refused(engine, runner, made, keys):
    code, logs = restore_and_compare(engine, runner, made,
                                     TRUSTED_PUBLIC_KEYS=public_key(keys["bundletest-other-1"]))
    assert code == 3, logs
    assert ("error: /closure.tar is signed by bundletest-1, not by a trusted key (bundletest-other-1); "
            "set TRUSTED_PUBLIC_KEYS") in logs
    assert "store unchanged" in logs


def test_no_trusted_key_is_refused(engine, runner, made):
    code, logs = run_once(engine, runner, volumes=mounted(made), environment={"TRUSTED_PUBLIC_KEYS": ""})
    assert code == 1
    assert error_line(logs).startswith("error: no trusted public key")


def test_missing_bundle_in_the_runner(engine, runner, tmp_path):
    code, logs = run_once(engine, runner)
    assert code == 2 and error_line(logs).startswith("error: no bundle at /closure.tar; mount one")
    # docker run -v with a file that does not exist mounts an empty directory
    code, logs = run_once(engine, runner, volumes={str(tmp_path / "nothing.tar"): {"bind": "/closure.tar", "mode": "rw"}})
    assert code == 2 and "is a directory, not a bundle" in error_line(logs)


def test_corrupt_bundles_in_the_runner(engine, runner, made, tmp_path):
    (tmp_path / "random.tar").write_bytes(os.urandom(20_000))
    (tmp_path / "cut.tar").write_bytes(made.read_bytes()[:600_000])
    for name in ("random.tar", "cut.tar"):
        code, logs = restore_and_compare(engine, runner, tmp_path / name)
        assert code == 2, logs
        assert "error: /closure.tar is not a bundle" in logs or "error: /closure.tar is incomplete" in logs, logs
        assert "store unchanged" in logs


# --- bad input on the host: one-line errors ------------------------------------------------

def test_bundle_without_a_key(env, tmp_path):
    outcome = invoke("bundle", env={**env, "INVOKE_BUNDLE_SECRET_KEY": str(tmp_path / "none.sec")})
    assert_one_line_error(outcome, "no secret key at", "invoke bundle-key")


def test_bundle_key_keeps_an_existing_key_and_the_repository_clean(env, tmp_path):
    outcome = invoke("bundle-key", env=env)
    assert_one_line_error(outcome, "already exists", "--force")
    outcome = invoke("bundle-key", env={**env, "INVOKE_BUNDLE_SECRET_KEY": "keys/bundle.sec",
                                        "INVOKE_BUNDLE_PUBLIC_KEY": str(tmp_path / "k.pub")})
    assert_one_line_error(outcome, "would be inside the project")
    assert not (ROOT / "keys").exists()


def test_bundle_build_error_is_one_line(env, tmp_path):
    outcome = invoke("bundle", "--attr", "nothing", env=env)
    assert_one_line_error(outcome, "bundling tests/fixtures/runner.nix -A nothing failed", "attribute 'nothing'")


@pytest.mark.parametrize(("content", "phrase"), [
    (None, "no bundle at"),
    (b"\x00garbage" * 1000, "is not a bundle"),
    (b"", "is not a bundle"),
])
def test_cache_push_of_a_missing_or_corrupt_bundle(env, registry, tmp_path, content, phrase):
    path = tmp_path / "closure.tar"
    if content is not None:
        path.write_bytes(content)
    outcome = invoke("cache-push", "--bundle", str(path), "--to", f"{registry}/bundletest/bad:1", env=env)
    assert_one_line_error(outcome, phrase)


def test_cache_push_of_a_directory_that_is_no_cache(env, registry, tmp_path):
    outcome = invoke("cache-push", "--cache", str(tmp_path), "--to", f"{registry}/bundletest/bad:1", env=env)
    assert_one_line_error(outcome, "is not a Nix binary cache", "nix copy --to file://DIR")


def vm_artifact(registry: str, tmp_path: Path) -> str:
    """An artifact of another type (a VM image's) at a reference."""
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + bytes(1020))
    pushed = oras.push(f"{registry}/bundletest/vm:{uuid.uuid4().hex[:8]}",
                       [oras.Blob(disk, "application/vnd.nix-ci.vm-image.disk.v1.qcow2")],
                       artifact_type="application/vnd.nix-ci.vm-image.v1")
    return pushed.pinned


def test_artifact_of_another_type_is_refused(engine, runner, env, registry, tmp_path):
    reference = vm_artifact(registry, tmp_path)
    target = tmp_path / "out.tar"
    outcome = invoke("cache-pull", reference, "--to", str(target), env=env)
    assert_one_line_error(outcome, "is neither a bundle nor a binary cache", "application/vnd.nix-ci.vm-image.v1")
    assert not target.exists()
    code, logs = run_once(engine, runner, network_mode="host", environment={"BUNDLE_REF": reference})
    assert code == 2
    assert "is not a bundle (its artifact type is 'application/vnd.nix-ci.vm-image.v1'" in error_line(logs)


def test_registry_that_does_not_answer(engine, runner, env, tmp_path):
    reference = f"127.0.0.1:{free_port()}/bundletest/none:1"
    assert_one_line_error(invoke("cache-pull", reference, "--to", str(tmp_path / "x.tar"), env=env), "does not answer")
    code, logs = run_once(engine, runner, network_mode="host", environment={"BUNDLE_REF": reference})
    assert code == 2 and error_line(logs).startswith(f"error: cannot pull {reference}: ")


def big_cache(directory: Path, size: int) -> Path:
    """A binary cache holding one NAR of `size` bytes (never restored: only moved)."""
    cache = directory / "cache"
    (cache / "nar").mkdir(parents=True)
    nar = "0" * 52 + ".nar.zst"
    with open(cache / "nar" / nar, "wb") as out:
        out.truncate(size)
    (cache / "nix-cache-info").write_text("StoreDir: /nix/store\nPriority: 10\n")
    (cache / ("a" * 32 + ".narinfo")).write_text(
        f"StorePath: /nix/store/{'a' * 32}-big\nURL: nar/{nar}\nCompression: zstd\nFileHash: sha256:0\n"
        f"FileSize: {size}\nNarHash: sha256:0\nNarSize: {size}\nReferences: \n")
    return cache


def test_registry_that_goes_away_mid_pull(env, tmp_path):
    storage = tmp_path / "registry"
    cache = big_cache(tmp_path / "source", 400_000_000)
    with registries.registry(storage) as address:
        reference = f"{address}/bundletest/big:1"
        assert invoke("cache-push", "--cache", str(cache), "--to", reference, env=env).code == 0
        target = tmp_path / "pulled"
        puller = subprocess.Popen(
            ["python3", "-m", "invoke", "cache-pull", reference, "--to", str(target)], cwd=ROOT,
            env={**os.environ, **env, "NO_COLOR": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            killed = False
            while puller.poll() is None and time.monotonic() < deadline:
                partial = glob.glob(str(tmp_path / ".cache-pull-*" / "files" / ".pull-*" / "*.nar.zst"))
                try:
                    received = os.path.getsize(partial[0]) if partial else 0
                except OSError:
                    continue
                if received > 10_000_000:
                    for pid in processes("docker-registry", str(storage)):
                        os.kill(pid, signal.SIGKILL)
                    killed = True
                    break
            stdout, stderr = puller.communicate(timeout=120)
        finally:
            if puller.poll() is None:
                puller.kill()
                puller.wait()
    assert killed, "the pull ended before the registry could be stopped; make the artifact larger"
    outcome_line = [line for line in stderr.splitlines() if line.strip()][-1]
    assert puller.returncode != 0 and "Traceback" not in stderr, stderr
    assert outcome_line.startswith(f"error: the registry {address} stopped answering while sending"), stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry", "source"]  # nothing half-written


def test_the_secret_key_stays_secret(env, made, tmp_path):
    secret = Path(env["INVOKE_BUNDLE_SECRET_KEY"]).read_text().strip().split(":")[1]
    outcome = invoke("bundle", "--output", str(tmp_path / "again.tar"), env={**env, "CI_DEBUG": "1"})
    assert outcome.code == 0
    assert secret not in outcome.stdout + outcome.stderr
    assert secret.encode() not in made.read_bytes()
    assert Path(env["INVOKE_BUNDLE_SECRET_KEY"]).stat().st_mode & 0o777 == 0o600


def test_runner_pulls_with_credentials_from_the_environment(engine, runner, made, env, tmp_path):
    with registries.registry(tmp_path / "registry", password="s3cret") as address:
        reference = f"{address}/bundletest/private:1"
        credentials = {"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "s3cret"}
        assert invoke("cache-push", "--to", reference, env={**env, **credentials, "REGISTRY_HOST": address}).code == 0
        # What the runner starts does not inherit the credentials of its pull.
        shown = 'echo "child sees: ${REGISTRY_USERNAME:-no user} ${REGISTRY_PASSWORD:-no password} ${REGISTRY_HOST:-no host}"'
        code, logs = run_once(engine, runner, network_mode="host", environment={"BUNDLE_REF": reference, **credentials},
                              command=["sh", "-c", shown])
        assert code == 0, logs
        assert "child sees: no user no password no host" in logs and "s3cret" not in logs
        # Without credentials, or with them for another registry, the line says so: not a bad reference.
        for environment in ({}, {**credentials, "REGISTRY_HOST": "ghcr.io"}):
            code, logs = run_once(engine, runner, network_mode="host", environment={"BUNDLE_REF": reference, **environment},
                                  command=["true"])
            assert code == 2, logs
            assert error_line(logs).startswith(f"error: the registry {address} wants credentials for {reference}, and none "
                                               "were given; set REGISTRY_USERNAME and REGISTRY_PASSWORD"), logs
        code, logs = run_once(engine, runner, network_mode="host", command=["true"],
                              environment={"BUNDLE_REF": reference, **credentials, "REGISTRY_PASSWORD": "wrong"})
        assert code == 2 and error_line(logs).startswith(f"error: the registry {address} refused the credentials"), logs


def test_runner_never_quotes_a_trusted_key_word(engine, runner, made):
    """A secret key pasted into TRUSTED_PUBLIC_KEYS by mistake must not reach the log."""
    secret = "k-1:" + "c2VjcmV0" * 11
    code, logs = run_once(engine, runner, volumes=mounted(made), environment={"TRUSTED_PUBLIC_KEYS": secret})
    assert code == 1
    assert error_line(logs).startswith("error: word 1 of TRUSTED_PUBLIC_KEYS is not a Nix public key"), logs
    assert "c2VjcmV0" not in logs
