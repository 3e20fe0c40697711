"""Bad service declarations are refused when Nix evaluates them, with a message
naming the service; the toolkit's tasks turn that into one line."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT, assert_one_line_error, invoke
from tests.integration.conftest import project_copy

RULE = "use letters, digits and - _ ., not starting with - or ., at most 64 characters"


def declaration(services: str, *, name: str = '"services"', finish: str = "null") -> str:
    return f"""
      let
        pkgs = import {ROOT}/tests/nixpkgs {{ }};
        s6 = import {ROOT}/nix/s6.nix {{ inherit pkgs; }};
      in
      s6.runner {{ name = {name}; finish = {finish}; services = {services}; }}
    """


def evaluate(expression: str, tmp_path) -> subprocess.CompletedProcess:
    file = tmp_path / "declaration.nix"
    file.write_text(expression)
    return subprocess.run(["nix-instantiate", str(file)], capture_output=True, text=True, timeout=120)


def refusal(expression: str, tmp_path) -> str:
    evaluated = evaluate(expression, tmp_path)
    assert evaluated.returncode != 0, evaluated.stdout
    errors = [line for line in evaluated.stderr.splitlines() if line.startswith("error:")]
    return errors[0].removeprefix("error: ")


GOOD = '{ name = "web"; run = [ "/bin/true" ]; }'


def test_a_good_declaration_evaluates(nix_on_host, tmp_path):
    evaluated = evaluate(declaration(f"[ {GOOD} ]"), tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().endswith("-services-run.drv")


@pytest.mark.parametrize("name", ["bad name", ".hidden", "-x", "a/b", "", "x" * 65, "caf\u00e9"])
def test_a_bad_service_name_is_refused_naming_it(nix_on_host, tmp_path, name):
    message = refusal(declaration(f'[ {GOOD} {{ name = "{name}"; run = "true"; }} ]'), tmp_path)
    assert message == f"s6 services (services): service name '{name}' is invalid: {RULE}"


def test_a_name_nix_refuses_in_a_store_path_is_refused_when_evaluated(nix_on_host, tmp_path):
    # Names go into store path names (getty@tty1-run), where Nix refuses '@':
    # the declaration says so, instead of Nix naming a store path later.
    message = refusal(declaration('[ { name = "getty@tty1"; run = [ "/bin/true" ]; } ]'), tmp_path)
    assert message == f"s6 services (services): service name 'getty@tty1' is invalid: {RULE}"


def test_a_name_that_is_not_a_string_is_refused(nix_on_host, tmp_path):
    message = refusal(declaration(f"[ {GOOD} {{ name = 42; run = \"true\"; }} ]"), tmp_path)
    assert message == f"s6 services (services): service name of service #2 is invalid: {RULE}"


def test_a_service_without_a_name_is_refused_by_its_position(nix_on_host, tmp_path):
    message = refusal(declaration(f'[ {GOOD} {{ run = "true"; }} ]'), tmp_path)
    assert message == "s6 services (services): service #2 has no name"


@pytest.mark.parametrize("run", [None, '""', "[ ]", "null"])
def test_a_missing_run_command_is_refused_naming_the_service(nix_on_host, tmp_path, run):
    service = '{ name = "worker"; }' if run is None else f'{{ name = "worker"; run = {run}; }}'
    message = refusal(declaration(f"[ {GOOD} {service} ]"), tmp_path)
    assert message == "s6 services (services): service 'worker' has no run command"


@pytest.mark.parametrize("run", ["42", "[ 1 2 ]", "{ }", "true"])
def test_a_run_command_of_the_wrong_kind_is_refused(nix_on_host, tmp_path, run):
    message = refusal(declaration(f'[ {{ name = "worker"; run = {run}; }} ]'), tmp_path)
    assert message == ("s6 services (services): service 'worker': run must be execline text, a list of words "
                       "(a command line) or a program (a derivation or a path)")


def test_two_services_with_the_same_name_are_refused_naming_it(nix_on_host, tmp_path):
    message = refusal(declaration(f'[ {GOOD} {{ name = "db"; run = "a"; }} {{ name = "db"; run = "b"; }} ]'), tmp_path)
    assert message == "s6 services (services): two services are named 'db'"


def test_an_unknown_attribute_is_refused_naming_it(nix_on_host, tmp_path):
    message = refusal(declaration('[ { name = "web"; run = "true"; fnish = "echo bye"; } ]'), tmp_path)
    assert message == ("s6 services (services): service 'web' has an unknown attribute 'fnish' "
                       "(known: name, run, finish, log, timeoutKill)")


@pytest.mark.parametrize(("attribute", "expected"), [
    ('log = "yes";', "service 'web': log must be true, false or { run = ...; } / { timestamps = true; }"),
    ("log = { rotate = 3; };", "service 'web': log has an unknown attribute 'rotate' (known: run, timestamps)"),
    ("log = { timestamps = 1; };", "service 'web': log.timestamps must be true or false"),
    ("log = { run = 42; };", "service 'web': log.run must be execline text, a list of words or a program"),
    ("finish = 42;", "service 'web': finish must be execline text, a list of words or a program"),
    ("timeoutKill = -1;", "service 'web': timeoutKill must be a whole number of milliseconds, 0 or more"),
])
def test_bad_optional_attributes_are_refused(nix_on_host, tmp_path, attribute, expected):
    message = refusal(declaration(f'[ {{ name = "web"; run = "true"; {attribute} }} ]'), tmp_path)
    assert message == f"s6 services (services): {expected}"


@pytest.mark.parametrize(("services", "expected"), [
    ("[ ]", "no services declared"),
    (GOOD, "services must be a list of services, each { name = ...; run = ...; }"),
    ('[ "web" ]', "service #1 is not an attribute set { name = ...; run = ...; }"),
])
def test_a_declaration_that_is_not_a_list_of_services_is_refused(nix_on_host, tmp_path, services, expected):
    assert refusal(declaration(services), tmp_path) == f"s6 services (services): {expected}"


def test_a_bad_scan_directory_name_or_finish_is_refused(nix_on_host, tmp_path):
    assert refusal(declaration(f"[ {GOOD} ]", name='"my services"'), tmp_path) == (
        f"s6 services: the scan directory name 'my services' is invalid: {RULE}")
    assert refusal(declaration(f"[ {GOOD} ]", finish="42"), tmp_path) == (
        "s6 services (services): finish must be execline text, a list of words or a program")


def test_the_scan_directory_alone_is_refused_too(nix_on_host, tmp_path):
    expression = declaration(f"[ {GOOD} {GOOD} ]").replace("s6.runner", "s6.scanDir")
    assert refusal(expression, tmp_path) == "s6 services (services): two services are named 'web'"


BROKEN_SERVICES = """
{ pkgs ? import ../nixpkgs { }, page ? null, tag ? null }:
let
  s6 = import ../../nix/s6.nix { inherit pkgs; };
  runner = s6.runner { services = [ { name = "web"; run = "a"; } { name = "web"; run = "b"; } ]; };
