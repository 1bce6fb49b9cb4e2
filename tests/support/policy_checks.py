"""Shared assertions for appraisal-policy loading tests (refusals are MALFORMED)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import strategies as st

from keybroker.errors import Category, Malformed
from verifier.policy.compile import load_policy, parse_policy


def write_doc(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def refused(path: Path, version: int = 0) -> Malformed:
    with pytest.raises(Malformed) as exc:
        load_policy(path, version)
    assert exc.value.category is Category.MALFORMED
    return exc.value


def refused_raw(raw: bytes, source: str = "t.yaml") -> Malformed:
    with pytest.raises(Malformed) as exc:
        parse_policy(raw, source)
    assert exc.value.category is Category.MALFORMED
    return exc.value


# Arbitrary YAML-able values for "any value raises only Malformed" properties.
ANY_VALUE = st.one_of(st.booleans(), st.integers(-5, 300), st.text(max_size=5),
                      st.lists(st.integers(-1, 5), max_size=3),
                      st.lists(st.text(max_size=6), max_size=2))
