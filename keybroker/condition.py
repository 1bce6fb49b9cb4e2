"""CEL conditions: compiled once, checked against a sample at compile time, evaluated fail-closed.

Invariants:
- An expression is parsed and compiled (cel-python's compiled runner) once, by
  ``compile_condition``. It is refused there (``ConditionError``, one-line message) when it does
  not parse, names a variable that is not in the sample activation, names a field that the
  sample's maps do not have (outside ``has()``), or when evaluating it against the sample fails
  (type errors such as ``1 + "a"``) or yields anything but a boolean.
- ``Condition.evaluate`` returns a ``bool`` or raises ``ConditionError``: an evaluation error
  or a non-boolean result is never treated as true (callers deny).
- Activations are plain JSON-able Python values; datetimes become RFC 3339 strings ("...Z").
  Converting them to CEL values is the expensive part of an evaluation, so an ``Activation``
  converts each variable at most once and only when a condition names it; the conditions of
  one decision share one ``Activation``.
- cel-python logs every evaluation failure at ERROR level on its own loggers; those records
  are dropped by a filter installed on first compile (the failure reaches the caller as a
  ``ConditionError`` instead). The RE2 engine behind ``matches()`` writes its own parse errors
  straight to stderr, which no Python filter can stop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import celpy
from celpy import celtypes
from celpy.adapter import JSON, json_to_cel
from celpy.celparser import CELParseError

MAX_EXPRESSION = 4096
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TYPE_IDENTS = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map",
                          "null_type", "type", "timestamp", "duration", "google"})
_CEL_LOGGERS = ("celpy.Transpiler", "celpy.Evaluator", "celpy.celpy.evaluation")


class ConditionError(Exception):
    """A condition that cannot be compiled or evaluated (one-line message)."""


class _DropCelErrors(logging.Filter):
    """Drops cel-python's ERROR records: the failure is raised to our caller instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _quiet_cel() -> None:
    for name in _CEL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropCelErrors) for f in logger.filters):
            logger.addFilter(_DropCelErrors())


def _plain(value: object) -> object:
    """``value`` with datetimes as RFC 3339 strings and tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _message(exc: BaseException) -> str:
    """A one-line description of a cel-python error (its nested args unwrapped)."""
    args: object = exc.args
    parts: list[str] = []
    while isinstance(args, tuple) and args:
        head = args[0]
        if isinstance(head, str) and head != "evaluation error":
            parts.append(head)
        nested = args[2] if len(args) > 2 else None
        args = nested if isinstance(nested, tuple) else None
    text = ": ".join(dict.fromkeys(parts)) or type(exc).__name__
    return " ".join(text.split())[:300]


class Activation:
    """Plain variables, each converted to CEL values at most once, on first use."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = values
        self._cel: dict[str, object] = {}

    def cel(self, names: Iterable[str]) -> dict[str, object]:
        """The CEL values of ``names`` that exist (converted now if not yet)."""
        out: dict[str, object] = {}
        for name in names:
            if name not in self._values:
                continue
            if name not in self._cel:
                try:
                    self._cel[name] = json_to_cel(cast(JSON, _plain(self._values[name])))
                except (TypeError, ValueError) as exc:
                    raise ConditionError(f"activation is not JSON-like: {exc}"[:300]) from None
            out[name] = self._cel[name]
        return out


def _roots(expression: str, variables: Iterable[str]) -> frozenset[str]:
    """The variables whose identifier occurs in ``expression`` (an over-approximation: a name
    inside a string literal also counts, which only costs a conversion)."""
    return frozenset(v for v in variables
                     if re.search(rf"(?<![\w.]){re.escape(v)}(?!\w)", expression))


def _dotted(node: object) -> tuple[str, list[str]] | None:
    """(root variable, fields) for a ``a.b.c`` member chain, None otherwise."""
    fields: list[str] = []
    while getattr(node, "data", None) == "member" and len(node.children) == 1:  # type: ignore[attr-defined]
        node = node.children[0]  # type: ignore[attr-defined]
        if getattr(node, "data", None) == "member_dot":
            inner, name = node.children  # type: ignore[attr-defined]
            fields.insert(0, str(name))
            node = inner
        elif getattr(node, "data", None) == "primary":
            ident = node.children[0]  # type: ignore[attr-defined]
            if getattr(ident, "data", None) == "ident":
                return str(ident.children[0]), fields
            return None
        else:
            return None
    return None