in
{
  services-run = runner;
  services = pkgs.dockerTools.streamLayeredImage { name = "services"; config.Cmd = [ "${runner}/bin/run" ]; };
}
"""


def test_invoke_start_reports_a_refused_declaration_in_one_line(nix_on_host, tmp_path):
    broken = tmp_path / "services.nix"
    broken.write_text(BROKEN_SERVICES.replace("../nixpkgs", f"{ROOT}/tests/nixpkgs").replace("../../nix", f"{ROOT}/nix"))
    outcome = invoke("start", "services", env={"INVOKE_START_SERVICES_FILE": str(broken)})
    assert_one_line_error(outcome, f"nix-build {broken} -A services-run failed: s6 services (services): "
                                   "two services are named 'web'", f"fix {broken}")


def test_build_services_reports_a_refused_declaration_in_one_line(engine, cache_image, tmp_path):
    env = project_copy(tmp_path)
    (tmp_path / "tests" / "fixtures" / "services.nix").write_text(BROKEN_SERVICES)
    before = {image.id for image in engine.images.list(all=True)}
    outcome = invoke("build-services", env={**env, "INVOKE_START_SERVICES_IMAGES": "tests/fixtures/services.nix",
                                            "INVOKE_START_SERVICES_FILE": "tests/fixtures/services.nix"})
    assert_one_line_error(outcome, "the Nix build in web.Dockerfile failed: s6 services (services): "
                                   "two services are named 'web'")
    assert {image.id for image in engine.images.list(all=True)} <= before  # nothing left behind


@pytest.mark.parametrize(("args", "phrase"), [
    (["start", "postgres"], "unknown runner 'postgres'; known runners: services, nginx"),
    (["start", "services", "--container", "--publish", "8080"], "bad port mapping '8080' in --publish"),
    (["stop", "postgres"], "unknown runner 'postgres'"),
])
def test_bad_runner_arguments_are_refused_in_one_line(args, phrase):
    assert_one_line_error(invoke(*args), phrase)
