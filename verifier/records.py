"""Recorded appraisals (for policy dry runs and TCB reports) in the verifier state database.

Invariants:
- A record holds what an appraisal saw and decided: the claims view parts (``evidence`` is
  ``claims.as_dict()``, ``workload`` is ``WorkloadClaims.as_dict()``), the init-data bytes and
  per-policy decisions. Never secrets or tokens; raw evidence only as its digest.
- Records older than the retention window are deleted in the same transaction that appends a
  batch; the window is measured back from the newest record of the batch (record times come
  from the caller's clock, so tests need no wall clock).
- ``RecordWriter.submit`` never blocks the RPC that calls it: records go to a bounded queue
  drained in batches by one daemon thread; when the queue is full the record is dropped and
  counted. After the first record of a batch the writer sleeps ``linger_seconds`` and then
  takes what queued meanwhile, so under load it wakes (and takes the GIL from the
  appraisals) once per batch, not once per record. ``close`` stops accepting records and
  waits until every queued one is written.
  A batch the store refuses (``Unavailable``) is logged and counted, never raised to a caller.
- Times are stored as fixed-width RFC 3339 UTC text, which sorts like the instant.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import KeybrokerError, Malformed
from keybroker.migrations import Migration, ddl
from keybroker.store_session import Session, immediate

_log = logging.getLogger(__name__)

DEFAULT_QUEUE = 10_000
DEFAULT_BATCH = 256
DEFAULT_LINGER_SECONDS = 0.1


@dataclass(frozen=True)
class AppraisalRecord:
    """One recorded appraisal."""

    at: datetime
    request_id: str
    platform: str
    evidence_digest: str
    evidence: dict[str, object] | None  # claims.as_dict(); None when verification failed first
    workload: dict[str, object] | None  # WorkloadClaims.as_dict(); None if never computed
    init_data: bytes
    insecure: bool
    decisions: dict[str, dict[str, str]]  # policy name -> {"policy_id", "status", ...}


def _stamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("record time must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: object, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Malformed(f"record {what} is not JSON", rule="records.json",
                        expected="JSON-able values", actual=str(exc)) from exc


def _object(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise Malformed("stored record is not a JSON object", rule="records.json",
                        expected="object", actual=type(value).__name__)
    return {str(k): v for k, v in value.items()}


def _decisions(text: str) -> dict[str, dict[str, str]]:
    value = _object(text) or {}
    out: dict[str, dict[str, str]] = {}
    for name, decision in value.items():
        if not isinstance(decision, dict):
            raise Malformed("stored decision is not a JSON object", rule="records.json",
                            expected="object", actual=type(decision).__name__)
        out[name] = {str(k): str(v) for k, v in decision.items()}
    return out


def records_schema(db: Session) -> None:
    """Create the appraisal record table (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS appraisal_records ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " at TEXT NOT NULL,"
        " request_id TEXT NOT NULL,"
        " platform TEXT NOT NULL,"
        " evidence_digest TEXT NOT NULL,"
        " evidence TEXT,"
        " workload TEXT,"
        " init_data BLOB NOT NULL,"
        " insecure INTEGER NOT NULL,"
        " decisions TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS appraisal_records_at ON appraisal_records (at)")


RECORD_MIGRATIONS = (Migration(1, "appraisal records", records_schema),)


_INSERT = (
    "INSERT INTO appraisal_records (at, request_id, platform, evidence_digest, evidence,"
    " workload, init_data, insecure, decisions)"
    " VALUES (?,?,?,?,?,?,?,?,?)"
)
_SINCE = (
    "SELECT at, request_id, platform, evidence_digest, evidence, workload, init_data,"
    " insecure, decisions"
    " FROM appraisal_records WHERE at >= ? ORDER BY at, seq"
)


def _row(record: AppraisalRecord) -> list[object]:
    return [
        _stamp(record.at), record.request_id, record.platform, record.evidence_digest,
        None if record.evidence is None else _json(record.evidence, "evidence"),
        None if record.workload is None else _json(record.workload, "workload"),
        bytes(record.init_data), int(record.insecure), _json(record.decisions, "decisions"),
    ]


