"""Policy documents: strict YAML, validated against a published JSON Schema, with line numbers.

Invariants:
- Documents are parsed by ``keybroker.strict_yaml`` (one YAML 1.1 document of at most 1 MiB;
  no anchors, aliases, explicit tags, merge keys, duplicate or non-string keys; no ambiguous
  booleans or integers). Every refusal, there or here, is ``Malformed`` (rule
  ``policy.schema``) whose reason starts with ``<source>:<line>:``.
- Instants: the schema marks them ``"type": "string", "format": "date-time"``. An unquoted YAML
  timestamp with a time zone and a quoted RFC 3339 string with a time zone (as a JSON document
  would carry it) are both accepted there and become aware ``datetime`` values in UTC. A date,
  a zone-less timestamp or a zone-less string is refused ("date-time with a time zone").
  Elsewhere an unquoted zoned timestamp is the string of its UTC RFC 3339 form and an unquoted
  date or zone-less timestamp is refused (quote it to make it a string).
- ``Document.data`` therefore holds only dict/list/str/int/float/bool/None, plus aware UTC
  datetimes exactly where the schema says ``date-time``.
- Validation is JSON Schema Draft 2020-12 with ``integer`` meaning a Python ``int`` (never a
  bool, never ``1.0``). When several errors exist, the one with the smallest line is reported,
  worded for people (``keybroker.schema_wording``): "unknown field 'foo'", "missing field
  'name'", expected "one of: a, b".
- Schemas are read from the package (``keybroker/schemas/<name>.schema.json``) on first use,
  never at import time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import jsonschema
from jsonschema import Draft202012Validator

from keybroker.errors import Malformed
from keybroker.schema_wording import describe, dotted, leaves, words
from keybroker.strict_yaml import MAX_BYTES, RULE, NodePath, parse_yaml

__all__ = [
    "KINDS", "MAX_BYTES", "RULE", "SCHEMAS", "SCHEMA_ID", "Document", "NodePath",
    "document_kind", "load_document", "read_document", "schema", "schema_for_kind", "validate",
]

SCHEMAS = ("appraisal-policy", "release-rules", "reference-values", "policy-test-case")
KINDS: Mapping[str, str] = {
    "AppraisalPolicy": "appraisal-policy",
    "ReleaseRules": "release-rules",
    "ReferenceValues": "reference-values",
    "PolicyTestCase": "policy-test-case",
}
SCHEMA_ID = "https://keybroker.dev/schemas/v1/{name}.json"

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Document:
    """One validated document; ``lines`` maps node paths to 1-based lines."""

    source: str
    raw: bytes
    data: dict[str, object]
    lines: Mapping[NodePath, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """SHA-256 of the exact bytes (hex)."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def kind(self) -> str:
        """The ``kind:`` value (every published schema requires it)."""
        return str(self.data.get("kind", ""))

    def line(self, path: Sequence[str | int]) -> int:
        """1-based line of the node at ``path`` (its nearest present ancestor if absent)."""
        key = tuple(path)
        while key not in self.lines and key:
            key = key[:-1]
        return self.lines.get(key, 1)

    def fail(self, path: Sequence[str | int], what: str, expected: str,
             actual: object) -> Malformed:
        """A ``Malformed`` at ``path``; ``actual`` is the offending value (described with its
        type)."""
        return Malformed(f"{self.source}:{self.line(path)}: {what} at '{dotted(path)}'",
                         rule=RULE, expected=expected, actual=describe(actual))


# --- schemas --------------------------------------------------------------------------------

def _is_int(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int),
)


