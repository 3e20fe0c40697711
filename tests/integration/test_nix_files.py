"""Every Nix file of the project parses with the host's Nix, no nixpkgs needed."""

import subprocess

import pytest

from ci.core.errors import ConfigError
from ci.tools import nix
from tests.conftest import ROOT, invoke


def test_every_nix_file_parses(nix_on_host):
    outcome = invoke("check-nix")
    assert outcome.code == 0, outcome.stderr
    checked = {p.relative_to(ROOT).as_posix() for p in nix.parse_all(ROOT)}
    assert {"nix/images.nix", "nix/nixpkgs/default.nix", "tests/nixpkgs/default.nix", "tests/fixtures/images.nix"} <= checked
    assert outcome.stdout.strip() == f"{len(checked)} Nix files parse"


def test_images_files_share_one_interface(nix_on_host):
    for images in ("nix/images.nix", "tests/fixtures/images.nix"):
        args = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", f"builtins.functionArgs (import ./{images})"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
        assert args == '{"page":true,"pkgs":true,"tag":true}'


def test_a_file_that_does_not_parse_is_named(nix_on_host, tmp_path):
    bad = tmp_path / "nix" / "bad.nix"
    bad.parent.mkdir()
    bad.write_text("{ a = ; }\n")
    with pytest.raises(ConfigError) as refused:
        nix.parse(bad)
    assert refused.value.line().startswith(f"{bad} does not parse: syntax error")
