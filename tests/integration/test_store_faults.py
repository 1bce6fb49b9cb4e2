"""Store faults with real processes (hostile-evidence section 2): a challenge database
restored from a backup, a database held locked by another writer, audit storage full."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from support.agent_tls import secure_channel
from support.demo_stack import prepared_services, served_env
from support.release_attempts import Env, build_attempt, open_released, records_for, send

from keybroker.audit_log import AuditLog
from keybroker.errors import Category, KeybrokerError
from keybroker.v1 import broker_pb2_grpc
from keybroker_cli.demo import demo_collector
from keybroker_cli.demo_replicas import ReplicaSet, prepare_replicas
from keybroker_cli.demo_setup import DemoLayout
from keybroker_cli.launcher import ServiceProcess, keybroker_command
from keybroker_cli.pg_cluster import PostgresCluster


def release(env: Env) -> bytes:
    attempt = build_attempt(env, demo_collector(env.layout, "snp"))
    return open_released(attempt, send(env, attempt.request))


def test_fault_backup_restore_does_not_revive_challenges(tmp_path: Path) -> None:
    """broker.db restored from a backup taken while a challenge was outstanding: the
    challenge row is unused again, but the request that spent it is refused FRESHNESS (the
    audit log holds its intent); a fresh challenge releases."""
    with prepared_services(tmp_path / "demo") as served, served_env(served) as env:
        attempt = build_attempt(env, demo_collector(env.layout, "snp"))
        database = env.layout.broker / "broker.db"
        backup = tmp_path / "broker-backup.db"
        with sqlite3.connect(database) as source, sqlite3.connect(backup) as target:
            source.backup(target)  # the online backup API: a consistent copy
        assert open_released(attempt, send(env, attempt.request)) == served.secret
        served.broker.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        backup.rename(database)
        restarted = ServiceProcess.start("broker", keybroker_command(
            "broker", "serve", "--config", str(env.layout.broker_config),
            "--insecure-simulator"), log_path=env.layout.broker / "broker.log")
        served.broker = restarted
        try:
            with served_env(served) as again:
                with pytest.raises(KeybrokerError) as exc:
                    send(again, attempt.request)
                assert exc.value.category is Category.FRESHNESS
                records = records_for(again, attempt.request.request_id)
                assert [r["kind"] for r in records].count("released") == 1
                assert release(again) == served.secret
        finally:
            restarted.stop()


def test_fault_database_locked_is_unavailable_then_recovers(tmp_path: Path) -> None:
    """Another process holds broker.db's write lock: a release is refused UNAVAILABLE after
    bounded retries (no key, no hang); once the lock is gone releases work again."""
    with prepared_services(tmp_path / "demo") as served, served_env(served) as env:
        attempt = build_attempt(env, demo_collector(env.layout, "snp"))
        blocker = sqlite3.connect(env.layout.broker / "broker.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            began = time.monotonic()
            with pytest.raises(KeybrokerError) as exc:
                send(env, attempt.request)
            assert exc.value.category is Category.UNAVAILABLE
            assert time.monotonic() - began < 19  # bounded: under the client's deadline
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert release(env) == served.secret


def test_fault_audit_storage_full_releases_nothing(postgres_cluster: PostgresCluster,
                                                   tmp_path: Path) -> None:
    """The audit log's storage fills up (a file size limit on the broker; its other state
    is in PostgreSQL): releases are refused UNAVAILABLE from then on, and every secret that
    did leave has its intent and released records."""
    url = postgres_cluster.database("auditfull")
    layout = DemoLayout(tmp_path / "demo", broker_settings='audit_database = "audit.db"\n')
    prepare_replicas(layout, url, verifier_settings="workers = 1\n")
    replicas = ReplicaSet(layout, url)
    try:
        replicas.start_verifier()
        broker = replicas.start_broker(wrapper=("prlimit", f"--fsize={256 * 1024}", "--"))
        received: list[str] = []
        refused: list[Category] = []
        channel = secure_channel(layout, broker.address)
        env = Env(layout, b"", replicas.verifiers[0], broker, channel,
                  broker_pb2_grpc.KeyBrokerStub(channel))
        for _ in range(300):
            attempt = build_attempt(env, demo_collector(layout, "snp"))
            try:
                open_released(attempt, send(env, attempt.request))
                received.append(attempt.request.request_id)
            except KeybrokerError as err:
                refused.append(err.category)
                if len(refused) >= 3:
                    break
        channel.close()
        assert received and refused == [Category.UNAVAILABLE] * 3
    finally:
        replicas.stop()
    log = AuditLog(layout.broker / "audit.db", clock=time.time)
    kinds = {(r.entry.request_id, r.entry.kind) for r in log.records()}
    assert all((rid, "intent") in kinds and (rid, "released") in kinds for rid in received)
    assert log.verify_chain() > 0
