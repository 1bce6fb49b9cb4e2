"""Recorded appraisals: round trip, retention prune, since(), background writer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from support.store_backends import StoreBackend

from keybroker.database import DatabaseTarget
from verifier.records import AppraisalRecord, RecordStore, RecordWriter

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVIDENCE: dict[str, object] = {"measurement": "ab" * 48, "policy": {"debug": False},
                               "reported_tcb": {"microcode": 209}}
WORKLOAD: dict[str, object] = {"name": "demo", "images": ["sha256:" + "cd" * 32]}


def _record(at: datetime, request_id: str = "r1", **kw: object) -> AppraisalRecord:
    fields: dict[str, object] = {
        "at": at, "request_id": request_id, "platform": "sev-snp",
        "evidence_digest": "ef" * 32, "evidence": EVIDENCE, "workload": WORKLOAD,
        "init_data": b"[workload]\nname = \"demo\"\n", "insecure": False,
        "decisions": {"snp-demo": {"policy_id": "snp-demo@3", "status": "affirming"}},
    }
    fields.update(kw)
    return AppraisalRecord(**fields)  # type: ignore[arg-type]


def _store(db: StoreBackend, days: int = 7) -> RecordStore:
    return RecordStore(db.target("state"), retention=timedelta(days=days))


def test_round_trip(db_backend: StoreBackend) -> None:
    """A record comes back equal, including JSON columns, bytes, flags and null parts."""
    store = _store(db_backend)
    deny = {"policy_id": "snp-demo@3", "status": "deny", "category": "TCB_POLICY",
            "rule": "snp.min_tcb.microcode", "reason": "below floor"}
    records = [
        _record(T0),
        _record(T0 + timedelta(seconds=1), "r2", evidence=None, workload=None, init_data=b"",
                insecure=True, decisions={"snp-demo": deny}),
    ]
    store.append_many(records)
    assert _store(db_backend).since(T0) == records


def test_since_is_inclusive_and_ordered(db_backend: StoreBackend) -> None:
    """since(at) returns records at or after ``at``, oldest first, across sub-seconds."""
    store = _store(db_backend)
    times = [T0 + timedelta(microseconds=500_000), T0, T0 + timedelta(seconds=2),
             T0 - timedelta(seconds=1)]
    store.append_many([_record(t, f"r{i}") for i, t in enumerate(times)])
    got = store.since(T0)
    assert [r.at for r in got] == [T0, T0 + timedelta(microseconds=500_000),
                                   T0 + timedelta(seconds=2)]
    assert store.since(T0 + timedelta(days=1)) == []


def test_retention_prunes_on_append(db_backend: StoreBackend) -> None:
    """Appending deletes records older than the window before the newest appended record."""
    store = _store(db_backend, days=7)
    store.append_many([_record(T0, "old"), _record(T0 + timedelta(days=1), "kept")])
    store.append_many([_record(T0 + timedelta(days=8), "new")])
    ids = [r.request_id for r in store.since(T0 - timedelta(days=30))]
    assert ids == ["kept", "new"]
    store.append_many([])  # nothing to append: nothing pruned either
    assert len(store.since(T0 - timedelta(days=30))) == 2


def test_retention_must_be_positive(db_backend: StoreBackend) -> None:
    """A zero retention is a configuration error (the service should not record at all)."""
    with pytest.raises(ValueError, match="retention"):
        _store(db_backend, days=0)


def test_writer_drains_on_close(db_backend: StoreBackend) -> None:
    """Every submitted record is written by the time close() returns."""
    store = _store(db_backend)
    writer = RecordWriter(store, batch_size=16)
    for i in range(500):
        writer.submit(_record(T0 + timedelta(milliseconds=i), f"r{i}"))
    writer.close()
    assert writer.written == 500 and writer.dropped == 0 and writer.failed == 0
    assert len(store.since(T0)) == 500
    writer.close()  # idempotent


class _GatedStore(RecordStore):
    """A real store whose writes wait for a gate (to fill the writer's queue)."""

    def __init__(self, target: DatabaseTarget, *, retention: timedelta) -> None:
        super().__init__(target, retention=retention)
        self.gate = threading.Event()

    def append_many(self, records: Sequence[AppraisalRecord]) -> None:
        self.gate.wait(timeout=10)
        super().append_many(records)


def test_writer_drops_when_full_and_after_close(db_backend: StoreBackend) -> None:
    """A full queue drops and counts instead of blocking; so does submit after close."""
    store = _GatedStore(db_backend.target("state"), retention=timedelta(days=7))
    writer = RecordWriter(store, max_queue=2, batch_size=1)
    for i in range(10):
        writer.submit(_record(T0, f"r{i}"))
    assert writer.dropped >= 7  # at most one in flight plus two queued
    store.gate.set()
    writer.close()
    assert writer.written + writer.dropped == 10
    assert len(store.since(T0)) == writer.written
    writer.submit(_record(T0, "late"))
    assert writer.written + writer.dropped == 11


class _CountingStore(RecordStore):
    """A real store that remembers the size of every batch it was given."""

    def __init__(self, target: DatabaseTarget, *, retention: timedelta) -> None:
        super().__init__(target, retention=retention)
        self.batches: list[int] = []

    def append_many(self, records: Sequence[AppraisalRecord]) -> None:
        self.batches.append(len(records))
        super().append_many(records)


def test_writer_lingers_to_batch_records_that_trickle_in(db_backend: StoreBackend) -> None:
    """Records arriving one by one within the linger go to the store in one batch (one
    wake-up and one transaction, not one per record), and close still writes them all."""
    store = _CountingStore(db_backend.target("state"), retention=timedelta(days=7))
    writer = RecordWriter(store, linger_seconds=0.5)
    writer.submit(_record(T0, "first"))
    time.sleep(0.05)
    for i in range(4):
        writer.submit(_record(T0, f"r{i}"))
    writer.close()
    assert store.batches == [5]
    assert writer.written == 5
    with pytest.raises(ValueError, match="linger"):
        RecordWriter(store, linger_seconds=-1)


def test_writer_isolates_a_bad_record(db_backend: StoreBackend) -> None:
    """A record that cannot be stored costs only itself, not its batch."""
    store = _store(db_backend)
    writer = RecordWriter(store, batch_size=64)
    writer.submit(_record(T0, "good1"))
    writer.submit(_record(T0, "bad", evidence={"x": {1, 2}}))  # a set is not JSON
    writer.submit(_record(T0, "good2"))
    writer.close()
    assert writer.failed == 1
    assert [r.request_id for r in store.since(T0)] == ["good1", "good2"]
