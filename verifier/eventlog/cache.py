"""A bounded cache of parsed content, keyed by the SHA-256 of the bytes: a machine sends the
same boot log (CCEL, TCG log) with every request until it reboots, and parsing it is most of
the event-log cost.

Invariants:
- Only successful parses are kept (a parse that raises stores nothing); what is cached is the
  parse of exactly those bytes, so a replay against a quote is never skipped or cached.
- Bounded: the whole cache is dropped when it holds ``limit`` entries (no eviction order to
  game); a hit returns the same immutable value the parse produced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class ParsedCache(Generic[_T]):
    """Parsed values by content digest (module invariants)."""

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._values: dict[bytes, _T] = {}

    def get(self, content: bytes, parse: Callable[[], _T]) -> _T:
        """The parse of ``content`` (``parse()`` runs on a miss)."""
        key = hashlib.sha256(content).digest()
        found = self._values.get(key)
        if found is None:
            found = parse()
            if len(self._values) >= self._limit:
                self._values.clear()
            self._values[key] = found
        return found
