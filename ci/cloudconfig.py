"""#cloud-config user-data, checked as cloud-init checks it, before a seed disk is written.

It must be YAML (read with cloud-init's own loader) and a mapping, and, when
cloud-init's published cloud-config schema is at hand (where Debian's
cloud-init package installs it, or a file the caller names), it must follow
that schema, checked with jsonschema. A refusal names the file and the key
path, never a value from it: user-data may hold secrets.
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .core.errors import ConfigError
from .core.files import read_input

log = logging.getLogger(__name__)

# How user-data may start for cloud-init to act on it (plus gzip's magic).
USER_DATA_STARTS = (b"#cloud-config", b"#!", b"#include", b"#cloud-boothook", b"#part-handler",
                    b"## template: jinja", b"Content-Type: multipart", b"\x1f\x8b")

# cloud-init's cloud-config schema, where Debian's cloud-init package installs it.
DEBIAN_CLOUD_CONFIG_SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json")
SCHEMA_MISSING_HINT = "apt-get install cloud-init, or set vm.cloud_config_schema to its schema-cloud-config-v1.json"

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
