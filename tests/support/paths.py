"""Where the tests find the repository's files and the real evidence vectors."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
VECTORS = TESTS / "vectors"
CONFIG = ROOT / "config"
DOCS = ROOT / "docs"
