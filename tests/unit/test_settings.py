"""Every setting, from a configuration file, an INVOKE_* variable or a flag, is checked with its
name, its source and what it accepts, in one line: pure Python, no engine."""

from __future__ import annotations

import pytest

from ci import settings
from ci.core.errors import ConfigError
from tests.unit.test_tasks import fresh_tasks

DEFAULTS = fresh_tasks().DEFAULTS


def check(tmp_path, environ=None, yaml_text=None, runtime=None):
    if yaml_text is not None:
        (tmp_path / "invoke.yaml").write_text(yaml_text)
    settings.check_sources(DEFAULTS, tmp_path, environ=environ or {}, runtime=runtime)


def refused(tmp_path, **given) -> str:
    with pytest.raises(ConfigError) as caught:
        check(tmp_path, **given)
    line = caught.value.line()
    assert "\n" not in line
    return line


def leaves(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_default_is_declared_and_accepted():
    for key, value in leaves(DEFAULTS):
        pattern = key if not key.startswith("start.") else ".".join(["start", "*", *key.split(".")[2:]])
        assert pattern in settings.SETTINGS, f"{key} has no declaration in ci/settings.py"
        assert settings.kind_of(key).check(value) == value, key


def test_the_declared_choices_are_those_of_the_modules_that_use_them():
    from ci import bundles, cidata

    assert settings.SETTINGS["vm.seed_format"].rule.endswith(", ".join(cidata.FORMATS))
    assert settings.SETTINGS["bundle.compression"].rule.endswith(", ".join(bundles.COMPRESSIONS))


def test_the_defaults_and_the_usual_variables_pass(tmp_path):
    check(tmp_path, environ={"INVOKE_WEB_PORT": "8000", "INVOKE_BUILDER_FROM_DEBIAN": "1", "INVOKE_WEB_PKGS": "x",
                             "INVOKE_VM_SSH_KEYS": "ssh-ed25519 AAAA me", "INVOKE_BUILDER_REGISTRY": "127.0.0.1:5000/team",
                             "INVOKE_RUNTIME_CONFIG": "", "PATH": "/bin"})
    check(tmp_path, yaml_text="web:\n  port: 8000\nvm:\n  ssh_keys: [a, b]\n  disk_size: auto\n"
                              "start:\n  mine:\n    file: x.nix\n    ports: ['1:2']\nrun:\n  echo: true\n")
    check(tmp_path, yaml_text="")  # empty: nothing set


@pytest.mark.parametrize(("variable", "text", "phrases"), [
    ("INVOKE_WEB_PORT", "abc", ["web.port is 'abc' (from INVOKE_WEB_PORT): a port is a whole number from 1 to 65535",
                                "the default, 9000"]),
    ("INVOKE_WEB_PORT", "70000", ["from 1 to 65535"]),
    ("INVOKE_WEB_PORT", "0", ["from 1 to 65535"]),
    ("INVOKE_WEB_PORT", "-1", ["from 1 to 65535"]),
    ("INVOKE_WEB_PORT", "9\n0", ["'9\\n0'"]),
    ("INVOKE_WEB_TIMEOUT", "1e9", ["a time is a whole number of seconds"]),
    ("INVOKE_BUILDER_FROM_DEBIAN", "maybe", ["builder.from_debian is 'maybe'", "1 or 0"]),
    ("INVOKE_BUILDER_FROM_DEBIAN", "false", ["1 or 0"]),  # invoke would read it as true
    ("INVOKE_BUILDER_MAX_AGE_DAYS", "7.5", ["an age is a whole number of days"]),
    ("INVOKE_BUILDER_TOOL", "apt", ["the tool is one of mmdebstrap, debootstrap"]),
    ("INVOKE_BUILDER_SUITE", "Trixie 13", ["Debian release"]),
    ("INVOKE_BUILDER_REGISTRY", "ftp://x", ["REGISTRY/PATH"]),
    ("INVOKE_BUILDER_IMAGE", "Nix Base", ["image reference"]),
    ("INVOKE_BUILDER_BASE", "nix-base:bad tag", ["an image is"]),
    ("INVOKE_WEB_NAME", "Web", ["image name"]),
    ("INVOKE_WEB_HOST", "localhost", ["IP address"]),
    ("INVOKE_WEB_CONTAINER", "a b", ["container name"]),
    ("INVOKE_WEB_PKGS", "", ["a path is one line"]),
    ("INVOKE_VM_MEMORY", "2G", ["MiB from 256"]),
    ("INVOKE_VM_CPUS", "0", ["a CPU count"]),
    ("INVOKE_VM_DISK_SIZE", "12", ["1024"]),
    ("INVOKE_VM_SEED_FORMAT", "ext4", ["vfat, iso9660"]),
    ("INVOKE_VM_HOSTNAME", "-x", ["host name"]),
    ("INVOKE_VM_USER", "Root", ["user name"]),
    ("INVOKE_VM_SSH_PORT", "22x", ["port"]),
    ("INVOKE_VM_CPU", "host; rm", ["qemu's -cpu"]),
    ("INVOKE_BUNDLE_COMPRESSION", "gzip", ["zstd, xz, bzip2, none"]),
    ("INVOKE_BUNDLE_KEY_NAME", "a:b", ["key name"]),
    ("INVOKE_BUNDLE_SUBSTITUTER", "cache", ["REGISTRY/NAME:TAG"]),
    ("INVOKE_PROJECT_ROOT", "/nonexistent/project", ["existing directory"]),
    ("INVOKE_START_SERVICES_TIMEOUT", "soon", ["start.services.timeout"]),
])
def test_a_bad_variable_is_one_line_naming_it(tmp_path, variable, text, phrases):
    line = refused(tmp_path, environ={variable: text})
    for phrase in [variable, *phrases]:
        assert phrase in line, line


def test_a_list_cannot_come_from_the_environment(tmp_path):
    assert "a list cannot come from the environment" in refused(tmp_path, environ={"INVOKE_START_SERVICES_PORTS": "1:2"})
    line = refused(tmp_path, environ={"INVOKE_VM_SSH_KEYS": "k"}, yaml_text="vm:\n  ssh_keys: [a]\n")
    assert "vm.ssh_keys is set from INVOKE_VM_SSH_KEYS" in line


def test_a_misspelt_variable_is_refused(tmp_path):
    assert "INVOKE_WEB_PROT is set but names no setting" in refused(tmp_path, environ={"INVOKE_WEB_PROT": "1"})


@pytest.mark.parametrize(("text", "phrases"), [
    ("web: [1\n", ["is not valid YAML: line 2, column 1"]),
    ("hello\n", ["is not a mapping of sections"]),
    ("- a\n", ["is not a mapping of sections"]),
    ("web: 5\n", ["web in", "is not a mapping of settings"]),
    ("wbe:\n  port: 1\n", ["'wbe' in", "is not a section"]),
    ("web:\n  prot: 1\n", ["web.prot in", "is not a setting"]),
    ("web:\n  port: abc\n", ["web.port is 'abc' (from ", "invoke.yaml): a port is a whole number"]),
    ("web:\n  port: '9000'\n", ["written without quotes"]),
    ("web:\n  port: [1, 2]\n", ["web.port is [1, 2]"]),
    ("web:\n  port: true\n", ["web.port is true"]),
    ("web:\n  timeout: 0\n", ["from 1 to 3600"]),
    ("builder:\n  from_debian: maybe\n", ["builder.from_debian is 'maybe'"]),
    ("builder:\n  from_debian: 1\n", ["builder.from_debian is 1"]),
    ("vm:\n  ssh_keys: {a: 1}\n", ["vm.ssh_keys.a in", "is not a setting"]),
    ("vm:\n  ssh_key_files: [1, 2]\n", ["vm.ssh_key_files is [1, 2]"]),
    ("start:\n  services: 5\n", ["start.services in", "is not a mapping"]),
    ("start:\n  services:\n    ports: 9080\n", ["start.services.ports is 9080", "HOST:CONTAINER"]),
    ("start:\n  services:\n    ports: ['70000:1']\n", ["start.services.ports"]),
    ("start:\n  mine:\n    colour: red\n", ["start.mine.colour in", "is not a setting"]),
    ("bundle:\n  trusted_keys: 5\n", ["bundle.trusted_keys is 5"]),
    ("web:\n  port: \x07\n", ["is not valid YAML"]),
])
def test_a_bad_project_file_is_one_line_naming_it(tmp_path, text, phrases):
    line = refused(tmp_path, yaml_text=text)
    for phrase in phrases:
        assert phrase in line, line


def test_a_file_that_is_not_text_or_not_a_file(tmp_path):
    (tmp_path / "invoke.yaml").write_bytes(b"web:\n  port: \xff\n")
    assert "is not UTF-8 text" in refused(tmp_path)
    (tmp_path / "invoke.yaml").unlink()
    (tmp_path / "invoke.yaml").mkdir()
    assert "cannot read the configuration file" in refused(tmp_path)


def test_the_runtime_file_is_checked_too(tmp_path):
    runtime = tmp_path / "other.json"
    runtime.write_text('{"web": {"port": "x"}}')
    assert f"(from {runtime})" in refused(tmp_path, runtime=str(runtime))
    runtime.write_text('{"web": ')
    assert "is not valid JSON" in refused(tmp_path, environ={"INVOKE_RUNTIME_CONFIG": str(runtime)})


@pytest.mark.parametrize(("key", "text", "value"), [
    ("web.port", "8080", 8080), ("vm.memory", "4096", 4096), ("vm.disk_size", "auto", "auto"),
    ("bundle.compression", "xz", "xz"), ("stop.grace", "0", 0), ("builder.registry", "ghcr.io/team", "ghcr.io/team"),
])
def test_flags_are_converted(key, text, value):
    assert settings.flag(key, text, "--x") == value
    assert settings.flag(key, None, "--x") is None


@pytest.mark.parametrize(("key", "text", "option"), [
    ("web.port", "70000", "--port"), ("web.port", "0", "--port"), ("vm.cpus", "many", "--cpus"),
    ("stop.grace", "abc", "--grace"), ("vm.hostname", "a_b", "--hostname"), ("vm.seed_format", "ext4", "--format"),
])
def test_a_bad_flag_is_one_line_naming_it(key, text, option):
    with pytest.raises(ConfigError) as caught:
        settings.flag(key, text, option)
    assert f"{key} is '{text}' (from {option})" in caught.value.line()
