"""Every setting of the toolkit, declared once with what it accepts, and checked
with its name and where it came from before any work starts.

invoke merges the defaults of tasks.py, configuration files (/etc/invoke.yaml,
~/.invoke.yaml, the project's invoke.yaml, a runtime file given with -f or
INVOKE_RUNTIME_CONFIG), INVOKE_* variables and flags. It reads the project's
file and casts the variables itself, after tasks.py is imported, and stops
with a traceback on a file that is not YAML, a variable it cannot cast
(INVOKE_WEB_PORT=abc) or a list from the environment; a wrong type that does
get through fails later, far from its cause. So tasks.py calls
`check_sources` when it is imported: every file and variable is read here
first and each value is checked against its declaration; a flag is checked by
`flag` as its task starts. A refusal is one ConfigError line, e.g.

    web.port is 'abc' (from INVOKE_WEB_PORT): a port is a whole number from 1 to 65535; ...

invoke reads /etc/invoke.yaml and ~/.invoke.yaml before it imports tasks.py:
their values are checked here, but one that is not YAML at all fails inside
invoke before the toolkit runs. A configuration file written in Python
(invoke.py) is invoke's to run and is not checked.

It is longer than the other modules (about 500 lines) because it declares
every setting of every task in one table, with the few kinds they share: the
table is the point, and a reader finds any setting's rule in one place.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .core.errors import BadReference, ConfigError, quoted
from .core.refs import parse_image_ref

# invoke's own sections (run, sudo, ...) are invoke's to check.
INVOKE_SECTIONS = ("run", "runners", "sudo", "tasks", "timeouts")

ENV_PREFIX = "INVOKE_"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Refused(Exception):
    """A value a kind does not accept; the kind's rule says what it accepts, and `note` why this one is not."""

    def __init__(self, note: str = "") -> None:
        super().__init__(note)
        self.note = note


@dataclass(frozen=True)
class Kind:
    """What a setting accepts: `rule` says it in words; `test` returns the value or raises _Refused."""

    rule: str
    test: Callable[[Any], Any]
    # How a string from the environment or a flag becomes a value; None: the string itself.
    parse: Callable[[str], Any] | None = None
    environment: bool = True  # False: invoke cannot take it from the environment (a list)

    def check(self, value: Any) -> Any:
        return self.test(value)

    def from_text(self, text: str) -> Any:
        return self.test(self.parse(text) if self.parse else text)


