"""Every Nix file of the project parses with the host's Nix, and what can be read of them without nixpkgs is right."""

import json
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
        assert args == '{"labels":true,"page":true,"pkgs":true,"tag":true}'


def test_a_file_that_does_not_parse_is_named(nix_on_host, tmp_path):
    bad = tmp_path / "nix" / "bad.nix"
    bad.parent.mkdir()
    bad.write_text("{ a = ; }\n")
    with pytest.raises(ConfigError) as refused:
        nix.parse(bad)
    assert refused.value.line().startswith(f"{bad} does not parse: syntax error")


def test_the_vm_module_keeps_its_serial_login_prompt(nix_on_host):
    """nix/vm-configuration.nix, read without nixpkgs: it does not import profiles/headless.nix
    (which masks serial-getty@ttyS0) and masks no getty itself."""
    expression = """
      let
        module = import ./nix/vm-configuration.nix {
          authorizedKeys = [ "ssh-ed25519 AAAA test" ]; user = "nixos"; hostName = "vm"; diskSize = 8192;
        };
        config = module { lib = { mkDefault = value: value; }; modulesPath = "/modules"; };
      in {
        imports = map toString config.imports;
        kernelParams = config.boot.kernelParams;
        services = builtins.attrNames (config.systemd.services or { });
      }
    """
    value = json.loads(subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expression],
                                      cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert value["imports"] == ["/modules/profiles/qemu-guest.nix"]
    assert value["kernelParams"][0] == "console=ttyS0,115200"
    assert not any("getty" in name for name in value["services"])
