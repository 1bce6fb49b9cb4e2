"""Strict, typed reading of one map of a claims dict (the inverse of a claims ``as_dict``):
what every TEE's claims mapping (``<tee>/view.py``) is built from.

Invariants:
- Input is untrusted (files, YAML fixtures, recorded rows): every key must be present (except
  the ``added`` keys a claims type gained after it was first recorded: absent, they read as
  their neutral value, so claims recorded by an older verifier still load), no unknown key
  is accepted, nothing is coerced (a bool is not an integer, hex has its exact
  length), and every failure is ``Malformed`` (rule ``claims.schema``) naming the dotted path,
  the expected shape and the value found (described with its type).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from keybroker.errors import Malformed

U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
_HEX_RE = re.compile(r"[0-9a-fA-F]*")


def describe(value: object) -> str:
    """A short type-and-value description for error messages."""
    if isinstance(value, str):
        return "str " + (repr(value) if len(value) <= 80 else repr(value[:80] + "..."))
    if isinstance(value, Mapping):
        return "map"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"[:100]


class ClaimFields:
    """Strict typed access to one map of a claims dict; failures name the dotted path."""

    def __init__(self, data: object, path: str, keys: Collection[str],
                 added: Collection[str] = ()) -> None:
        self.path = path
        if not isinstance(data, Mapping):
            raise self._fail(path, "wrong type", "a map", describe(data))
        for key in data:
            if not isinstance(key, str) or (key not in keys and key not in added):
                raise self._fail(self._at(str(key)), "unknown claim",
                                 "one of " + ", ".join(sorted({*keys, *added})),
                                 repr(key)[:80])
        for key in sorted(keys):
            if key not in data:
                raise self._fail(self._at(key), "missing claim", "present", "absent")
        self.data: Mapping[str, object] = data

    @staticmethod
    def _fail(path: str, what: str, expected: str, actual: str) -> Malformed:
        return Malformed(f"claims: {what} at '{path}'", rule="claims.schema",
                         expected=expected, actual=actual)

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str, value: object) -> Malformed:
        return self._fail(self._at(key), "wrong value", expected, describe(value))

    def sub(self, key: str, keys: Collection[str]) -> ClaimFields:
        return ClaimFields(self.data[key], self._at(key), keys)

    def raw(self, key: str) -> object:
        return self.data[key]

    def is_null(self, key: str) -> bool:
        return self.data[key] is None

    def integer(self, key: str, maximum: int) -> int:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise self.fail(key, f"integer 0..{maximum}", value)
        return value

    def opt_integer(self, key: str, maximum: int) -> int | None:
        return None if self.data[key] is None else self.integer(key, maximum)

    def boolean(self, key: str) -> bool:
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.fail(key, "boolean", value)
        return value

    def string(self, key: str, *, pattern: re.Pattern[str] | None = None,
               choices: Collection[str] | None = None, what: str = "string") -> str:
        value = self.data[key]
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.fail(key, what, value)
        if choices is not None and value not in choices:
            raise self.fail(key, "one of " + ", ".join(sorted(choices)), value)
        return value

    def opt_string(self, key: str, *, choices: Collection[str] | None = None) -> str | None:
        return None if self.data[key] is None else self.string(key, choices=choices)

    def hex_bytes(self, key: str, size: int) -> bytes:
        value = self.data[key]
        if (not isinstance(value, str) or len(value) != 2 * size
                or not _HEX_RE.fullmatch(value)):
            raise self.fail(key, f"{2 * size} hex digits ({size} bytes)", value)
        return bytes.fromhex(value)

    def opt_hex_bytes(self, key: str, size: int) -> bytes | None:
        return None if self.data[key] is None else self.hex_bytes(key, size)

    def hex_int(self, key: str, digits: int) -> int:
        """A fixed-width hex integer without prefix (``f"{x:016x}"``)."""
        value = self.data[key]
        if (not isinstance(value, str) or len(value) != digits
                or not _HEX_RE.fullmatch(value)):
            raise self.fail(key, f"{digits} hex digits", value)
        return int(value, 16)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings (an absent ``added`` key is the empty tuple)."""
        value = self.data.get(key, [])
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "list of strings", value)
        return tuple(str(v) for v in value)

    def instant(self, key: str) -> datetime:
        value = self.data[key]
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(key, "RFC 3339 date-time with a time zone", value) from None
        elif isinstance(value, datetime):
            parsed = value
        else:
            raise self.fail(key, "RFC 3339 date-time with a time zone", value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise self.fail(key, "RFC 3339 date-time with a time zone", value)
        return parsed.astimezone(UTC)


def bits(fields: ClaimFields, raw: int, names: Mapping[str, int]) -> int:
    """``raw`` with every named bit replaced by its decoded boolean."""
    for name, bit in names.items():
        raw = raw | 1 << bit if fields.boolean(name) else raw & ~(1 << bit)
    return raw
