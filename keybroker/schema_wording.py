"""Wording for people: how a document's values and the JSON Schema errors about them are
described in ``Malformed`` messages.

Invariants:
- Every error names a dotted path (``rules[0].name``), what is wrong ("unknown field 'foo'",
  "missing field 'name'", "wrong type"), what was expected ("one of: a, b", "field 'x' when
  platform is 'tdx'") and what was found, described with its type so ``true`` is never
  mistaken for an integer.
- An ``anyOf`` / ``oneOf`` failure is explained by the errors of its branches, except where
  the branches only require fields: then the alternatives are named together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime

from jsonschema.exceptions import ValidationError

from keybroker.strict_yaml import NodePath

INSTANT = "date-time with a time zone, e.g. 2026-06-30T00:00:00Z"


def describe(value: object) -> str:
    """A short type-and-value description for error messages ("str 'x'", "int 3", "mapping")."""
    if isinstance(value, str):
        return "str " + (repr(value) if len(value) <= 100 else repr(value[:100] + "..."))
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return f"list of {len(value)}"
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return f"datetime {value.isoformat()}"
    if isinstance(value, date):
        return f"date {value.isoformat()}"
    return f"{type(value).__name__} {value!r}"[:120]


def dotted(path: Sequence[str | int]) -> str:
    """``rules[0].name`` for ``("rules", 0, "name")``; "(top level)" for the root."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _condition(root: Mapping[str, object], error: ValidationError) -> str:
    """" when platform is 'tdx'" for an error under ``if``/``then`` (" unless ..." under
    ``else``): the ``if`` schema's description, else its single ``const`` property."""
    parts = list(error.schema_path)
    branches = [i for i, part in enumerate(parts) if part in ("then", "else")]
    if not branches:
        return ""
    at: object = root
    for part in parts[:branches[-1]]:
        at = at[part] if isinstance(at, dict | list) else None  # type: ignore[index]
    cond = at.get("if") if isinstance(at, dict) else None
    if not isinstance(cond, dict):
        return ""
    word = "when" if parts[branches[-1]] == "then" else "unless"
    if isinstance(cond.get("description"), str):
        return f" {word} {cond['description']}"
    props = cond.get("properties")
    if isinstance(props, dict) and len(props) == 1:
        (name, rule), = props.items()
        if isinstance(rule, dict) and "const" in rule:
            return f" {word} {name} is {rule['const']!r}"
    return ""


def _alternatives(error: ValidationError) -> list[list[str]] | None:
    """For an anyOf/oneOf whose branches only require fields: the field lists."""
    branches: object = error.validator_value
    if error.validator not in ("anyOf", "oneOf") or not isinstance(branches, list):
        return None
    out = []
    for branch in branches:
        if not isinstance(branch, dict) or set(branch) != {"required"}:
            return None
        out.append([str(k) for k in branch["required"]])
    return out


def words(root: Mapping[str, object], error: ValidationError
           ) -> tuple[NodePath, str, str, str]:
    """(path, what, expected, actual) for one jsonschema error."""
    path: NodePath = tuple(error.absolute_path)
    keyword = error.validator
    value: object = error.validator_value
    sub = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    hint = str(sub.get("description", ""))
    alternatives = _alternatives(error)
    if alternatives is not None and not error.context:  # oneOf: more than one present
        return (path, "conflicting fields", "exactly one of: "
                + ", ".join(" + ".join(a) for a in alternatives), "more than one")
    if alternatives is not None:
        return (path, f"missing field '{alternatives[0][0]}'",
                " or ".join(" + ".join(a) for a in alternatives) + _condition(root, error),
                "absent")
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(sub.get("properties", {}))
        extra = sorted(k for k in instance if k not in allowed)
        return ((*path, extra[0]), f"unknown field '{extra[0]}'",
                "one of: " + ", ".join(allowed), extra[0])
    if keyword is None or (keyword == "not" and value == {}):  # ``false`` / ``{"not": {}}``
        name = path[-1] if path else "value"
        return (path, f"field '{name}' is not allowed{_condition(root, error)}",
                "not present", describe(instance))
    if keyword == "required" and isinstance(instance, dict) and isinstance(value, list):
        missing = next(k for k in value if k not in instance)
        return (path, f"missing field '{missing}'",
                f"field '{missing}'{_condition(root, error)}", "absent")
    if keyword == "dependentRequired" and isinstance(instance, dict) and isinstance(value, dict):
        for given, needs in value.items():
            absent = [k for k in needs if given in instance and k not in instance]
            if absent:
                return (path, f"missing field '{absent[0]}'",
                        ", ".join([given, *needs]) + " together", "absent")
    if keyword == "type":
        wanted = value if isinstance(value, str) else " or ".join(map(str, value or ()))  # type: ignore[call-overload]
        if sub.get("format") == "date-time":
            wanted = INSTANT
        return path, "wrong type", str(wanted), describe(instance)
    if keyword == "format" and value == "date-time":
        return path, "not a date-time with a time zone", INSTANT, describe(instance)
    if keyword == "enum":
        return (path, "value not allowed", "one of: " + ", ".join(map(str, value or ())),  # type: ignore[call-overload]
                describe(instance))
    if keyword == "const":
        return path, "value not allowed", str(value), describe(instance)
    if keyword == "pattern":
        return path, "invalid value", hint or f"matching {value}", describe(instance)
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
                "exclusiveMaximum": "<"}[keyword]
        return path, "value out of range", f"{sign} {value}", describe(instance)
    if keyword in ("minLength", "maxLength"):
        word = "at least" if keyword == "minLength" else "at most"
        unit = "character" if value == 1 else "characters"
        return path, "wrong length", f"{word} {value} {unit}", describe(instance)
    if keyword in ("minItems", "maxItems"):
        word = "at least" if keyword == "minItems" else "at most"
        unit = "item" if value == 1 else "items"
        return path, "wrong number of items", f"{word} {value} {unit}", describe(instance)
    if keyword == "uniqueItems":
        return path, "duplicate items", "no duplicate items", describe(instance)
    return path, "invalid value", hint or error.message[:200], describe(instance)


def leaves(error: ValidationError) -> Iterator[ValidationError]:
    """The errors that explain an anyOf/oneOf failure, else the error itself."""
    if error.context and _alternatives(error) is None:
        for sub in error.context:
            yield from leaves(sub)
    else:
        yield error