def _whole(low: int, high: int, what: str, unit: str = "") -> Kind:
    def test(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            raise _Refused("written without quotes")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Refused
        return value

    def parse(text: str) -> int:
        digits = text.strip(" \t\n")
        if not re.fullmatch(r"[0-9]{1,12}", digits):  # what invoke's int() cast takes, and no more
            raise _Refused
        return int(digits)

    return Kind(f"{what} is a whole number{f' of {unit}' if unit else ''} from {low} to {high}", test, parse)


def _yes_no() -> Kind:
    def test(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Refused
        return value

    # invoke casts any other string to True ("false" too): only these are taken.
    words = {"1": True, "0": False, "": False}

    def parse(text: str) -> bool:
        if text not in words:
            raise _Refused
        return words[text]

    return Kind("a yes/no setting is true or false (1 or 0 in the environment)", test, parse)


def _one_of(what: str, *options: str) -> Kind:
    def test(value: Any) -> str:
        if value not in options:
            raise _Refused
        return str(value)

    return Kind(f"{what} is one of {', '.join(options)}", test)


def _text(rule: str, pattern: str | None = None, *, optional: bool = False) -> Kind:
    """A single line (no control characters); matching `pattern` when given; None or '' when optional."""
    def test(value: Any) -> str | None:
        if optional and value in (None, ""):
            return value
        if not isinstance(value, str) or not value or _CONTROL.search(value):
            raise _Refused
        if pattern and not re.fullmatch(pattern, value):
            raise _Refused
        return value

    return Kind(rule, test)


def _checked_text(rule: str, check: Callable[[str], object], *, optional: bool = False) -> Kind:
    """A single line that `check` accepts (it raises ValueError or a ToolkitError otherwise)."""
    line = _text(rule, optional=optional)

    def test(value: Any) -> str | None:
        value = line.check(value)
        if value in (None, ""):
            return value
        try:
            check(value)
        except (ValueError, BadReference):
            raise _Refused from None
        return value

    return Kind(rule, test)


def _strings(rule: str) -> Kind:
    """None, one string, or a list of strings (each a single line)."""
    def test(value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if value is None:
            return value
        if not isinstance(items, list) or not all(isinstance(i, str) and "\0" not in i for i in items):
            raise _Refused
        if isinstance(value, list) and any(_CONTROL.search(i) for i in items):
            raise _Refused
        return value

    return Kind(rule, test)


def _port_pairs() -> Kind:
    def test(value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise _Refused
        for item in value:
            found = re.fullmatch(r"([0-9]{1,5}):([0-9]{1,5})", item) if isinstance(item, str) else None
            if not found or not all(1 <= int(port) <= 65535 for port in found.groups()):
                raise _Refused
        return value

    return Kind("ports are a list of HOST:CONTAINER, each a port from 1 to 65535, e.g. ['9080:8080']", test,
                environment=False)


def _disk_size() -> Kind:
    def test(value: Any) -> Any:
        if value == "auto":
            return value
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,9}", text) or not 1024 <= int(text) <= 16 * 1024 * 1024:
            raise _Refused
        return value

    return Kind("a disk size is a whole number of MiB from 1024 to 16777216, or auto", test)


def _directory(value: str) -> None:
    if not Path(value).expanduser().is_dir():
        raise ValueError(value)


def _image(*, need_registry: bool = False, pinned: bool = True) -> Callable[[str], object]:
    """A check of an image reference: with a registry host when `need_registry`, a tag or digest only if `pinned`."""
    def check(value: str) -> None:
        ref = parse_image_ref(value, need_registry=need_registry)
        if not pinned and (ref.tag or ref.digest):
            raise ValueError(value)

    return check


def _ip_address(value: str) -> None:
    ipaddress.ip_address(value)


PORT = _whole(1, 65535, "a port")
SECONDS = _whole(1, 3600, "a time", "seconds")
PATH = _text("a path is one line of text")
NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"
ATTRIBUTE = r"[A-Za-z_][A-Za-z0-9_'-]*(?:\.[A-Za-z_][A-Za-z0-9_'-]*)*"
CONTAINER = _text("a container name is two or more letters, digits, '_', '.' or '-', starting with a letter or digit",
                  NAME)
HOST = _checked_text("an address is an IP address, e.g. 127.0.0.1", _ip_address)
IMAGE_NAME = _checked_text("an image name is lowercase letters, digits and separators ('.', '_', '-', '/'), no tag",
                           _image(pinned=False))
LOCAL_IMAGE = _checked_text("an image is a lowercase [registry/]name[:tag], e.g. nix-base:latest", _image())

# Each setting of tasks.py's defaults; start.* is every runner of the start section.
SETTINGS: dict[str, Kind] = {
    "project.root": _checked_text("the project root is an existing directory", _directory, optional=True),
    "web.name": IMAGE_NAME,
    "web.pkgs": PATH,
    "web.images": PATH,
    "web.container": CONTAINER,
    "web.host": HOST,
    "web.port": PORT,
    "web.container_port": PORT,
    "web.timeout": SECONDS,
    "web.attr": _text("an attribute is a Nix attribute path such as web", ATTRIBUTE),
    "start.*.file": PATH,
    "start.*.attr": _text("an attribute is a Nix attribute path such as services-run", ATTRIBUTE),
    "start.*.images": _text("a path is one line of text", optional=True),
    "start.*.image": IMAGE_NAME,
    "start.*.ports": _port_pairs(),
    "start.*.container": CONTAINER,
    "start.*.host": HOST,
    "start.*.timeout": SECONDS,
    "builder.image": _checked_text("the builder is an image reference such as nixos/nix:2.34.7@sha256:...",
                                   _image(), optional=True),
    "builder.from_debian": _yes_no(),
    "builder.tool": _one_of("the tool", "mmdebstrap", "debootstrap"),
    "builder.suite": _text("a Debian release is a name such as trixie or bookworm", r"[a-z]{2,20}"),
    "builder.base": LOCAL_IMAGE,
    "builder.cache": LOCAL_IMAGE,
    "builder.registry": _checked_text("a namespace is REGISTRY/PATH, e.g. ghcr.io/team, with no tag",
                                      _image(need_registry=True, pinned=False), optional=True),
    "builder.max_age_days": _whole(0, 3650, "an age", "days"),
    "vm.ssh_keys": _strings("SSH keys are a list of public key lines, or one string with a key per line"),
    "vm.ssh_key_files": _strings("SSH key files are a list of paths, or one ':'-separated string"),
    "vm.user": _text("a user name is lowercase letters, digits, '_' and '-', starting with a letter or '_'",
                     r"[a-z_][a-z0-9_-]{0,31}"),
    "vm.hostname": _text("a host name is 1 to 63 letters, digits and '-', not starting or ending with '-'",
                         r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"),
    "vm.disk_size": _disk_size(),
    "vm.expression": PATH,
    "vm.image": PATH,
    "vm.seed": PATH,
    "vm.seed_format": _one_of("a seed format", "vfat", "iso9660"),
    "vm.cloud_config_schema": _text("a path is one line of text", optional=True),
    "vm.host": HOST,
    "vm.ssh_port": PORT,
    "vm.memory": _whole(256, 1024 * 1024, "a memory size", "MiB"),
    "vm.cpus": _whole(1, 255, "a CPU count"),
    "vm.cpu": _text("a CPU model is qemu's -cpu value, e.g. host or max", r"[A-Za-z0-9_.,=+-]+", optional=True),
    "labels.source": _text("a source is the repository's URL, e.g. https://github.com/team/app", r"https?://\S+",
                           optional=True),
    "labels.licenses": _text("licenses are an SPDX expression such as MIT or Apache-2.0 OR MIT", r"[A-Za-z0-9.+() -]+",
                             optional=True),
    "labels.version": _text("a version is one line of text", r"\S(?:.*\S)?", optional=True),
    "signing.key": _text("a path is one line of text", optional=True),
    "signing.public_key": _text("a path is one line of text", optional=True),
    "bundle.expression": PATH,
    "bundle.attr": _text("an attribute is a Nix attribute path such as run", ATTRIBUTE),
    "bundle.output": PATH,
    "bundle.cache_dir": PATH,
    "bundle.compression": _one_of("a compression", "zstd", "xz", "bzip2", "none"),
    "bundle.key_name": _text("a key name is letters, digits, '.', '_' and '-'", r"[A-Za-z0-9._-]+", optional=True),
    "bundle.secret_key": PATH,
    "bundle.public_key": PATH,
    "bundle.trusted_keys": _strings("trusted keys are NAME:KEY strings, space-separated or a list"),
    "bundle.runner_image": LOCAL_IMAGE,
    "bundle.substituter": _checked_text("a substituter is REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...",
                                        _image(need_registry=True), optional=True),
    "remote.builders": _text("builders are Nix's builders syntax, ';'-separated: "
                             "'ssh-ng://USER@HOST[:PORT] SYSTEMS - MAX-JOBS SPEED FEATURES'", optional=True),
    "remote.ssh_key_file": _text("a path is one line of text", optional=True),
    "remote.known_hosts": _text("a path is one line of text", optional=True),
    "remote.host_keys": _strings("host keys are known_hosts lines: a list, or one string with a line per key"),
    "remote.local_builds": _yes_no(),
    "remote.fallback": _yes_no(),
    "remote.network": _text("a network is the engine's network mode, e.g. host", r"[a-z][a-z0-9_.-]*", optional=True),
    "remote.share": _checked_text("a share is REGISTRY/NAME:TAG", _image(need_registry=True), optional=True),
    # Flags that no configuration sets.
    "stop.grace": _whole(0, 3600, "a grace time", "seconds"),
}


def kind_of(key: str, default: Any = None) -> Kind:
    """The declaration of `key` (start.NAME.x is start.*.x); one made from the default's type when undeclared."""
    parts = key.split(".")
    pattern = ".".join([parts[0], "*", *parts[2:]]) if parts[0] == "start" and len(parts) == 3 else key
    if pattern in SETTINGS:
        return SETTINGS[pattern]
    if isinstance(default, bool):
        return _yes_no()
    if isinstance(default, int):
        return _whole(0, 2**31 - 1, "it")
    if isinstance(default, list):
        return _strings("it is a list of strings")
    return _text("it is one line of text", optional=default is None)


def shown(value: Any) -> str:
    """A value as the message shows it: on one line, quoted, cut short."""
    return quoted(value, 60) if isinstance(value, str) else quoted(json.dumps(value, default=str), 60)[1:-1]


def named(name: Any) -> str:
    """A key, variable or path as a message names it: as it is, unless it holds a control character."""
    text = str(name)
    return text if text.isprintable() else quoted(text)


def refusal(key: str, value: Any, source: str, kind: Kind, hint: str, note: str = "") -> ConfigError:
    return ConfigError(f"{named(key)} is {shown(value)} (from {named(source)}): {kind.rule}{f', {note}' if note else ''}",
                       hint)


def value(config: Mapping[str, Any], key: str) -> Any:
    """The value of `key` (web.port) in invoke's merged configuration."""
    found: Any = config
    for part in key.split("."):
        found = found[part]
    return found


def flag(key: str, text: Any, option: str) -> Any:
    """The value of flag `option` (None when not given) for setting `key`, checked."""
    if text is None:
        return None
    kind = kind_of(key)
    try:
        return kind.from_text(text) if isinstance(text, str) else kind.check(text)
    except _Refused as exc:
        raise refusal(key, text, option, kind, f"give {option} a value it accepts", exc.note) from None


# --- where settings come from ---------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file invoke reads: its path, and what it says (a mapping)."""

    path: Path
    data: Mapping[str, Any]


def config_files(project: Path, environ: Mapping[str, str], runtime: str | None = None) -> list[ConfigFile]:
    """The YAML and JSON files invoke reads, lowest precedence first, each parsed; ConfigError for one it cannot."""
    found = []
    for prefix in (Path("/etc/invoke"), Path.home() / ".invoke", project / "invoke"):
        path = next((p for p in (Path(f"{prefix}.{s}") for s in ("yaml", "yml", "json", "py")) if p.exists()), None)
        if path is not None and path.suffix != ".py":
            found.append(_read(path))
    runtime = runtime or environ.get("INVOKE_RUNTIME_CONFIG")
    if runtime:
        found.append(_read(Path(runtime).expanduser()))
    return found


def _read(path: Path) -> ConfigFile:
    fix = f"fix {named(path)}, or move it away"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the configuration file {named(path)} is not UTF-8 text", fix) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {named(path)}: {exc.strerror}", fix) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"the configuration file {named(path)} is not valid {path.suffix[1:].upper()}: {_parse_problem(exc)}",
                          fix) from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"the configuration file {named(path)} is not a mapping of sections (web:, builder:, ...)", fix)
    return ConfigFile(path, data)


def _parse_problem(exc: Exception) -> str:
    """Where the parser stopped, and why, on one line; never the file's content."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or type(exc).__name__
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return str(problem)


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check_file(file: ConfigFile, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The settings `file` gives, each checked; ConfigError naming the first it gets wrong."""
    fix = f"fix it in {named(file.path)}"
    given: dict[str, Any] = {}
    for section, content in file.data.items():
        if section in INVOKE_SECTIONS:
            _check_shape(content, _invoke_defaults()[section], section, file)
            continue
        if section not in defaults:
            known = ", ".join([*defaults, *INVOKE_SECTIONS])
            raise ConfigError(f"{quoted(section)} in {named(file.path)} is not a section of the settings", f"use one of {known}")
        if not isinstance(content, dict) or not all(isinstance(k, str) for k in content):
            raise ConfigError(f"{named(section)} in {named(file.path)} is not a mapping of settings", fix)
        for key, value in _leaves(content, f"{section}."):
            parts = key.split(".")
            if section == "start" and len(parts) == 2:
                raise ConfigError(f"{named(key)} in {named(file.path)} is not a mapping (file:, attr:, image:, ports:, ...)", fix)
            default = _default(defaults, key)
            runner_field = section == "start" and len(parts) == 3 and f"start.*.{parts[2]}" in SETTINGS
            if default is _MISSING and not runner_field:
                raise ConfigError(f"{named(key)} in {named(file.path)} is not a setting", f"{fix}; the README lists the settings")
            kind = kind_of(key, None if default is _MISSING else default)
            try:
                given[key] = kind.check(value)
            except _Refused as exc:
                raise refusal(key, value, str(file.path), kind, fix, exc.note) from None
    return given


_MISSING = object()


def _invoke_defaults() -> dict[str, Any]:
    from invoke.config import Config

    return Config.global_defaults()


def _check_shape(value: Any, default: Any, key: str, file: ConfigFile) -> None:
    """invoke's own settings are invoke's to check, but a mapping where it has a value, or the
    reverse, stops its merge with a traceback: refused here."""
    if isinstance(default, dict) != isinstance(value, dict):
        what = "a mapping" if isinstance(default, dict) else "a single value"
        raise ConfigError(f"{named(key)} in {named(file.path)} is not {what}, as invoke expects", f"fix it in {named(file.path)}")
    if isinstance(value, dict):
        for name, inner in value.items():
            if name in default:
                _check_shape(inner, default[name], f"{key}.{name}", file)


def _default(defaults: Mapping[str, Any], key: str) -> Any:
    value: Any = defaults
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return _MISSING if isinstance(value, Mapping) else value


def environment_name(key: str) -> str:
    """The INVOKE_* variable invoke reads for `key`."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _check_environment(environ: Mapping[str, str], defaults: Mapping[str, Any], files: dict[str, Any]) -> None:
    """Every INVOKE_* variable of the toolkit's sections names a setting and holds a value it accepts."""
    keys = {key: value for key, value in _leaves(defaults)} | files
    names = {environment_name(key): key for key in keys}
    sections = tuple(f"{ENV_PREFIX}{section.upper()}_" for section in defaults)
    for name, text in sorted(environ.items()):
        if not name.startswith(sections):
            continue
        key = names.get(name)
        if key is None:
            raise ConfigError(f"{named(name)} is set but names no setting",
                              "unset it, or check its spelling against the settings in the README")
        default = _default(defaults, key)
        kind = kind_of(key, None if default is _MISSING else default)
        if not kind.environment or isinstance(keys[key], list | dict):
            raise ConfigError(f"{named(key)} is set from {named(name)}, but a list cannot come from the environment",
                              "set it in invoke.yaml instead, and unset the variable")
        try:
            kind.from_text(text)
        except _Refused as exc:
            usual = "" if default is _MISSING or default is None else f" to use the default, {shown(default)}"
            hint = f"set {named(name)} to a value it accepts, or unset it{usual}"
            raise refusal(key, text, name, kind, hint, exc.note) from None


def check_sources(defaults: Mapping[str, Any], project: Path, environ: Mapping[str, str] | None = None,
                  runtime: str | None = None) -> None:
    """Check every configuration file and INVOKE_* variable invoke will read, before it does.

    `defaults` are tasks.py's; `project` is where its invoke.yaml is; `runtime` a file given with -f."""
    environ = os.environ if environ is None else environ
    given: dict[str, Any] = {}
    for file in config_files(project, environ, runtime):
        given |= _check_file(file, defaults)
    _check_environment(environ, defaults, given)
