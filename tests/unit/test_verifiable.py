"""Labels, SBOM and provenance documents, from real samples of what the tools print (tests/unit/samples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci import labels, provenance, sbom
from ci.core.errors import ConfigError

SAMPLES = Path(__file__).parent / "samples"

# The OCI labels the official nixos/nix image sets (docker inspect of nixos/nix:2.34.7).
NIXOS_NIX_LABELS = {
    "org.opencontainers.image.title": "Nix",
    "org.opencontainers.image.source": "https://github.com/NixOS/nix",
    "org.opencontainers.image.vendor": "Nix project",
    "org.opencontainers.image.version": "2.34.7",
    "org.opencontainers.image.description": "Nix container image",
    "org.opencontainers.image.url": "https://nixos.org",
    "org.opencontainers.image.documentation": "https://nix.dev",
}


@pytest.mark.parametrize(("remote", "expected"), [
    ("git@github.com:team/toolkit.git", "https://github.com/team/toolkit"),
    ("https://x-access-token:ghs_secret@github.com/team/toolkit.git", "https://github.com/team/toolkit"),
    ("ssh://git@gitlab.example/group/sub/repo.git", "https://gitlab.example/group/sub/repo"),
    ("https://github.com/team/toolkit/", "https://github.com/team/toolkit"),
])
def test_source_is_a_browsable_url_without_credentials(remote, expected):
    assert labels.normalise_source(remote) == expected


def test_a_source_that_is_no_url_is_one_line():
    with pytest.raises(ConfigError) as refused:
        labels.normalise_source("not a url")
    assert "labels.source" in refused.value.line()


def test_a_clone_of_a_local_directory_builds_with_no_source_label(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", "/srv/elsewhere/checkout"], check=True)
    assert labels.source(tmp_path) == ""
    with pytest.raises(ConfigError):  # a configured source must be a URL
        labels.source(tmp_path, "/srv/elsewhere/checkout")


def test_builder_labels_leave_nothing_of_nixos_nix():
    ours = labels.image_labels(title="nix-base", description="builder", source="https://github.com/team/toolkit",
                               version="pkgs-1234", inherited=NIXOS_NIX_LABELS)
    assert set(NIXOS_NIX_LABELS) <= set(ours)  # every inherited OCI key is overridden...
    assert ours[labels.SOURCE] == "https://github.com/team/toolkit"
    assert ours[labels.TITLE] == "nix-base" and ours[labels.VERSION] == "pkgs-1234"
    assert ours["org.opencontainers.image.vendor"] == "" and ours["org.opencontainers.image.url"] == ""  # ...or blanked
    assert not any("NixOS" in value or "Nix project" in value for value in ours.values())


def test_annotations_take_the_commit_date_not_the_clock(monkeypatch, tmp_path):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    origin = labels.origin(tmp_path, "https://github.com/team/toolkit")
    assert origin.annotations()[labels.CREATED] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("sample", ["path-info-2.8.json", "path-info-2.26.json"])
def test_path_info_of_both_nix_formats(sample):
    data = (SAMPLES / sample).read_bytes()
    paths = [entry["path"] for entry in json.loads(data)] if sample.endswith("2.8.json") else list(json.loads(data))
    conf = json.dumps({"store_layers": [[p] for p in paths]}).encode()
    record = sbom.parse_record("sha256:" + "a" * 64, data, conf)
    assert sorted(p.path for p in record.paths) == sorted(paths)
    assert all(len(p.nar_hash) == 64 for p in record.paths)


def test_nar_hashes_in_both_notations_are_the_same_hex():
    assert sbom.nar_hash_hex("sha256-gnrG9qZ4EoLkK7Lw/6/COHG55s9O1M/bMPRnS2iH9jY=").startswith("827ac6f6")
    # nix/nixpkgs/pin.json: the pin's NAR hash in Nix's base-32, and the same as SRI (`nix hash to-sri`)
    assert sbom.nar_hash_hex("sha256:1i4bkzy1siavmxaskp49lgi9s02gam6crb0d0abbbjmsyl39jbsf") == \
        sbom.nar_hash_hex("sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q=")


@pytest.mark.parametrize(("path", "name", "version"), [
    ("/nix/store/00000000000000000000000000000000-nginx-1.28.0", "nginx", "1.28.0"),
    ("/nix/store/00000000000000000000000000000000-busybox-static", "busybox-static", ""),
    ("/nix/store/00000000000000000000000000000000-glibc-2.40-66-bin", "glibc", "2.40-66-bin"),
    ("/nix/store/00000000000000000000000000000000-web-cmd", "web-cmd", ""),
])
def test_names_and_versions_split_as_nix_splits_them(path, name, version):
    assert sbom.split_name(path) == (name, version)


def test_the_sbom_is_valid_cyclonedx_with_every_path_and_edge():
    data = (SAMPLES / "path-info-2.8.json").read_bytes()
    paths = [entry["path"] for entry in json.loads(data)]
    record = sbom.parse_record("sha256:" + "a" * 64, data, json.dumps({"store_layers": [paths]}).encode())
    document = sbom.cyclonedx(record, image_name="127.0.0.1:5000/team/web", image_digest="sha256:" + "b" * 64,
                              labels={labels.SOURCE: "https://github.com/team/toolkit"})
    sbom.validate(document)
    parsed = json.loads(document)
    assert sbom.store_paths(document) == sorted(paths)
    edges = {d["ref"]: set(d.get("dependsOn") or []) for d in parsed["dependencies"]}
    for entry in json.loads(data):
        assert edges[entry["path"]] == {r for r in entry["references"] if r != entry["path"]}
    hashes = {c["bom-ref"]: c["hashes"][0]["content"] for c in parsed["components"]}
    assert hashes[paths[0]] == sbom.nar_hash_hex(json.loads(data)[0]["narHash"])


def test_provenance_names_pin_identity_builder_and_the_github_run(monkeypatch):
    for name, value in {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "team/toolkit", "GITHUB_RUN_ID": "42",
                        "GITHUB_SERVER_URL": "https://github.com", "RUNNER_NAME": "GitHub Actions 7",
                        "GITHUB_WORKFLOW_REF": "team/toolkit/.github/workflows/build-web.yml@refs/heads/main"}.items():
        monkeypatch.setenv(name, value)
    inputs = provenance.Inputs(image="web:latest", identity="id-abc", source="https://github.com/team/toolkit",
                               revision="c" * 40, package_set="nix/nixpkgs", package_set_id="pkgs-1",
                               pin={"rev": "8fd9daa3", "sha256": "1i4b"}, builder={"id": "sha256:" + "d" * 64})
    statement = provenance.statement(inputs, repository="ghcr.io/team/toolkit/web", digest="sha256:" + "e" * 64)
    assert statement["_type"] == provenance.STATEMENT_TYPE and statement["predicateType"] == provenance.PREDICATE_TYPE
    assert statement["subject"] == [{"name": "ghcr.io/team/toolkit/web", "digest": {"sha256": "e" * 64}}]
    names = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert names["nixpkgs"]["digest"]["gitCommit"] == "8fd9daa3"
    assert names["source"]["digest"]["gitCommit"] == "c" * 40
    assert names["builder"]["digest"]["sha256"] == "d" * 64
    run = statement["predicate"]["runDetails"]
    assert run["metadata"]["invocationId"] == "https://github.com/team/toolkit/actions/runs/42/attempts/1"
    assert run["byproducts"][0]["annotations"]["name"] == "GitHub Actions 7"
    assert any("id-abc" in line for line in provenance.summary(statement))
