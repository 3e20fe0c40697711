"""cloud-init NoCloud seed disks: a small disk labelled "cidata" holding
user-data and meta-data (and optionally vendor-data and network-config).

#cloud-config user-data is checked before anything is written: it must be
YAML and a mapping, and, when cloud-init's published cloud-config schema is
at hand (where Debian's cloud-init package installs it, or a file the caller
names), it must follow that schema, checked with jsonschema as cloud-init
checks it. A refusal names the file and the key path, never a value from it.

The disk is vfat, as in the seed experiment (mkfs.vfat + mcopy), or ISO 9660
(xorriso). It is made beside its destination, read back with the same tools
to check its label, file names and contents, and only then renamed into
place: a failure leaves no disk behind. The same inputs give the same bytes.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .core.errors import ConfigError, ToolkitError
from .tools import fat, iso

log = logging.getLogger(__name__)

LABEL = "cidata"
FORMATS = ("vfat", "iso9660")
# The files NoCloud reads, in the order they are written.
SEED_NAMES = ("user-data", "meta-data", "vendor-data", "network-config")
# The date of every file and of the volume: FAT dates start in 1980.
FIXED_DATE = 946684800  # 2000-01-01T00:00:00Z
MIB = 1024 * 1024

# How user-data may start for cloud-init to act on it (plus gzip's magic).
USER_DATA_STARTS = (b"#cloud-config", b"#!", b"#include", b"#cloud-boothook", b"#part-handler",
                    b"## template: jinja", b"Content-Type: multipart", b"\x1f\x8b")
_HOSTNAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")

# The user-data written when none is given. cloud-init refuses a #cloud-config
# that is not a mapping (a comment alone is YAML null), so this is the empty
# mapping: valid, and it changes nothing. Any key would make cloud-init act on
# the VM, which the image configures itself (nix/vm.nix: user, keys, SSH).
DEFAULT_USER_DATA = (b"#cloud-config\n"
                     b"# No user-data was given to `invoke cidata`: an empty mapping, so that\n"
                     b"# cloud-init applies nothing beyond the image's own configuration.\n"
                     b"{}\n")

# cloud-init's cloud-config schema, where Debian's cloud-init package installs it.
DEBIAN_CLOUD_CONFIG_SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json")
SCHEMA_MISSING_HINT = "apt-get install cloud-init, or set vm.cloud_config_schema to its schema-cloud-config-v1.json"


@dataclass(frozen=True)
class SeedFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Seed:
    """A seed disk as it was read back after writing."""

    path: Path
    format: str  # "vfat" or "iso9660"
    label: str
    size: int  # bytes
    digest: str  # sha256:... of the whole disk
    files: tuple[SeedFile, ...]


def read_input(path: Path, what: str, option: str) -> bytes:
    """The bytes of a user-given file, or a one-line ConfigError saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        reason = "it does not exist"
    except IsADirectoryError:
        reason = "it is a directory"
    except PermissionError:
        reason = "permission denied"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise ConfigError(f"cannot read the {what} file {path}: {reason}", f"pass a readable file to {option}")


def meta_data(*, instance_id: str, hostname: str) -> bytes:
    """NoCloud meta-data for `hostname`. JSON strings are valid YAML scalars, so any value is quoted safely."""
    check_hostname(hostname)
    return f"instance-id: {json.dumps(instance_id)}\nlocal-hostname: {json.dumps(hostname)}\n".encode()


def default_instance_id(user_data: bytes, network_config: bytes | None) -> str:
    """Changes when the user-data or network-config does, so that cloud-init applies the new one."""
    digest = hashlib.sha256(user_data + b"\0" + (network_config or b"")).hexdigest()
    return f"iid-{digest[:16]}"


def check_hostname(hostname: str) -> str:
    if not _HOSTNAME.match(hostname):
        raise ConfigError(f"'{hostname}' is not a valid host name",
                          "use 1 to 63 letters, digits and '-', not starting or ending with '-'")
    return hostname


