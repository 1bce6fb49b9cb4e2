"""Typed, strict access to one table of a TOML appraisal policy document.

Invariants:
- Every failure is ``Malformed`` with rule ``policy.schema`` and a reason that names the source
  file and the dotted key, with the expected and the found value (the found value described
  with its type, so ``true`` is never mistaken for an integer).
- Nothing is coerced: booleans are not integers, floats are not integers, a date without a
  time zone is not an instant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime

from keybroker.errors import Malformed

U64_MAX = (1 << 64) - 1
_HEX_INT_RE = re.compile(r"^(0x)?[0-9a-fA-F]{1,16}$")


def describe(value: object) -> str:
    """A short type-and-value description of a TOML value for error messages."""
    if isinstance(value, str):
        return "str " + (repr(value) if len(value) <= 100 else repr(value[:100] + "..."))
    if isinstance(value, dict):
        return "table"
    if value is None:
        return "absent"
    return f"{type(value).__name__} {value!r}"[:120]


class PolicyReader:
    """Typed access to one TOML table; every failure names the file and the dotted key."""

    def __init__(self, source: str, prefix: str, table: Mapping[str, object]) -> None:
        self.source = source
        self.prefix = prefix
        self.table = table

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, what: str, expected: str, actual: object) -> Malformed:
        """``actual`` is the offending value (described with its type) or, for unknown and
        missing keys, a ready-made description."""
        found = actual if what in ("unknown key", "missing key") else describe(actual)
        return Malformed(f"{self.source}: {what} at key '{self._key(key)}'", rule="policy.schema",
                         expected=expected, actual=str(found))

    def check_keys(self, required: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
        """Refuse unknown keys, then missing required keys."""
        for key in self.table:
            if key not in required | optional:
                raise self.fail(key, "unknown key", "one of " + ", ".join(
                    sorted(required | optional)), key)
        for key in sorted(required):
            if key not in self.table:
                raise self.fail(key, "missing key", "present", "absent")

    def has(self, key: str) -> bool:
        """Whether ``key`` is present in the table."""
        return key in self.table

    def table_at(self, key: str) -> PolicyReader:
        """The sub-table at ``key`` (which must be a table)."""
        value = self.table.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "wrong type", "table", value)
        return PolicyReader(self.source, self._key(key), value)

    def string(self, key: str) -> str:
        """A required string."""
        value = self.table.get(key)
        if not isinstance(value, str):
            raise self.fail(key, "wrong type", "string", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """A boolean, ``default`` when absent."""
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "wrong type", "boolean", value)
        return value

    def integer(self, key: str, value: object, low: int, high: int) -> int:
        """``value`` (found at ``key``) as an integer in ``low..high``."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "wrong type", "integer", value)
        if not low <= value <= high:
            raise self.fail(key, "value out of range", f"{low}..{high}", value)
        return value

    def array(self, key: str, default: list[object] | None = None) -> list[object]:
        """An array, ``default`` when absent (absent without a default is a wrong type)."""
        value = self.table.get(key, default)
        if not isinstance(value, list):
            raise self.fail(key, "wrong type", "array", value)
        return value

    def hex_values(self, key: str, size: int) -> frozenset[bytes]:
        """A set of ``size``-byte values written as hex strings; absent is the empty set."""
        out: set[bytes] = set()
        for item in self.array(key, []):
            if not isinstance(item, str):
                raise self.fail(key, "wrong element type", f"string of {size * 2} hex digits",
                                item)
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raise self.fail(key, "not hex", f"{size * 2} hex digits", item) from None
            if len(raw) != size:
                raise self.fail(key, "wrong length", f"{size * 2} hex digits",
                                f"{len(item)} characters")
            out.add(raw)
        return frozenset(out)

    def strings(self, key: str, default: list[object], pattern: re.Pattern[str],
                what: str) -> tuple[str, ...]:
        """A list of strings each matching ``pattern`` in full (de-duplicated, in order)."""
        out: list[str] = []
        for item in self.array(key, default):
            if not isinstance(item, str):
                raise self.fail(key, "wrong element type", what, item)
            if not pattern.fullmatch(item):
                raise self.fail(key, "invalid value", what, item)
            out.append(item)
        return tuple(dict.fromkeys(out))

    def u64_values(self, key: str) -> frozenset[int]:
        """A set of 64-bit values given as integers or hex strings ("e7", "0x00000000000000e7")."""
        out: set[int] = set()
        for item in self.array(key, []):
            if isinstance(item, str) and _HEX_INT_RE.fullmatch(item):
                out.add(int(item.removeprefix("0x"), 16))
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= U64_MAX:
                out.add(item)
            else:
                raise self.fail(key, "wrong element", "integer 0..2^64-1 or 1-16 hex digits",
                                item)
        return frozenset(out)

    def instant(self, key: str) -> datetime | None:
        """A TOML offset date-time or an RFC 3339 string with a time zone, as UTC; None when
        absent. A local date-time, a bare date or a zone-less string is refused."""
        value = self.table.get(key)
        if value is None:
            return None
        expected = "date-time with a time zone, e.g. 2026-06-30T00:00:00Z"
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise self.fail(key, "not an RFC 3339 date-time", expected, value) from None
        elif isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            raise self.fail(key, "date without a time", expected, value)
        else:
            raise self.fail(key, "wrong type", expected, value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise self.fail(key, "date-time without a time zone", expected, value)
        return parsed.astimezone(UTC)
