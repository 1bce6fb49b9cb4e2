"""Broker audit log: hash chain verifies, edits/deletions/truncation show, append-only."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import pytest
from support.store_backends import RawConnection, RawError, StoreBackend

from keybroker.audit_log import GENESIS, AuditEntry, AuditLog, record_hash
from keybroker.errors import Category, FreshnessError, Malformed, Unavailable

T0 = 1_750_000_000.0


def _log(db_backend: StoreBackend) -> AuditLog:
    return AuditLog(db_backend.target("audit"), clock=lambda: T0)


def _fill(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.append(AuditEntry(request_id=f"r{i}", kind="denied", category="FRESHNESS",
                              reason=f"rule=challenge.single-use {i}", evidence_digest="ab" * 32,
                              policy_ids=("snp-demo@1",), keys=("demo/a@1",),
                              agent_key_fingerprint="cd" * 32, challenge_id=f"c{i}"))


def _raw(db_backend: StoreBackend) -> RawConnection:
    conn = db_backend.raw("audit")
    conn.drop_trigger("audit_no_update", "audit")  # an attacker with write access to the store
    conn.drop_trigger("audit_no_delete", "audit")
    return conn


def test_chain_verifies_and_links(db_backend: StoreBackend) -> None:
    """Each record links to the previous hash; verify_chain counts them."""
    log = _log(db_backend)
    assert log.verify_chain() == 0
    assert log.head() == GENESIS
    _fill(log)
    records = log.records()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert log.verify_chain() == 5
    assert log.verify_chain(expect_head=records[2].hash) == 5
    assert [r.entry.request_id for r in log.records(request_id="r3")] == ["r3"]


def test_edited_record_detected(db_backend: StoreBackend) -> None:
    """Changing one field of one record breaks the chain (Malformed, rule audit.chain)."""
    log = _log(db_backend)
    _fill(log)
    _raw(db_backend).execute("UPDATE audit SET category = 'NONE' WHERE seq = 3")
    with pytest.raises(Malformed) as exc:
        log.verify_chain()
    assert exc.value.category is Category.MALFORMED
    assert exc.value.rule == "audit.chain"
    assert "seq 3" in exc.value.actual


def test_rehashed_record_detected_by_next_link(db_backend: StoreBackend) -> None:
    """Editing a record and recomputing its own hash still breaks the next record's link."""
    log = _log(db_backend)
    _fill(log)
    rec = log.records()[1]
    forged = AuditEntry(**{**rec.entry.__dict__, "kind": "released"})
    new_hash = record_hash(rec.seq, rec.time, forged, rec.prev_hash)
    _raw(db_backend).execute("UPDATE audit SET kind = 'released', hash = ? WHERE seq = 2",
                           [new_hash])
    with pytest.raises(Malformed) as exc:
        log.verify_chain()
    assert "seq 3" in exc.value.actual


def test_deleted_record_detected(db_backend: StoreBackend) -> None:
    """Removing a record from the middle shows as a gap."""
    log = _log(db_backend)
    _fill(log)
    _raw(db_backend).execute("DELETE FROM audit WHERE seq = 2")
    with pytest.raises(Malformed):
        log.verify_chain()


def test_truncation_detected_with_known_head(db_backend: StoreBackend) -> None:
    """Dropping the tail is caught when the verifier knows a head hash seen earlier."""
    log = _log(db_backend)
    _fill(log)
    head = log.head()
    _raw(db_backend).execute("DELETE FROM audit WHERE seq >= 4")
    assert log.verify_chain() == 3
    with pytest.raises(Malformed) as exc:
        log.verify_chain(expect_head=head)
    assert "truncated" in exc.value.reason


def test_append_only_triggers(db_backend: StoreBackend) -> None:
    """UPDATE and DELETE through SQL are refused by the store itself."""
    log = _log(db_backend)
    _fill(log, 1)
    conn = db_backend.raw("audit")
    for sql in ("UPDATE audit SET reason = ''", "DELETE FROM audit", "TRUNCATE audit"):
        if sql.startswith("TRUNCATE") and not db_backend.postgres:
            continue  # SQLite has no TRUNCATE
        with pytest.raises(RawError, match="append-only"):
            conn.execute(sql)
    assert log.verify_chain() == 1