def check_user_data(data: bytes, source: str, schema: Path | None = None) -> None:
    """Refuse, in one line, #cloud-config user-data that cloud-init would reject.

    It must be YAML and a mapping, and follow cloud-init's cloud-config
    schema: `schema`, default cloud-init's own where Debian installs it. When
    neither is there, the schema check is skipped and one info line says so.
    Other user-data (scripts, #include, MIME, jinja templates) cloud-init
    reads otherwise: it is written as given.
    """
    text = cloud_config_text(data)
    if text is None:
        if not data.startswith(USER_DATA_STARTS):
            log.warning("%s starts with neither #cloud-config nor #!: cloud-init may ignore it", source)
        return
    document = load_cloud_config(text, source)
    if schema is None:
        if not DEBIAN_CLOUD_CONFIG_SCHEMA.is_file():
            log.info("%s: checked as a YAML mapping only; the cloud-config schema check was skipped, as cloud-init's "
                     "schema is not installed (%s)", source, SCHEMA_MISSING_HINT)
            return
        schema = DEBIAN_CLOUD_CONFIG_SCHEMA
    problem = schema_problem(document, schema)
    if problem is not None:
        key_path, what = problem
        raise ConfigError(f"{source}: {key_path}: {what}",
                          f"correct it to what cloud-init's cloud-config schema allows ({schema})")


def cloud_config_text(data: bytes) -> str | None:
    """The text of user-data that cloud-init reads as cloud-config, None for any other kind.

    As cloud-init decides: gzip undone, then the kind is the longest known
    start of the text, blanks before it skipped and case ignored; so
    #cloud-config-archive and #cloud-config-jsonp are kinds of their own.
    """
    if data.startswith(b"\x1f\x8b"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    head = text.lstrip()[:32].lower()
    if head.startswith("#cloud-config") and not head.startswith(("#cloud-config-archive", "#cloud-config-jsonp")):
        return text
    return None


class _CloudInitLoader(yaml.SafeLoader):
    """cloud-init's YAML loader: the safe loader, reading !!python/unicode as a plain string."""


_CloudInitLoader.add_constructor("tag:yaml.org,2002:python/unicode", yaml.SafeLoader.construct_scalar)

YAML_HINT = "correct the YAML there (cloud-init would ignore the whole file)"
# PyYAML quotes what it found with %r. Its token names ('<block end>', '?')
# and single punctuation characters are YAML's own and kept; any other quoted
# text came from the file, which may hold secrets, and is left out.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_YAML_OWN = re.compile(r"'(?:<[a-z ]+>|[^\w\\'])'")


def load_cloud_config(text: str, source: str) -> dict[Any, Any]:
    """The mapping a #cloud-config document holds, or a one-line ConfigError naming where it is not one."""
    try:
        document = yaml.load(text, Loader=_CloudInitLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "top level"
        said = ": ".join(part for part in (exc.context, exc.problem) if part)
        said = _QUOTED.sub(lambda quoted: quoted.group() if _YAML_OWN.fullmatch(quoted.group()) else "...", said)
        raise ConfigError(f"{source}: {where}: is not valid YAML ({said})", YAML_HINT) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise ConfigError(f"{source}: line {line}, column {column}: is not valid YAML "
                          "(a control character YAML does not allow)", YAML_HINT) from None
    except yaml.YAMLError:
        raise ConfigError(f"{source}: top level: is not valid YAML", YAML_HINT) from None
    except (ValueError, OverflowError):  # the constructors' own errors quote the value: not shown
        raise ConfigError(f"{source}: top level: is not valid YAML (a value written as a date, or tagged as a "
                          "number, cannot be read as one)", "quote that value, or correct it") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: top level: is {_kind(document)}, not a mapping of cloud-config keys",
                          "write #cloud-config user-data as `key: value` lines (`{}` for none), "
                          "or make it a script that starts with #!")
    return document


def schema_problem(document: Mapping[Any, Any], schema: Path) -> tuple[str, str] | None:
    """The problem jsonschema finds most relevant in `document` checked against the schema file `schema`:
    (key path, what is wrong, in words that quote no value), or None when the document is valid."""
    from jsonschema.exceptions import best_match
    from referencing.exceptions import Unresolvable

    validator = _schema_validator(schema)
    try:
        error = best_match(validator.iter_errors(document))
    except Unresolvable as exc:
        raise ConfigError(f"the cloud-config schema {schema} refers to {getattr(exc, 'ref', 'a schema')}, which is "
                          "neither in it nor a file beside it",
                          "point vm.cloud_config_schema at cloud-init's schema-cloud-config-v1.json") from None
    return None if error is None else _describe(_focus(error, best_match), document)


def _focus(error: Any, best_match: Any) -> Any:
    """Into a oneOf or anyOf whose forms all refuse the value's type but one: that form's error.

    best_match stops at `users[0]` when a user is a mapping with an unknown
    key, as its string and list forms fail as much as its mapping form does.
    """
    while error.validator in ("oneOf", "anyOf") and error.context:
        forms: dict[Any, list[Any]] = {}
        for sub in error.context:  # a sub-error's schema path starts with the index of its form
            forms.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [subs for subs in forms.values()
                   if not any(sub.validator == "type" and not sub.relative_path for sub in subs)]
        if len(fitting) != 1:
            break
        error = best_match(fitting[0])
    return error


def _schema_validator(schema: Path) -> Any:
    """A jsonschema validator for the schema file, checking as cloud-init does."""
    from jsonschema import FormatChecker, validators
    from jsonschema.exceptions import SchemaError
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource
    from referencing.jsonschema import DRAFT4

    hint = "point vm.cloud_config_schema at cloud-init's schema-cloud-config-v1.json, or unset it"
    try:
        contents = json.loads(read_input(schema, "cloud-config schema", "vm.cloud_config_schema"))
    except ValueError as exc:
        raise ConfigError(f"the cloud-config schema {schema} is not JSON ({exc})", hint) from None
    # cloud-init's schemas are draft 4, and it checks with draft 4 whatever they say.
    cls = validators.validator_for(contents, default=validators.Draft4Validator)
    try:
        cls.check_schema(contents)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "top level"
        raise ConfigError(f"the cloud-config schema {schema} is not a JSON schema (at {where}: the metaschema's "
                          f"{exc.validator} check fails)", hint) from None
    # As cloud-init: YAML's !!binary values (bytes) count as strings.
    cls = validators.extend(cls, type_checker=cls.TYPE_CHECKER.redefine(
        "string", lambda _checker, value: isinstance(value, (str, bytes))))

    def beside(uri: str) -> Resource:
        """A schema referred to by URL is the file of that name beside this one, never fetched: cloud-init's
        versions.schema.cloud-config.json names schema-cloud-config-v1.json by its GitHub URL."""
        try:
            return Resource.from_contents(json.loads((schema.parent / uri.rpartition("/")[2]).read_bytes()),
                                          default_specification=DRAFT4)
        except (OSError, ValueError):
            raise NoSuchResource(ref=uri) from None

    return cls(contents, registry=Registry(retrieve=beside), format_checker=FormatChecker())


# JSON schema types in the words of YAML.
_TYPES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
          "number": "a number", "boolean": "true or false", "null": "null"}


