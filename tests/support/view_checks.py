"""Checks every platform's claims view shares: an untrusted claims map either becomes claims
that round-trip exactly, or is refused as MALFORMED (never another error, never a coercion)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keybroker.errors import Category, Malformed


def round_trips_or_is_malformed(from_dict: Callable[[Mapping[str, object]], Any],
                                data: Mapping[str, object]) -> None:
    """``from_dict(data)`` is MALFORMED, or its claims' ``as_dict`` maps back to them."""
    try:
        claims = from_dict(data)
    except Malformed as exc:
        assert exc.category is Category.MALFORMED
        return
    assert from_dict(claims.as_dict()) == claims
