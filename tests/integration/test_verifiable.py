"""Verifiable images against the real registry, cosign, skopeo and Nix: OCI labels and
annotations, signed pushes, the SBOM from the Nix closure, provenance, and what the
consuming side refuses."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import threading
import urllib.request
import uuid

import pytest
import requests

from tests.conftest import assert_one_line_error, invoke
from tests.integration.conftest import project_copy

SOURCE = "https://github.com/team/verifiable"
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def built(engine, cache_image, tmp_path_factory):
    """A web image of its own (a page no other test builds), with its tags and the env that built it."""
    directory = tmp_path_factory.mktemp("verifiable")
    env = {**project_copy(directory, f"<p>verifiable {uuid.uuid4()}</p>\n"), "INVOKE_LABELS_SOURCE": SOURCE,
           "INVOKE_LABELS_LICENSES": "MIT"}
    outcome = invoke("build-web", env=env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    tags = [line.split()[0] for line in outcome.stdout.splitlines()]
    identity = next(t for t in tags if ":id-" in t)
    yield {"env": env, "identity": identity, "id": outcome.stdout.split()[1], "directory": directory}
    for tag in tags:
        with contextlib.suppress(Exception):
            engine.images.remove(tag)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    env = {"COSIGN_PASSWORD": PASSWORD}
    for name in ("ours", "theirs"):
        outcome = invoke("sign-key", "--prefix", str(directory / name), env=env)
        assert outcome.code == 0, outcome.stderr
    assert oct((directory / "ours.key").stat().st_mode & 0o777) == "0o600"
    return directory


def repository(registry: str, what: str) -> str:
    return f"{registry}/verifiable-{what}-{uuid.uuid4().hex[:8]}/web"


def identity_tag(built) -> str:
    return built["identity"].partition(":")[2]


def tags_of(registry_repository: str) -> list[str]:
    host, _, name = registry_repository.partition("/")
    response = requests.get(f"http://{host}/v2/{name}/tags/list", timeout=10)
    return sorted(response.json().get("tags") or []) if response.status_code == 200 else []


def signed_push(built, keys, target, *extra, env=None):
    return invoke("push", built["identity"], "--to", f"docker://{target}", "--sign-key", str(keys / "ours.key"), *extra,
                  env={**built["env"], "COSIGN_PASSWORD": PASSWORD, **(env or {})})


def cosign_verify(reference: str, public_key) -> subprocess.CompletedProcess:
    return subprocess.run(["cosign", "verify", "--key", str(public_key), "--insecure-ignore-tlog=true",
                           "--allow-insecure-registry", reference], capture_output=True, text=True, timeout=120)


def test_images_carry_oci_labels_and_stay_reproducible(engine, built, cache_image):
    labels = engine.images.get(built["identity"]).labels
    assert labels["org.opencontainers.image.source"] == SOURCE
    assert labels["org.opencontainers.image.title"] == "web"
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.description"]
    for builder in ("nix-base:latest", "nix-cache:latest"):
        builder_labels = engine.images.get(builder).labels
        assert builder_labels["org.opencontainers.image.title"] == builder.partition(":")[0]
        assert builder_labels["org.opencontainers.image.version"].startswith("pkgs-")
    again = invoke("build-web", env=built["env"])  # the same inputs: nothing built, the same image
    assert again.code == 0 and "is up to date" in again.stderr
    assert again.stdout.split()[1] == built["id"]


def test_signed_push_is_verified_by_cosign_by_the_toolkit_and_tags_come_last(built, keys, registry, tmp_path):
    target = repository(registry, "signed")
    pushed = signed_push(built, keys, target)
    assert pushed.code == 0, pushed.stderr
    lines = pushed.stdout.strip().splitlines()
    digest = lines[0].split()[1]
    # (web:latest may name another image meanwhile: other tests build too)
    assert ":id-" in lines[0].split()[0] and len({line.split()[1] for line in lines}) == 1
    tag = lines[-1].split()[0].rpartition(":")[2]

    # Real cosign accepts the signature the toolkit stored, by digest and by tag.
    assert cosign_verify(f"{target}@{digest}", keys / "ours.pub").returncode == 0
    checked = cosign_verify(f"{target}:{tag}", keys / "ours.pub")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == digest

    # The manifest carries the commit's facts as annotations; the labels as well.
    manifest = requests.get(f"http://{registry}/v2/{target.partition('/')[2]}/manifests/{digest}", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert manifest["annotations"]["org.opencontainers.image.source"] == SOURCE

    verified = invoke("verify", f"{target}:{tag}", "--key", str(keys / "ours.pub"), env=built["env"])
    assert verified.code == 0, verified.stderr
    assert verified.stdout.startswith(f"verified {target}@{digest}: signed by")
    assert "sbom: sha256:" in verified.stdout and "store paths" in verified.stdout
    assert "provenance: sha256:" in verified.stdout and built["identity"].partition(":")[2] in verified.stdout

    # The registry got the signature tag and the referrers fallback tag of that digest.
    hex_digest = digest.partition(":")[2]
    assert {f"sha256-{hex_digest}.sig", f"sha256-{hex_digest}"} <= set(tags_of(target))

    # A second push writes tags only, and signs nothing again.
    again = signed_push(built, keys, target)
    assert again.code == 0, again.stderr
    assert "already holds this image" in again.stderr
    assert all("uploaded=0 " in line for line in again.stdout.splitlines())


def test_sbom_lists_exactly_the_store_paths_of_the_image(engine, built, keys, registry, tmp_path):
    target = repository(registry, "sbom")
    assert signed_push(built, keys, target).code == 0
    output = tmp_path / "web.cdx.json"
    found = invoke("sbom", f"{target}:{identity_tag(built)}", "--output", str(output), "--key", str(keys / "ours.pub"),
                   env=built["env"])
    assert found.code == 0, found.stderr
    document = output.read_text()

    from ci import sbom

    sbom.validate(document)  # the CycloneDX 1.6 schema, through cyclonedx-python-lib's validator
    listed = sbom.store_paths(document)
    in_image = engine.containers.run(built["identity"], ["/bin/busybox", "sh", "-c", "ls -d /nix/store/*"],
                                     remove=True, user="0:0").decode().split()
    assert listed == sorted(in_image)

    # What Nix reports in the builder: the closure of the image's store layers, and each path's NAR hash.
    script = ("cd /src && nix-build tests/fixtures/images.nix --arg pkgs 'import /src/tests/nixpkgs {}' --attr web "
              "--out-link /result >/dev/null 2>&1 && conf=$(nix-store --query --references /result | grep conf.json) && "
              "for p in $(nix-store --query --requisites $(grep -o '/nix/store/[a-z0-9][^,]*[a-z0-9]' $conf)); do "
              "echo $p $(nix-store --query --hash $p); done")
    reported = dict(line.split() for line in engine.containers.run(
        "nix-cache:latest", ["sh", "-c", script], remove=True,
        volumes={str(built["directory"]): {"bind": "/src", "mode": "ro"}}).decode().splitlines())
    assert sorted(reported) == listed
    components = {c["bom-ref"]: c for c in json.loads(document)["components"]}
    for path, nar_hash in reported.items():
        assert components[path]["hashes"][0]["content"] == sbom.nar_hash_hex(nar_hash)

    printed = invoke("sbom", f"{target}:{identity_tag(built)}", env=built["env"])
    assert printed.code == 0 and json.loads(printed.stdout)["bomFormat"] == "CycloneDX"


def test_containers_policy_with_sigstore_accepts_signed_and_refuses_unsigned(engine, built, keys, registry, tmp_path):
    """skopeo 1.18 of the Debian 13 builder, with a sigstoreSigned policy and use-sigstore-attachments."""
    if not engine.images.list(name="nix-builder", filters={"reference": "nix-builder:debian-trixie"}):
        pytest.skip("no nix-builder:debian-trixie (invoke build-base --from-debian)")
    signed, unsigned = repository(registry, "policy"), repository(registry, "unsigned")
    assert signed_push(built, keys, signed).code == 0
    assert invoke("push", built["identity"], "--to", f"docker://{unsigned}", env=built["env"]).code == 0
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {registry: [
        {"type": "sigstoreSigned", "keyPath": "/keys/ours.pub", "signedIdentity": {"type": "matchRepository"}}]}}}
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    (tmp_path / "registries.d").mkdir()
    (tmp_path / "registries.d" / "sigstore.yaml").write_text(f"docker:\n  {registry}:\n    use-sigstore-attachments: true\n")

    def copy(reference):
        return engine.containers.run(
            "nix-builder:debian-trixie", ["sh", "-c", f"skopeo --policy /conf/policy.json --registries.d /conf/registries.d "
                                         f"copy --src-tls-verify=false docker://{reference} dir:/tmp/out 2>&1; echo exit=$?"],
            remove=True, network_mode="host",
            volumes={str(tmp_path): {"bind": "/conf", "mode": "ro"}, str(keys): {"bind": "/keys", "mode": "ro"}}).decode()

    assert "exit=0" in copy(f"{signed}:{identity_tag(built)}")
    refused = copy(f"{unsigned}:{identity_tag(built)}")
    assert "exit=1" in refused and "signature" in refused.lower()


def test_verify_refuses_unsigned_other_key_and_moved_signatures(built, keys, registry):
    unsigned = repository(registry, "plain")
    assert invoke("push", built["identity"], "--to", f"docker://{unsigned}", env=built["env"]).code == 0
    outcome = invoke("verify", f"{unsigned}:{identity_tag(built)}", "--key", str(keys / "ours.pub"))
    assert_one_line_error(outcome, "is not signed")
    assert outcome.code == 3

    target = repository(registry, "other")
    assert signed_push(built, keys, target).code == 0
    outcome = invoke("verify", f"{target}:{identity_tag(built)}", "--key", str(keys / "theirs.pub"))
    assert_one_line_error(outcome, "is not signed by", "theirs.pub")

    # The signature tag of one manifest copied onto another (the tag moved to an unsigned image).
    host, _, name = target.partition("/")
    first = requests.get(f"http://{host}/v2/{name}/manifests/{identity_tag(built)}", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    signed_digest = first.headers["Docker-Content-Digest"]
    other = json.loads(first.content)
    other["annotations"] = {**other.get("annotations", {}), "tampered": "yes"}
    body = json.dumps(other).encode()
    put = requests.put(f"http://{host}/v2/{name}/manifests/{identity_tag(built)}", data=body, timeout=10,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert put.status_code == 201
    changed = put.headers["Docker-Content-Digest"]
    signature = requests.get(f"http://{host}/v2/{name}/manifests/{signed_digest.replace(':', '-')}.sig", timeout=10,
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    requests.put(f"http://{host}/v2/{name}/manifests/{changed.replace(':', '-')}.sig", data=signature.content, timeout=10,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).raise_for_status()
    outcome = invoke("verify", f"{target}:{identity_tag(built)}", "--key", str(keys / "ours.pub"))
    assert_one_line_error(outcome, changed)
    assert cosign_verify(f"{target}:{identity_tag(built)}", keys / "ours.pub").returncode != 0  # cosign agrees


def test_an_sbom_moved_to_another_image_is_refused(built, keys, registry):
    target = repository(registry, "moved")
    assert signed_push(built, keys, target).code == 0
    host, _, name = target.partition("/")
    signed_digest = requests.get(f"http://{host}/v2/{name}/manifests/{identity_tag(built)}", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}).headers["Docker-Content-Digest"]
    # Another manifest in the repository, signed by the same key (with cosign itself), whose referrers
    # index lists the first image's SBOM and provenance.
    manifest = json.loads(requests.get(f"http://{host}/v2/{name}/manifests/{signed_digest}", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}).content)
    manifest["annotations"]["org.opencontainers.image.revision"] = "f" * 40
    put = requests.put(f"http://{host}/v2/{name}/manifests/second", data=json.dumps(manifest).encode(), timeout=10,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert put.status_code == 201
    second_digest = put.headers["Docker-Content-Digest"]
    subprocess.run(["cosign", "sign", "--key", str(keys / "ours.key"), "--tlog-upload=false", "--yes",
                    "--allow-insecure-registry", f"{target}@{second_digest}"], check=True, capture_output=True,
                   env={**os.environ, "COSIGN_PASSWORD": PASSWORD}, timeout=120)
    index = requests.get(f"http://{host}/v2/{name}/manifests/{signed_digest.replace(':', '-')}", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    requests.put(f"http://{host}/v2/{name}/manifests/{second_digest.replace(':', '-')}", data=index.content, timeout=10,
                 headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}).raise_for_status()
    outcome = invoke("verify", f"{target}:second", "--key", str(keys / "ours.pub"))
    assert_one_line_error(outcome, "belongs to", signed_digest)


def test_bad_keys_and_passphrases_push_nothing(built, keys, registry, tmp_path):
    target = repository(registry, "badkey")
    outcome = invoke("push", built["identity"], "--to", f"docker://{target}", "--sign-key", str(tmp_path / "missing.key"),
                     env=built["env"])
    assert_one_line_error(outcome, "cannot read the signing key", "invoke sign-key")
    (tmp_path / "garbage.key").write_text("not a key\n")
    outcome = invoke("push", built["identity"], "--to", f"docker://{target}", "--sign-key", str(tmp_path / "garbage.key"),
                     env=built["env"])
    assert_one_line_error(outcome, "is not a cosign private key")
    outcome = signed_push(built, keys, target, env={"COSIGN_PASSWORD": "wrong"})
    assert_one_line_error(outcome, "wrong passphrase", "COSIGN_PASSWORD")
    assert PASSWORD not in outcome.stderr + outcome.stdout
    assert tags_of(target) == []


class _RefusingReferrers(http.server.BaseHTTPRequestHandler):
    """A registry in front of the real one that refuses manifests with a subject (referrers), as some do."""

    upstream = ""

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "PUT" and "/manifests/" in self.path and body and b'"subject"' in body:
            self.send_response(400)
            payload = b'{"errors":[{"code":"MANIFEST_INVALID","message":"subject not supported"}]}'
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        request = urllib.request.Request(f"http://{self.upstream}{self.path}", data=body, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            response = urllib.request.urlopen(request, timeout=60)  # noqa: S310 - the test's own registry
        except urllib.error.HTTPError as error:
            response = error
        with response:
            data = response.read()
        self.send_response(response.status if hasattr(response, "status") else response.code)
        for key, value in response.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value.replace(self.upstream, f"{self.server.server_address[0]}:"
                                                                  f"{self.server.server_address[1]}"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):
        pass


def test_a_registry_that_refuses_the_referrer_push_gets_no_tag(built, keys, registry):
    _RefusingReferrers.upstream = registry
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingReferrers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        name = f"verifiable-refused-{uuid.uuid4().hex[:8]}/web"
        outcome = signed_push(built, keys, f"{address}/{name}")
        assert_one_line_error(outcome, "subject not supported")
        assert "uploaded=" not in outcome.stdout  # no destination reported as pushed
        tags = tags_of(f"{registry}/{name}")
        assert not [t for t in tags if not t.startswith("sha256-")], tags  # no id-, date or latest tag
    finally:
        server.shutdown()
        server.server_close()


def test_a_cache_pull_requires_the_configured_signature(engine, cache_image, keys, registry, tmp_path):
    namespace = f"{registry}/verifiable-cache-{uuid.uuid4().hex[:8]}"
    pushed = invoke("build-cache", "--from-debian", "--push", namespace)
    assert pushed.code == 0, pushed.stderr[-2000:]
    env = {**project_copy(tmp_path, f"<p>cache {uuid.uuid4()}</p>\n"), "INVOKE_BUILDER_CACHE": "nix-cache-verifiable:pulled",
           "INVOKE_SIGNING_PUBLIC_KEY": str(keys / "ours.pub")}
    try:
        outcome = invoke("build-web", "--cache-from", namespace, env=env)
        assert_one_line_error(outcome, "is not signed")
        assert not engine.images.list(name="nix-cache-verifiable")  # nothing pulled, nothing used
    finally:
        with contextlib.suppress(Exception):
            engine.images.remove("nix-cache-verifiable:pulled")