def _kind(value: Any) -> str:
    """What a YAML value is, never what it says."""
    if value is None:
        return "empty (null)"
    for python, words in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                          (bytes, "binary"), (dict, "a mapping"), (list, "a list"),
                          (datetime.date, "a date")):
        if isinstance(value, python):
            return words
    return "a value of another kind"


def _either(types: Any) -> str:
    names = list(dict.fromkeys(_TYPES.get(t, str(t)) for t in ([types] if isinstance(types, str) else types)))
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _key_path(document: Any, path: Any) -> str:
    """`users[0].name`: mapping keys after dots (quoted when not plain), list indexes in brackets."""
    text, node = "", document
    for part in path:
        if isinstance(node, list):
            text += f"[{part}]"
        else:
            key = str(part)
            text += f".{key}" if re.fullmatch(r"[\w-]+", key) else f"[{json.dumps(key)}]"
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return text.lstrip(".") or "top level"


def _describe(error: Any, document: Any) -> tuple[str, str]:
    """A jsonschema error as (key path, problem); jsonschema's own messages quote the value, these do not."""
    path, kind, rule, value, schema = list(error.absolute_path), error.validator, error.validator_value, \
        error.instance, error.schema
    if kind == "additionalProperties" and isinstance(value, dict):
        patterns = schema.get("patternProperties", {})
        unknown = [key for key in value if key not in schema.get("properties", {})
                   and not any(re.search(pattern, str(key)) for pattern in patterns)]
        if unknown:
            others = "" if len(unknown) == 1 else " (nor is 1 other key beside it)" if len(unknown) == 2 else \
                f" (nor are {len(unknown) - 1} other keys beside it)"
            return _key_path(document, [*path, unknown[0]]), f"is not a key cloud-init knows here{others}"
    return _key_path(document, path), _problem(kind, rule, value, schema, error.context)


