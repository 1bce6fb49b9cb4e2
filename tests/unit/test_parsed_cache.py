"""The parsed-content cache behind the boot-log paths: one parse per content, failures never
kept, bounded."""

from __future__ import annotations

import pytest

from keybroker.errors import Malformed
from verifier.eventlog.cache import ParsedCache


def test_one_parse_per_content_and_failures_are_not_kept() -> None:
    """Equal bytes parse once; a parse that raised runs again next time; the cache is
    dropped when full."""
    calls: list[bytes] = []
    cache: ParsedCache[int] = ParsedCache(limit=2)

    def parse(content: bytes) -> int:
        calls.append(content)
        if content == b"bad":
            raise Malformed("bad")
        return len(content)
    assert cache.get(b"abc", lambda: parse(b"abc")) == 3
    assert cache.get(b"abc", lambda: parse(b"abc")) == 3
    assert calls == [b"abc"]
    for _ in range(2):
        with pytest.raises(Malformed):
            cache.get(b"bad", lambda: parse(b"bad"))
    assert calls == [b"abc", b"bad", b"bad"]
    cache.get(b"de", lambda: parse(b"de"))
    cache.get(b"fgh", lambda: parse(b"fgh"))  # full: dropped, then this one kept
    cache.get(b"abc", lambda: parse(b"abc"))
    assert calls.count(b"abc") == 2