def _walk(node: object, bound: set[str]) -> Iterator[tuple[str, list[str]]]:
    """Every member chain rooted at a name (skipping ``has()`` arguments); fills ``bound``
    with comprehension variables."""
    data = getattr(node, "data", None)
    children = getattr(node, "children", [])
    if (data == "primary" and children and getattr(children[0], "data", None) == "ident_arg"
            and str(children[0].children[0]) == "has"):
        return
    if data == "member_dot_arg" and len(children) == 3 and str(children[1]) in _MACROS:
        first = children[2].children[0] if children[2].children else None
        chain = _dotted(_descend_to_member(first))
        if chain is not None and not chain[1]:
            bound.add(chain[0])
    if data == "member":
        chain = _dotted(node)
        if chain is not None:
            yield chain
            if chain[1]:
                return
    for child in children:
        yield from _walk(child, bound)


def _descend_to_member(node: object) -> object:
    while node is not None and getattr(node, "data", None) != "member":
        kids = getattr(node, "children", [])
        node = kids[0] if len(kids) == 1 else None
    return node


def _check_names(tree: object, variables: Mapping[str, object]) -> tuple[str, ...]:
    """Refuse unknown variables and fields; return the dotted paths the expression names."""
    bound: set[str] = set()
    chains = list(_walk(tree, bound))
    named: list[str] = []
    for root, fields in chains:
        if root in bound or root in _TYPE_IDENTS:
            continue
        if root not in variables:
            raise ConditionError(f"unknown variable '{root}' (known: "
                                 + ", ".join(sorted(variables)) + ")")
        value: object = variables[root]
        for depth, name in enumerate(fields):
            if not isinstance(value, Mapping):
                break
            if name not in value:
                path = ".".join([root, *fields[:depth + 1]])
                raise ConditionError(f"unknown field '{path}'")
            value = value[name]
        named.append(".".join([root, *fields]))
    return tuple(dict.fromkeys(named))


@dataclass(frozen=True)
class Condition:
    """A compiled CEL boolean expression."""

    expression: str
    references: tuple[str, ...] = ()   # dotted paths it names, such as "evidence.policy.debug"
    roots: frozenset[str] = frozenset()  # the variables it uses
    _program: object = field(default=None, repr=False, compare=False)

    def evaluate(self, activation: Mapping[str, object] | Activation) -> bool:
        """True or False; ``ConditionError`` on an evaluation error or a non-bool result."""
        if self._program is None:
            raise ConditionError("condition was not compiled")
        shared = activation if isinstance(activation, Activation) else Activation(activation)
        cel = shared.cel(self.roots)
        try:
            result = self._program.evaluate(cel)  # type: ignore[attr-defined]
        except Exception as exc:  # any failure inside CEL denies
            raise ConditionError(_message(exc)) from None
        if isinstance(result, celtypes.BoolType | bool):
            return bool(result)
        kind = type(result).__name__.removesuffix("Type").lower()
        raise ConditionError(f"result is {kind}, not a boolean")


def compile_condition(expression: str, variables: Mapping[str, object]) -> Condition:
    """Compile ``expression`` once and check it against the SAMPLE activation ``variables``."""
    if not expression.strip():
        raise ConditionError("empty expression")
    if len(expression) > MAX_EXPRESSION:
        raise ConditionError(f"expression longer than {MAX_EXPRESSION} characters")
    _quiet_cel()
    env = celpy.Environment(runner_class=celpy.CompiledRunner)
    try:
        tree = env.compile(expression)
    except CELParseError as exc:
        where = f" at line {exc.line} column {exc.column}" if exc.line else ""
        raise ConditionError(f"not a valid CEL expression{where}") from None
    except Exception as exc:  # lark may raise others on odd input
        raise ConditionError(f"not a valid CEL expression: {_message(exc)}") from None
    sample = {name: _plain(value) for name, value in variables.items()}
    references = _check_names(tree, sample)
    try:
        program = env.program(tree)
    except Exception as exc:  # the transpiler refuses some
        raise ConditionError(f"cannot compile: {_message(exc)}") from None
    condition = Condition(expression, references, _roots(expression, sample), program)
    try:
        condition.evaluate(sample)
    except ConditionError as exc:
        raise ConditionError(f"fails on the sample claims: {exc}") from None
    return condition