def _problem(kind: str, rule: Any, value: Any, schema: Mapping[str, Any], context: Any) -> str:
    if kind == "type":
        return f"must be {_either(rule)}, not {_kind(value)}"
    if kind in ("oneOf", "anyOf"):
        if not context:
            return "matches more than one of the forms cloud-init accepts for it"
        if all(sub.validator == "type" and not sub.relative_path for sub in context):
            return f"must be {_either([t for sub in context for t in _listed(sub.validator_value)])}, not {_kind(value)}"
        return "matches none of the forms cloud-init accepts for it"
    if kind == "required" and isinstance(value, dict):
        missing = [key for key in rule if key not in value]
        return f"lacks the required key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
    if kind == "enum":
        return f"must be one of {', '.join(json.dumps(v) for v in rule)}" if len(rule) <= 8 else \
            f"must be one of the {len(rule)} values the schema lists"
    if kind == "dependencies" and isinstance(value, dict):
        for key, needs in rule.items():
            if key in value and isinstance(needs, list) and any(need not in value for need in needs):
                return f"needs {', '.join(repr(n) for n in needs if n not in value)} beside {key!r}"
    exclusive = schema.get(f"exclusive{kind.capitalize()}") is True
    words = {
        "pattern": f"must match the pattern {rule}",
        "format": f"is not a valid {rule}",
        "minLength": "must not be empty" if rule == 1 else f"must be at least {rule} characters long",
        "maxLength": f"must be at most {rule} characters long",
        "minItems": "must not be an empty list" if rule == 1 else f"must have at least {rule} items",
        "maxItems": f"must have at most {rule} items",
        "minProperties": "must not be an empty mapping" if rule == 1 else f"must have at least {rule} keys",
        "maxProperties": f"must have at most {rule} keys",
        "minimum": f"must be {'more than' if exclusive else 'at least'} {rule}",
        "maximum": f"must be {'less than' if exclusive else 'at most'} {rule}",
        "multipleOf": f"must be a multiple of {rule}",
        "uniqueItems": "lists the same item twice",
        "not": "has a form cloud-init refuses for it",
        "additionalItems": "has more items than the schema allows",
        "additionalProperties": "has a key cloud-init does not know here",
        "const": f"must be {json.dumps(rule)}",
    }
    return words.get(kind, f"fails the schema's {kind} check")


def _listed(types: Any) -> list[Any]:
    return [types] if isinstance(types, str) else list(types)

