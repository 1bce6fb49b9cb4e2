"""Test layout: ``unit/`` (one module's behaviour, no processes), ``integration/`` (real
processes and servers on loopback, marked ``integration`` here so ``-m "not integration"``
selects the fast suite), ``vectors/`` (real evidence with provenance and the tests that
replay it), ``support/`` (shared builders and environments, on ``sys.path`` via
``pythonpath``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.softhsm import SoftHsmToken, create_token
from support.store_backends import StoreBackend
from support.vendor_replay import VendorReplay, vendor_replay

from keybroker_cli.pg_cluster import PostgresCluster

_INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` as ``integration``."""
    for item in items:
        if _INTEGRATION in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """One SoftHSM2 token per test session (the PKCS#11 library is initialised once per
    process, so every in-process PKCS#11 test shares it; child processes inherit
    ``SOFTHSM2_CONF``)."""
    return create_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster per test session (fsync off: tests do not survive an
    OS crash, only process crashes and restarts)."""
    cluster = PostgresCluster.create(fsync=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """Each store test once on SQLite and once on PostgreSQL (its own schema)."""
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        store = StoreBackend("postgres", tmp_path, cluster.url)
    else:
        store = StoreBackend("sqlite", tmp_path)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def replay() -> Iterator[VendorReplay]:
    """A local server replaying recorded AMD KDS and Intel PCS responses (with faults)."""
    with vendor_replay() as server:
        yield server
