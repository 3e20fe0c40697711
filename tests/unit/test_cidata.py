"""cidata's check of #cloud-config user-data, before any disk is made: with
the real jsonschema, against cloud-init's real cloud-config schema (the file
Debian's cloud-init package installs; `bash .ci/setup` installs it).

Every refusal is one line that names the key path and never a value: each
bad document below holds SECRET, which no line may show."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from ci import cidata, cloudconfig
from ci.core.errors import ConfigError

SECRET = "hunter2-do-not-print"


@pytest.fixture
def schema() -> Path:
    """cloud-init's own schema file. In CI (CI=true) its absence fails the test."""
    if not cloudconfig.DEBIAN_CLOUD_CONFIG_SCHEMA.is_file():
        reason = "cloud-init's cloud-config schema is not installed; `bash .ci/setup` installs cloud-init"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return cloudconfig.DEBIAN_CLOUD_CONFIG_SCHEMA


@pytest.fixture
def without_schema(tmp_path, monkeypatch):
    """A machine without cloud-init: its schema is not where Debian installs it."""
    monkeypatch.setattr(cloudconfig, "DEBIAN_CLOUD_CONFIG_SCHEMA", tmp_path / "not-installed" / "schema.json")


def refusal(data: bytes, schema: Path | None = None) -> str:
    """The one line check_user_data refuses `data` with."""
    with pytest.raises(ConfigError) as caught:
        cloudconfig.check_user_data(data, "ud", schema)
    line = caught.value.line()
    assert "\n" not in line and SECRET not in line, line
    return line


def test_the_default_user_data_is_a_mapping_the_schema_accepts(schema):
    cloudconfig.check_user_data(cidata.DEFAULT_USER_DATA, "default", schema)
    assert cloudconfig.load_cloud_config(cidata.DEFAULT_USER_DATA.decode(), "default") == {}


@pytest.mark.parametrize("body, kind", [
    ("# only a comment: YAML null\n", "empty (null)"),
    ("", "empty (null)"),
    (f"- {SECRET}\n", "a list"),
    (f"{SECRET}\n", "a string"),
    ("5\n", "an integer"),
])
def test_cloud_config_that_is_not_a_mapping_is_refused(body, kind, without_schema):
    line = refusal(b"#cloud-config\n" + body.encode())
    assert line == (f"ud: top level: is {kind}, not a mapping of cloud-config keys; write #cloud-config user-data "
                    "as `key: value` lines (`{}` for none), or make it a script that starts with #!")


@pytest.mark.parametrize("body, expected", [
    (f"packages: 5\npassword: {SECRET}", "packages: must be a list, not an integer"),
    (f"users:\n  - name: 5\n    passwd: {SECRET}", "users[0].name: must be a string, not an integer"),
    (f"users:\n  - default\n  - name: x\n    passwd: {SECRET}\n    groups: 5",
     "users[1].groups: must be a string, a list or a mapping, not an integer"),
    (f"users:\n  - name: x\n    odd key: {SECRET}", 'users[0]["odd key"]: is not a key cloud-init knows here'),
    (f"write_files:\n  - content: {SECRET}", "write_files[0]: lacks the required key 'path'"),
    (f"write_files:\n  - path: /etc/x\n    content: {SECRET}\n    permissions: 0644",
     "write_files[0].permissions: must be a string, not an integer"),
    (f"power_state:\n  mode: {SECRET}", 'power_state.mode: must be one of "poweroff", "reboot", "halt"'),
    (f"swap:\n  size: {SECRET}", r"swap.size: must match the pattern ^([0-9]+)?\.?[0-9]+[BKMGT]$"),
    (f"chpasswd:\n  expire: {SECRET}", "chpasswd.expire: must be true or false, not a string"),
])
def test_a_key_the_schema_refuses_is_named_by_its_path(schema, body, expected):
    line = refusal(f"#cloud-config\n{body}\n".encode(), schema)
    assert line == f"ud: {expected}; correct it to what cloud-init's cloud-config schema allows ({schema})"


def test_the_schema_is_the_one_debian_installs_unless_another_is_given(schema):
    assert refusal(b"#cloud-config\npackages: 5\n").endswith(f"({schema})")


@pytest.mark.parametrize("body, where, said", [
    (f"runcmd: [echo {SECRET}\n", "line 3, column 1",
     "while parsing a flow sequence: expected ',' or ']', but got '<stream end>'"),
    (f"a: {SECRET}\n b: c\n", "line 3, column 3", "mapping values are not allowed here"),
    (f'password: "{SECRET}\\q"\n', "line 2, column 33",
     "while scanning a double-quoted scalar: found unknown escape character ..."),
    (f"a: *{SECRET}\n", "line 2, column 4", "found undefined alias ..."),
    (f"a: !{SECRET} x\n", "line 2, column 4", "could not determine a constructor for the tag ..."),
    ("a: b\n\tc: d\n", "line 3, column 1", "while scanning for the next token: found character ... that cannot start any token"),
    ("a: \x01\n", "line 2, column 4", "a control character YAML does not allow"),
])
def test_invalid_yaml_is_refused_with_its_line_and_column(body, where, said, without_schema):
    line = refusal(f"#cloud-config\n{body}".encode())
    assert line == f"ud: {where}: is not valid YAML ({said}); correct the YAML there (cloud-init would ignore the whole file)"


