"""Test layout: ``unit/`` (one module's behaviour, no processes), ``integration/`` (real
processes and servers on loopback, marked ``integration`` here so ``-m "not integration"``
selects the fast suite), ``vectors/`` (real evidence with provenance and the tests that
replay it), ``support/`` (shared builders and environments, on ``sys.path`` via
``pythonpath``)."""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` as ``integration``."""
    for item in items:
        if _INTEGRATION in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)