def _instant(value: object) -> datetime | None:
    """An RFC 3339 string with a time zone as an aware UTC datetime; None otherwise."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC)


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time")
    def _date_time(instance: object) -> bool:
        return not isinstance(instance, str) or _instant(instance) is not None

    return checker


@functools.cache
def _schema_text(name: str) -> str:
    if name not in SCHEMAS:
        raise Malformed(f"unknown document schema '{name}'", rule="policy.kind",
                        expected="one of: " + ", ".join(SCHEMAS), actual=name)
    return (resources.files("keybroker") / "schemas" / f"{name}.schema.json").read_text("utf-8")


def schema(schema_name: str) -> dict[str, object]:
    """The published JSON Schema ``schema_name`` (a fresh copy)."""
    loaded = json.loads(_schema_text(schema_name))
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return _Validator(schema(name), format_checker=_format_checker())  # type: ignore[no-any-return]


# --- data <-> validation view --------------------------------------------------------------

def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _view(value: object) -> object:
    """The JSON view that is validated: aware datetimes become RFC 3339 strings."""
    if isinstance(value, dict):
        return {k: _view(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_view(v) for v in value]
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return _rfc3339(value)
    return value


def _valid(validator: Draft202012Validator, instance: object, sub: object) -> bool:
    if not isinstance(sub, dict | bool):
        return True
    return next(iter(validator.descend(instance, sub)), None) is None


def _resolve(root: Mapping[str, object], sub: Mapping[str, object]) -> Mapping[str, object]:
    ref = sub.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return sub
    target: object = root
    for part in ref[2:].split("/"):
        assert isinstance(target, dict)
        target = target[part]
    assert isinstance(target, dict)
    return target


def _instants(validator: Draft202012Validator, root: Mapping[str, object], sub: object,
              value: object) -> object:
    """``value`` (valid against ``sub``) with date-time strings turned into datetimes."""
    if not isinstance(sub, dict):
        return value
    if sub.get("format") == "date-time" and isinstance(value, str):
        return _instant(value) or value
    target = _resolve(root, sub)
    if target is not sub:
        value = _instants(validator, root, target, value)
    branches = list(sub.get("allOf", []))
    branches += [b for k in ("anyOf", "oneOf") for b in sub.get(k, [])
                 if _valid(validator, value, b)]
    if "if" in sub:
        branch = sub.get("then") if _valid(validator, value, sub["if"]) else sub.get("else")
        branches.append(branch)
    for branch in branches:
        value = _instants(validator, root, branch, value)
    if isinstance(value, dict):
        props = sub.get("properties", {})
        extra = sub.get("additionalProperties")
        return {k: _instants(validator, root, props.get(k, extra), v) for k, v in value.items()}
    if isinstance(value, list) and "items" in sub:
        return [_instants(validator, root, sub["items"], v) for v in value]
    return value


def validate(data: object, lines: Mapping[NodePath, int], source: str, raw: bytes,
             schema_name: str) -> Document:
    """Validate already-parsed ``data`` against ``schema_name``; return the ``Document``."""
    validator = _validator(schema_name)
    root = schema(schema_name)
    doc = Document(source, raw, {}, dict(lines))
    if not isinstance(data, dict):
        raise doc.fail((), "the document is not a mapping", "a YAML mapping of fields", data)
    view = _view(data)
    candidates = []
    for error in validator.iter_errors(view):
        for leaf in leaves(error):
            path, what, expected, actual = words(root, leaf)
            # an unknown field is reported on its own line, at the mapping that holds it, and
            # before a missing field on the same line (a misspelt name explains both)
            unknown = what.startswith("unknown field")
            at = path[:-1] if unknown else path
            rank = 0 if unknown else 2 if what.startswith("missing field") else 1
            candidates.append((doc.line(path), rank, dotted(at), what, expected, actual))
    if candidates:
        line, _, where, what, expected, actual = min(candidates)
        raise Malformed(f"{source}:{line}: {what} at '{where}'", rule=RULE,
                        expected=expected, actual=actual)
    converted = _instants(validator, root, root, view)
    assert isinstance(converted, dict)
    return Document(source, raw, converted, dict(lines))


def load_document(raw: bytes, source: str, schema_name: str) -> Document:
    """Parse strict YAML ``raw`` (named ``source`` in errors) and validate it against the
    published schema ``schema_name``. Every failure is ``Malformed`` with ``source:line``."""
    _schema_text(schema_name)  # an unknown schema name fails before the document is read
    data, lines = parse_yaml(raw, source)
    return validate(data, lines, source, raw, schema_name)


def read_document(path: Path, schema_name: str) -> Document:
    """``load_document`` of the file at ``path`` (unreadable -> Malformed rule policy.file)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Malformed(f"{path}: cannot read document", rule="policy.file",
                        expected="a readable file", actual=exc.strerror or str(exc)) from None
    return load_document(raw, str(path), schema_name)


def document_kind(raw: bytes, source: str) -> str:
    """The top-level ``kind:`` string of a strict YAML document (Malformed if there is none)."""
    data, lines = parse_yaml(raw, source)
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        line = lines.get(("kind",), 1)
        raise Malformed(f"{source}:{line}: no document kind", rule=RULE,
                        expected="kind: one of " + ", ".join(KINDS), actual=describe(kind))
    return kind


def schema_for_kind(kind: str) -> str:
    """The schema name for a document ``kind`` (Malformed for an unknown kind)."""
    if kind not in KINDS:
        raise Malformed(f"unknown document kind '{kind}'", rule="policy.kind",
                        expected="one of: " + ", ".join(KINDS), actual=kind)
    return KINDS[kind]

