"""Arbitrary text never gives a traceback: the reference and destination parsers and the
settings checks answer with the toolkit's own errors only, on one line; and what the settings
checks accept, invoke loads without failing. Property-based (hypothesis), pure Python."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invoke.config import Config

from ci import settings as ci_settings
from ci.core.errors import ToolkitError
from ci.core.refs import check_tag, parse_destination, parse_image_ref
from tests.unit.test_settings import DEFAULTS, leaves

# Moderate counts keep the suite fast; no example database is written into the checkout.
CHECKED = settings(max_examples=150, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text as users mistype it: reference-like characters, and any character at all.
REFERENCE_ALPHABET = "abcXYZ019._-:/@ \n\t\x00é" + "sha256"
reference_like = st.text(REFERENCE_ALPHABET, max_size=60)
any_text = st.text(max_size=80)
texts = st.one_of(reference_like, any_text, st.sampled_from(["", ":", "oci:", "oci::x", "docker://", "rootfs:/"]))


def one_line(exc: ToolkitError) -> None:
    assert "\n" not in exc.line() and "\r" not in exc.line(), exc.line()


@CHECKED
@given(texts)
def test_references_parse_or_are_refused_in_one_line(text):
    try:
        ref = parse_image_ref(text)
    except ToolkitError as exc:
        one_line(exc)
        return
    assert str(ref) == text  # accepted: the reference reads back as given, nothing dropped (no trailing newline)


@CHECKED
@given(texts)
def test_tags_are_checked_whole(text):
    try:
        assert check_tag(text) == text and text.isascii() and text.isprintable()
    except ToolkitError as exc:
        one_line(exc)


@CHECKED
@given(st.one_of(texts, st.builds(lambda t, r: t + r, st.sampled_from(["docker://", "oci:", "docker-archive:",
                                                                     "rootfs:"]), reference_like)),
       st.sampled_from([("docker", "oci"), ("docker-archive", "oci", "rootfs")]),
       st.sampled_from([None, "latest"]))
def test_destinations_parse_or_are_refused_in_one_line(text, allowed, default_tag):
    try:
        destination = parse_destination(text, allowed=allowed, default_tag=default_tag)
    except ToolkitError as exc:
        one_line(exc)
        return
    assert destination.transport in allowed
    assert destination.target and destination.target.isprintable()  # names a place, on one line
    str(destination)


SETTING_KEYS = sorted({key for key, _ in leaves(DEFAULTS)} | {"stop.grace"})


@CHECKED
@given(st.sampled_from(SETTING_KEYS), st.one_of(any_text, st.integers().map(str), reference_like))
def test_flags_are_checked_in_one_line(key, text):
    try:
        ci_settings.flag(key, text, "--flag")
    except ToolkitError as exc:
        one_line(exc)


def invoke_loads(project, environ, monkeypatch) -> Config:
    """What invoke makes of the project's file and the variables, as `invoke TASK` loads them."""
    for name in [n for n in __import__("os").environ if n.startswith("INVOKE_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = Config(project_location=str(project), lazy=True)
    config.load_collection(DEFAULTS)
    config.load_project()
    config.load_shell_env()
    return config


environment_names = st.sampled_from([ci_settings.environment_name(k) for k in SETTING_KEYS if k != "stop.grace"]
                                    + ["INVOKE_WEB_PROT", "INVOKE_START_NEW_FILE"])
environment_values = st.one_of(st.sampled_from(["", "0", "1", "true", "maybe", "9000", "70000", "auto", "x:y",
                                                "127.0.0.1", "nix-base:latest", "ghcr.io/team"]),
                               st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                                       max_size=20))


@CHECKED
@given(st.dictionaries(environment_names, environment_values, max_size=4))
def test_variables_the_check_accepts_are_what_invoke_loads(tmp_path_factory, monkeypatch, environ):
    project = tmp_path_factory.mktemp("project")
    try:
        ci_settings.check_sources(DEFAULTS, project, environ=environ)
    except ToolkitError as exc:
        one_line(exc)
        return
    with monkeypatch.context() as patch:
        config = invoke_loads(project, environ, patch)
    for key, _ in leaves(DEFAULTS):
        value = ci_settings.value(config, key)
        assert ci_settings.kind_of(key).check(value) == value, key


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
              st.sampled_from(["auto", "9080:8080", "vfat", "zstd", "nix-base:latest", "127.0.0.1"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
sections = st.dictionaries(
    st.sampled_from([*DEFAULTS, "wbe", "run"]),
    st.one_of(yaml_values, st.dictionaries(st.sampled_from(sorted({k.split(".")[1] for k in SETTING_KEYS}
                                                                  | {"prot", "services", "mine"})), yaml_values, max_size=4)),
    max_size=3,
)


@CHECKED
@given(st.one_of(sections.map(lambda data: yaml.safe_dump(data)), any_text,
                 sections.map(lambda data: json.dumps(data)[:-1])))
def test_project_files_the_check_accepts_are_what_invoke_loads(tmp_path_factory, monkeypatch, text):
    project = tmp_path_factory.mktemp("project")
    (project / "invoke.yaml").write_text(text)
    try:
        ci_settings.check_sources(DEFAULTS, project, environ={})
    except ToolkitError as exc:
        one_line(exc)
        return
    with monkeypatch.context() as patch:
        invoke_loads(project, {}, patch)


@pytest.mark.parametrize("text", ["web:\n  port: 8000\n", "vm:\n  disk_size: 4096\n", "builder:\n  from_debian: true\n"])
def test_what_invoke_loads_from_an_accepted_file_is_checked_alike(tmp_path, monkeypatch, text):
    (tmp_path / "invoke.yaml").write_text(text)
    ci_settings.check_sources(DEFAULTS, tmp_path, environ={})
    config = invoke_loads(tmp_path, {}, monkeypatch)
    (key, value), = leaves(yaml.safe_load(text))
    assert ci_settings.value(config, key) == value
