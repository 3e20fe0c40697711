"""Provenance: how an image was built, as an in-toto statement with a SLSA v1 predicate.

The statement's subject is the pushed manifest (repository and digest). Its
build definition names the inputs that decide the image: the source
repository and commit, the nixpkgs pin (revision and hash, from
nix/nixpkgs/pin.json, or the package set's own hash for another package
set), the input identity (the id- tag: a hash of every file of the build
context, the Dockerfile and the builder), and the builder image the build ran
in (its image ID, and its registry digests when it was pulled). Run details
say who built it: on GitHub Actions the workflow, the run and the runner.

It is attached to the image as a referrer and signed like the SBOM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
MEDIA_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:nix-ci:toolkit:image:v1"


@dataclass(frozen=True)
class Inputs:
    """What decided the image, known before the push."""

    image: str  # the local image name:tag pushed
    identity: str  # the id- tag, or "" for an image without one (nix-base, nix-cache)
    source: str  # repository URL
    revision: str  # commit
    package_set: str  # the package set's directory or file, relative to the project
    package_set_id: str  # pkgs-<hash>
    pin: Mapping[str, str] = field(default_factory=dict)  # rev, sha256, branch of pin.json, when there is one
    builder: Mapping[str, object] = field(default_factory=dict)  # the build's builder image: id, repo_digests


def read_pin(root: Path, package_set: str) -> dict[str, str]:
    """pin.json of the package set (nix/nixpkgs/pin.json), when it has one."""
    base = root / package_set
    pin = (base if base.is_dir() else base.parent) / "pin.json"
    try:
        data = json.loads(pin.read_text())
    except (OSError, ValueError):
        return {}
    return {key: str(data[key]) for key in ("rev", "sha256", "branch") if key in data}


def statement(inputs: Inputs, *, repository: str, digest: str) -> dict:
    """The in-toto statement for the manifest `repository@digest`."""
    algorithm, _, hex_digest = digest.partition(":")
    dependencies: list[dict] = []
    if inputs.source and inputs.revision:
        dependencies.append({"uri": f"git+{inputs.source}", "digest": {"gitCommit": inputs.revision}, "name": "source"})
    if inputs.pin.get("rev"):
        dependencies.append({"uri": f"https://github.com/NixOS/nixpkgs/archive/{inputs.pin['rev']}.tar.gz",
                             "digest": {"gitCommit": inputs.pin["rev"], "nix-nar-sha256-base32": inputs.pin.get("sha256", "")},
                             "name": "nixpkgs",
                             **({"annotations": {"branch": inputs.pin["branch"]}} if inputs.pin.get("branch") else {})})
    builder_id = str(inputs.builder.get("id") or "")
    if builder_id:
        builder_digests = [str(d) for d in inputs.builder.get("repo_digests") or []]
        dependencies.append({"uri": builder_digests[0] if builder_digests else f"docker-image:{builder_id}",
                             "digest": {"sha256": builder_id.removeprefix("sha256:")}, "name": "builder",
                             **({"annotations": {"repoDigests": ", ".join(builder_digests)}} if builder_digests else {})})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": repository, "digest": {algorithm: hex_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"image": inputs.image, "source": inputs.source, "revision": inputs.revision,
                                       "packageSet": inputs.package_set},
                "internalParameters": {"identity": inputs.identity, "packageSetId": inputs.package_set_id},
                "resolvedDependencies": dependencies,
            },
            "runDetails": _run_details(),
        },
    }


def _run_details() -> dict:
    """GitHub Actions' workflow, run and runner when the push runs there; else the toolkit on a machine."""
    env = os.environ
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env.get('GITHUB_RUN_ID', '')}"
        return {
            "builder": {"id": f"{server}/{env.get('GITHUB_WORKFLOW_REF', env['GITHUB_REPOSITORY'])}"},
            "metadata": {"invocationId": f"{run}/attempts/{env.get('GITHUB_RUN_ATTEMPT', '1')}"},
            "byproducts": [{"name": "runner", "annotations": {
                key: env[var] for key, var in (("name", "RUNNER_NAME"), ("os", "RUNNER_OS"), ("arch", "RUNNER_ARCH"),
                                               ("environment", "RUNNER_ENVIRONMENT")) if env.get(var)}}],
        }
    return {"builder": {"id": "urn:nix-ci:toolkit:local"}}


def summary(data: Mapping) -> list[str]:
    """What `invoke verify` shows of a statement: one line per fact."""
    predicate = data.get("predicate") or {}
    definition = predicate.get("buildDefinition") or {}
    external = definition.get("externalParameters") or {}
    internal = definition.get("internalParameters") or {}
    lines = [f"provenance: built by {(predicate.get('runDetails') or {}).get('builder', {}).get('id', '?')}"]
    invocation = ((predicate.get("runDetails") or {}).get("metadata") or {}).get("invocationId")
    if invocation:
        lines.append(f"  run: {invocation}")
    if external.get("source"):
        lines.append(f"  source: {external['source']} at {external.get('revision') or '?'}")
    if internal.get("identity"):
        lines.append(f"  inputs: {internal['identity']}")
    for dependency in definition.get("resolvedDependencies") or []:
        if dependency.get("name") in ("nixpkgs", "builder"):
            digest = ", ".join(f"{k}:{v}" for k, v in (dependency.get("digest") or {}).items() if v)
            lines.append(f"  {dependency['name']}: {dependency.get('uri', '')} ({digest})")
    return lines
