"""Typed, strict access to one mapping of a schema-validated document (an appraisal policy and
each TEE's section of it).

The document was already validated against the published JSON Schema
(``keybroker.document``); this reader is the compile step's second line of defence and the place
where the semantic checks that a schema cannot express report their errors. It is document
machinery, so it sits in the ground floor: every TEE's policy section compiles with it.

Invariants:
- Every failure is ``Malformed`` with rule ``policy.schema`` and a reason
  ``<source>:<line>: <what> at '<dotted path>'`` (the line of the offending node, or of its
  nearest present ancestor for a missing key), with the expected and the found value (the found
  value described with its type, so ``true`` is never mistaken for an integer).
- Nothing is coerced: booleans are not integers, floats are not integers, a date or a zone-less
  timestamp is not an instant.
- A reader never mutates the document.
- An empty list is refused wherever a list is allowed, for every field of every TEE: a list
  present in a policy is always an allow-list or a requirement, and ``[]`` would either match
  nothing or be read by someone as "anything". Leaving an optional field out is how a check is
  skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

from keybroker.document import RULE, Document
from keybroker.errors import Malformed
from keybroker.schema_wording import INSTANT, dotted

U64_MAX = (1 << 64) - 1
_HEX_INT_RE = re.compile(r"^(0x)?[0-9a-fA-F]{1,16}$")

Path_ = tuple[str | int, ...]
EMPTY_LIST_EXPECTED = "at least one entry (leave the field out to skip an optional check)"


class DocumentReader:
    """Typed access to the mapping at ``path`` of ``doc``; every failure names the line."""

    def __init__(self, doc: Document, path: Sequence[str | int],
                 table: Mapping[str, object]) -> None:
        self.doc = doc
        self.path: Path_ = tuple(path)
        self.table = table

    @property
    def source(self) -> str:
        """The document's name in messages."""
        return self.doc.source

    def at(self, *parts: str | int) -> Path_:
        """The document path of ``parts`` below this mapping."""
        return (*self.path, *parts)

    def line(self, *parts: str | int) -> int:
        """1-based line of ``parts`` below this mapping (nearest present ancestor if absent)."""
        return self.doc.line(self.at(*parts))

    def fail(self, key: str | int, what: str, expected: str, actual: object) -> Malformed:
        """``Malformed`` at ``key``; ``actual`` is the offending value (described with its
        type)."""
        return self.doc.fail(self.at(key), what, expected, actual)

    def fail_at(self, parts: Sequence[str | int], what: str, expected: str,
                actual: str) -> Malformed:
        """``Malformed`` at ``parts`` below this mapping with a ready-made ``actual``."""
        path = self.at(*parts)
        return Malformed(f"{self.source}:{self.doc.line(path)}: {what} at '{dotted(path)}'",
                         rule=RULE, expected=expected, actual=actual)

    def check_keys(self, required: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
        """Refuse unknown keys, then missing required keys."""
        allowed = required | optional
        for key in self.table:
            if key not in allowed:
                raise self.fail_at((key,), f"unknown field '{key}'",
                                   "one of: " + ", ".join(sorted(allowed)), key)
        for key in sorted(required):
            if key not in self.table:
                raise self.missing(key, f"field '{key}'")

    def missing(self, key: str, expected: str, actual: str = "absent") -> Malformed:
        """A required ``key`` is absent (or only part of a group is given)."""
        return self.fail_at((key,), f"missing field '{key}'", expected, actual)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present."""
        return key in self.table

    def table_at(self, key: str) -> DocumentReader:
        """The mapping at ``key`` (which must be a mapping)."""
        value = self.table.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "wrong type", "mapping", value)
        return DocumentReader(self.doc, self.at(key), value)

    def tables(self, key: str) -> list[DocumentReader]:
        """The list of mappings at ``key``; absent is the empty list."""
        out: list[DocumentReader] = []
        for index, item in enumerate(self.array(key, [])):
            if not isinstance(item, dict):
                raise self.doc.fail(self.at(key, index), "wrong element type", "mapping", item)
            out.append(DocumentReader(self.doc, self.at(key, index), item))
        return out

    def string(self, key: str, default: str | None = None) -> str:
        """A string (required when ``default`` is None)."""
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "wrong type", "string", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """A boolean, ``default`` when absent."""
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "wrong type", "boolean", value)
        return value

    def integer(self, key: str, value: object, low: int, high: int,
                where: Sequence[str | int] = ()) -> int:
        """``value`` (found at ``key``, or at ``where`` below it) as an integer in
        ``low..high``."""
        path = self.at(key, *where)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.doc.fail(path, "wrong type", "integer", value)
        if not low <= value <= high:
            raise self.doc.fail(path, "value out of range", f"{low}..{high}", value)
        return value

    def array(self, key: str, default: list[object] | None = None) -> list[object]:
        """A list, ``default`` when absent (absent without a default is a wrong type). A list
        that is present must not be empty (see the module invariants)."""
        value = self.table.get(key, default)
        if not isinstance(value, list):
            raise self.fail(key, "wrong type", "list", value)
        if not value and key in self.table:
            raise self.fail(key, "empty list", EMPTY_LIST_EXPECTED, value)
        return value

    def hex_values(self, key: str, size: int) -> frozenset[bytes]:
        """A set of ``size``-byte values written as hex strings; absent is the empty set."""
        out: set[bytes] = set()
        digits = f"{size * 2} hex digits"
        for index, item in enumerate(self.array(key, [])):
            path = self.at(key, index)
            if not isinstance(item, str):
                raise self.doc.fail(path, "wrong element type", f"string of {digits}", item)
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raise self.doc.fail(path, "not hex", digits, item) from None
            if len(raw) != size or len(item) != size * 2:
                raise self.fail_at((key, index), "wrong length", digits,
                                   f"{len(item)} characters")
            out.add(raw)
        return frozenset(out)

    def strings(self, key: str, default: list[object], pattern: re.Pattern[str],
                what: str) -> tuple[str, ...]:
        """A list of strings each matching ``pattern`` in full (de-duplicated, in order)."""
        out: list[str] = []
        for index, item in enumerate(self.array(key, default)):
            path = self.at(key, index)
            if not isinstance(item, str):
                raise self.doc.fail(path, "wrong element type", what, item)
            if not pattern.fullmatch(item):
                raise self.doc.fail(path, "invalid value", what, item)
            out.append(item)
        return tuple(dict.fromkeys(out))

    def u64_values(self, key: str) -> frozenset[int]:
        """A set of 64-bit values given as integers or hex strings ("e7", "0x00000000000000e7")."""
        out: set[int] = set()
        for index, item in enumerate(self.array(key, [])):
            if isinstance(item, str) and _HEX_INT_RE.fullmatch(item):
                out.add(int(item.removeprefix("0x"), 16))
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= U64_MAX:
                out.add(item)
            else:
                raise self.doc.fail(self.at(key, index), "wrong element",
                                    "integer 0..2^64-1 or 1-16 hex digits", item)
        return frozenset(out)

    def instant(self, key: str) -> datetime | None:
        """An aware date-time (or an RFC 3339 string with a time zone) as UTC; None when
        absent. A bare date, a zone-less date-time or a zone-less string is refused."""
        value = self.table.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(key, "not an RFC 3339 date-time", INSTANT, value) from None
        elif isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            raise self.fail(key, "date without a time", INSTANT, value)
        else:
            raise self.fail(key, "wrong type", INSTANT, value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise self.fail(key, "date-time without a time zone", INSTANT, value)
        return parsed.astimezone(UTC)