def test_a_value_yaml_cannot_construct_is_refused_without_quoting_it(without_schema):
    line = refusal(f"#cloud-config\nwhen: 2001-13-01\nnote: !!int {SECRET}\n".encode())
    assert line.startswith("ud: top level: is not valid YAML (a value written as a date, or tagged as a number")


def test_cloud_config_is_recognised_as_cloud_init_recognises_it(schema):
    # Blanks before the header and its case do not matter; gzip is undone first.
    refusal(b"\n  #Cloud-Config\npackages: 5\n", schema)
    assert refusal(gzip.compress(b"#cloud-config\npackages: 5\n", mtime=0), schema).startswith("ud: packages: ")


@pytest.mark.parametrize("data", [
    f"#!/bin/sh\necho {SECRET}: [\n".encode(),
    b"#cloud-config-archive\n- type: text/cloud-config\n  content: 'packages: 5'\n",
    b"## template: jinja\n#cloud-config\n{{ v1.local_hostname }}: [\n",
    b"#include\nhttps://example.org/user-data\n",
    b"Content-Type: multipart/mixed; boundary=X\nMIME-Version: 1.0\n\n--X--\n",
    b"#cloud-config\npackages: [\xff]\n",  # not UTF-8: cloud-init cannot tell its kind either
])
def test_other_kinds_of_user_data_are_written_as_given(data, schema):
    cloudconfig.check_user_data(data, "ud", schema)


def test_binary_values_count_as_strings_as_in_cloud_init(schema):
    cloudconfig.check_user_data(b"#cloud-config\nwrite_files:\n  - path: /etc/x\n    content: !!binary aGVsbG8=\n",
                           "ud", schema)


def test_without_cloud_inits_schema_only_the_mapping_is_checked_and_the_log_says_so(without_schema, caplog):
    lines: list[str] = []
    collect = logging.Handler(logging.INFO)
    collect.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ci.cloudconfig")
    logger.addHandler(collect)  # whether or not the task edge stopped "ci" propagating
    try:
        caplog.set_level(logging.INFO, logger="ci.cloudconfig")
        cloudconfig.check_user_data(b"#cloud-config\npackages: 5\n", "ud")
        cloudconfig.check_user_data(b"#!/bin/sh\n", "script")
    finally:
        logger.removeHandler(collect)
    assert lines == ["ud: checked as a YAML mapping only; the cloud-config schema check was skipped, as cloud-init's "
                     "schema is not installed (apt-get install cloud-init, or set vm.cloud_config_schema to its "
                     "schema-cloud-config-v1.json)"]
    assert refusal(b"#cloud-config\n- a\n").startswith("ud: top level: is a list")


def test_a_schema_that_refers_to_another_finds_it_beside_itself(schema, tmp_path):
    # cloud-init's versions.schema.cloud-config.json refers to the v1 schema by its URL on GitHub.
    for name in ("versions.schema.cloud-config.json", schema.name):
        shutil.copy(schema.parent / name, tmp_path / name)
    versions = tmp_path / "versions.schema.cloud-config.json"
    cloudconfig.check_user_data(b"#cloud-config\npackages: [git]\n", "ud", versions)
    assert refusal(b"#cloud-config\npackages: 5\n", versions).startswith("ud: packages: must be a list, not an integer; ")

    (tmp_path / schema.name).unlink()  # never fetched from the network instead
    line = refusal(b"#cloud-config\npackages: 5\n", versions)
    referred = json.loads(versions.read_text())["oneOf"][0]["allOf"][1]["$ref"]
    assert line == (f"the cloud-config schema {versions} refers to {referred}, which is neither in it nor a file beside "
                    "it; point vm.cloud_config_schema at cloud-init's schema-cloud-config-v1.json")


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read the cloud-config schema file {path}: it does not exist; pass a readable file to "
           "vm.cloud_config_schema"),
    ("{not json", "the cloud-config schema {path} is not JSON (Expecting property name enclosed in double quotes: "
                  "line 1 column 2 (char 1)); point vm.cloud_config_schema at cloud-init's schema-cloud-config-v1.json, "
                  "or unset it"),
    ('{"type": 5}', "the cloud-config schema {path} is not a JSON schema (at type: the metaschema's anyOf check "
                    "fails); point vm.cloud_config_schema at cloud-init's schema-cloud-config-v1.json, or unset it"),
])
def test_a_schema_that_cannot_be_used_is_one_line(tmp_path, content, problem):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    assert refusal(b"#cloud-config\nruncmd: [ls]\n", path) == problem.format(path=path)