def make_seed(
    output: Path,
    *,
    fmt: str = "vfat",
    user_data: Path | None = None,
    meta_data_file: Path | None = None,
    vendor_data: Path | None = None,
    network_config: Path | None = None,
    hostname: str | None = None,
    instance_id: str | None = None,
    cloud_config_schema: Path | None = None,
) -> Seed:
    """Write a NoCloud seed disk at `output` and return it as read back.

    Without `user_data`, DEFAULT_USER_DATA (an empty mapping) is written.
    #cloud-config user-data is checked first (see check_user_data) against
    `cloud_config_schema`, default cloud-init's own when installed. Without
    `meta_data_file`, meta-data is made from `hostname` and `instance_id`
    (default: one derived from the user-data).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown seed format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    if meta_data_file is not None and (hostname is not None or instance_id is not None):
        raise ConfigError("both a meta-data file and a host name or instance id were given",
                          "put local-hostname and instance-id in the meta-data file, or drop --meta-data")
    contents: dict[str, bytes] = {}
    if user_data is not None:
        contents["user-data"] = read_input(user_data, "user-data", "--user-data")
        check_user_data(contents["user-data"], str(user_data), cloud_config_schema)
    else:
        contents["user-data"] = DEFAULT_USER_DATA
    extra = {name: read_input(path, name, f"--{name}") for name, path in
             (("vendor-data", vendor_data), ("network-config", network_config)) if path is not None}
    if meta_data_file is not None:
        contents["meta-data"] = read_input(meta_data_file, "meta-data", "--meta-data")
    else:
        contents["meta-data"] = meta_data(
            instance_id=instance_id or default_instance_id(contents["user-data"], extra.get("network-config")),
            hostname=hostname or "nixos",
        )
    contents.update(extra)
    contents = {name: contents[name] for name in SEED_NAMES if name in contents}
    return write_seed(output, contents, fmt)


def write_seed(output: Path, contents: Mapping[str, bytes], fmt: str) -> Seed:
    """Make the disk beside `output`, check it, then rename it into place."""
    output = output.absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write under {output.parent}: {exc.strerror}", "choose a writable directory") from None
    if output.is_dir():
        raise ConfigError(f"{output} is a directory", "give the seed disk a file name, e.g. build/vm/cidata.img")
    with tempfile.TemporaryDirectory(prefix=".cidata-", dir=output.parent) as work:
        sources = {}
        for name, data in contents.items():
            source = Path(work) / name
            source.write_bytes(data)
            os.utime(source, (FIXED_DATE, FIXED_DATE))
            sources[name] = source
        partial = Path(work) / "disk"
        if fmt == "vfat":
            fat.make(partial, label=LABEL, size=vfat_size(contents), files=sources)
        else:
            iso.make(partial, volume_id=LABEL, files=sources, date=FIXED_DATE)
        seed = read_back(partial, fmt)
        verify(seed, contents)
        os.chmod(partial, 0o644)
        os.replace(partial, output)
    return Seed(output, seed.format, seed.label, seed.size, seed.digest, seed.files)


def vfat_size(contents: Mapping[str, bytes]) -> int:
    """Room for the files plus FAT12's own structures; at least the seed's 2 MiB."""
    needed = sum(len(data) + 4096 for data in contents.values()) + 256 * 1024
    return max(2 * MIB, -(-needed // MIB) * MIB)


def read_back(disk: Path, fmt: str) -> Seed:
    """Read a seed disk with the filesystem tools: label, files and their digests."""
    tool = fat if fmt == "vfat" else iso
    tool.check(disk)
    label = fat.label(disk) if fmt == "vfat" else iso.volume_id(disk)
    files = []
    with tempfile.TemporaryDirectory(prefix="cidata-read-") as out:
        for name in tool.names(disk):
            data = tool.extract(disk, name, Path(out) / name).read_bytes()
            files.append(SeedFile(name, len(data), hashlib.sha256(data).hexdigest()))
    return Seed(disk, fmt, label, disk.stat().st_size, f"sha256:{file_sha256(disk)}", tuple(files))


def verify(seed: Seed, contents: Mapping[str, bytes]) -> None:
    """The disk holds exactly `contents` under label cidata."""
    problems = []
    if seed.label != LABEL:
        problems.append(f"label is '{seed.label}', not '{LABEL}'")
    found = {f.name: f.sha256 for f in seed.files}
    if sorted(found) != sorted(contents):
        problems.append(f"files are {sorted(found)}, not {sorted(contents)}")
    problems += [f"{name} differs from its source" for name, data in contents.items()
                 if name in found and found[name] != hashlib.sha256(data).hexdigest()]
    if problems:
        raise ToolkitError(f"the {seed.format} seed disk read back wrong: {'; '.join(problems)}",
                           "this is a bug in the toolkit or the filesystem tools; the disk was not kept")


def detect_format(path: Path) -> str:
    """"iso9660" or "vfat", from the disk's first sectors; ConfigError for anything else."""
    try:
        with open(path, "rb") as disk:
            head = disk.read(32774)
    except OSError as exc:
        raise ConfigError(f"cannot read the seed disk {path}: {exc.strerror}", "make it with `invoke cidata`") from None
    if head[32769:32774] == b"CD001":
        return "iso9660"
    if len(head) >= 512 and head[510:512] == b"\x55\xaa" and b"FAT" in head[54:90]:
        return "vfat"
    raise ConfigError(f"{path} is neither a vfat nor an ISO 9660 disk", "make the seed disk with `invoke cidata`")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