def test_reconcile_marks_dangling_intents(db_backend: StoreBackend) -> None:
    """An intent without outcome (crash) becomes an 'unknown' record at the next start."""
    log = _log(db_backend)
    log.append(AuditEntry(request_id="done", kind="intent", keys=("demo/a@1",)))
    log.append(AuditEntry(request_id="done", kind="released", keys=("demo/a@1",)))
    log.append(AuditEntry(request_id="crashed", kind="intent", keys=("demo/a@2",)))
    assert _log(db_backend).reconcile() == 1
    kinds = [(r.entry.request_id, r.entry.kind) for r in log.records()]
    assert kinds[-1] == ("crashed", "unknown")
    assert log.records()[-1].entry.keys == ("demo/a@2",)
    assert _log(db_backend).reconcile() == 0
    assert log.verify_chain() == 4


def test_durable_settings(tmp_path: Path) -> None:
    """The audit database runs WAL with synchronous=FULL."""
    log = AuditLog(tmp_path / "audit.db", clock=lambda: T0)

    def pragmas(db: object) -> tuple[str, int]:
        return (db.execute("PRAGMA journal_mode").fetchone()[0],  # type: ignore[attr-defined]
                db.execute("PRAGMA synchronous").fetchone()[0])  # type: ignore[attr-defined]

    assert log._db.run(pragmas) == ("wal", 2)


def test_sink_failure_is_unavailable(tmp_path: Path) -> None:
    """A locked audit database makes append fail with UNAVAILABLE (bounded, no hang)."""
    log = AuditLog(tmp_path / "audit.db", clock=lambda: T0, busy_timeout_seconds=0.05)
    blocker = sqlite3.connect(str(tmp_path / "audit.db"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Unavailable) as exc:
            log.append(AuditEntry(request_id="r", kind="denied"))
        assert exc.value.category is Category.UNAVAILABLE
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_unknown_kind_rejected(db_backend: StoreBackend) -> None:
    """Only the documented record kinds can be written."""
    with pytest.raises(ValueError, match="kind"):
        _log(db_backend).append(AuditEntry(request_id="r", kind="allowed"))


def test_intent_is_first_for_its_challenge(db_backend: StoreBackend) -> None:
    """A second release intent for one challenge is refused FRESHNESS in the append's own
    transaction (a restored challenge store cannot spend a challenge twice)."""
    log = _log(db_backend)
    log.append(AuditEntry(request_id="a", kind="intent", challenge_id="c1"),
               first_for_challenge=True)
    log.append(AuditEntry(request_id="a", kind="released", challenge_id="c1"))
    with pytest.raises(FreshnessError) as exc:
        log.append(AuditEntry(request_id="b", kind="intent", challenge_id="c1"),
                   first_for_challenge=True)
    assert exc.value.category is Category.FRESHNESS and exc.value.rule == "challenge.audit"
    log.append(AuditEntry(request_id="c", kind="intent", challenge_id="c2"),
               first_for_challenge=True)
    assert [r.entry.request_id for r in log.records()] == ["a", "a", "c"]


def test_concurrent_appends_share_commits_and_stay_one_chain(db_backend: StoreBackend) -> None:
    """Sixteen threads appending at once: every record is stored once, the chain verifies,
    and fewer commits than records were needed (group commit)."""
    log = _log(db_backend)
    barrier = threading.Barrier(16)

    def append(i: int) -> None:
        barrier.wait()
        log.append(AuditEntry(request_id=f"r{i}", kind="denied", category="FRESHNESS"))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert log.verify_chain() == 16
    assert sorted(r.entry.request_id for r in log.records()) == sorted(f"r{i}" for i in range(16))
    assert log._group.batches < 16