def _from_row(row: tuple[Any, ...]) -> AppraisalRecord:
    return AppraisalRecord(
        at=datetime.fromisoformat(str(row[0])).astimezone(UTC),
        request_id=str(row[1]), platform=str(row[2]), evidence_digest=str(row[3]),
        evidence=_object(row[4]), workload=_object(row[5]), init_data=bytes(row[6]),
        insecure=bool(row[7]), decisions=_decisions(str(row[8])),
    )


class RecordStore:
    """Appraisal records with a retention window."""

    def __init__(self, target: DatabaseTarget, *, retention: timedelta,
                 busy_timeout_seconds: float = 5.0) -> None:
        if retention <= timedelta(0):
            raise ValueError("retention must be positive (do not record instead)")
        self.retention = retention
        self._db = open_database(target, component="records", migrations=RECORD_MIGRATIONS,
                                 busy_timeout_seconds=busy_timeout_seconds)

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    def append_many(self, records: Sequence[AppraisalRecord]) -> None:
        """Append ``records`` and delete those older than the retention window."""
        if not records:
            return
        rows = [_row(r) for r in records]
        cutoff = _stamp(max(r.at for r in records) - self.retention)

        def op(db: Session) -> None:
            with immediate(db):
                db.executemany(_INSERT, rows)
                db.execute("DELETE FROM appraisal_records WHERE at < ?", [cutoff])

        self._db.run(op)

    def since(self, at: datetime) -> list[AppraisalRecord]:
        """Records at or after ``at``, oldest first."""
        stamp = _stamp(at)
        rows = self._db.run(lambda db: db.execute(_SINCE, [stamp]).fetchall())
        return [_from_row(r) for r in rows]


_STOP = object()


class RecordWriter:
    """Writes records on a background thread; ``submit`` never blocks."""

    def __init__(self, store: RecordStore, *, max_queue: int = DEFAULT_QUEUE,
                 batch_size: int = DEFAULT_BATCH,
                 linger_seconds: float = DEFAULT_LINGER_SECONDS) -> None:
        if max_queue < 1 or batch_size < 1 or linger_seconds < 0:
            raise ValueError("max_queue and batch_size must be positive, linger not negative")
        self._store = store
        self._batch = batch_size
        self._linger = linger_seconds
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._dropped = 0
        self._failed = 0
        self._written = 0
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records refused because the queue was full or the writer closed."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Records lost because the store refused their batch."""
        return self._failed

    @property
    def written(self) -> int:
        """Records committed to the store."""
        return self._written

    def submit(self, record: AppraisalRecord) -> None:
        """Queue ``record`` for writing; drop and count it when the queue is full."""
        with self._lock:
            if not self._closed:
                try:
                    self._queue.put_nowait(record)
                except queue.Full:
                    pass
                else:
                    return
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 1000 == 0:
            _log.warning("appraisal record dropped (queue full or closed); dropped=%d", dropped)

    def close(self) -> None:
        """Stop accepting records, write every queued one, and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is _STOP
            batch = [] if stop else [item]
            if not stop and self._linger:
                time.sleep(self._linger)
            while not stop and len(batch) < self._batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            self._write([r for r in batch if isinstance(r, AppraisalRecord)])
            if stop:
                return

    def _write(self, batch: list[AppraisalRecord]) -> None:
        if not batch:
            return
        try:
            self._store.append_many(batch)
        except (Malformed, ValueError):
            if len(batch) > 1:  # one bad record must not cost the others
                for record in batch:
                    self._write([record])
                return
            self._count_failed(batch, "record refused")
            return
        except KeybrokerError as exc:
            self._count_failed(batch, exc.detail)
            return
        with self._lock:
            self._written += len(batch)

    def _count_failed(self, batch: list[AppraisalRecord], why: str) -> None:
        with self._lock:
            self._failed += len(batch)
        _log.error("appraisal records not written: %s; batch=%d", why, len(batch))
