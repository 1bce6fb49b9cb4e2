"""Append-only, hash-chained audit log (architecture invariant 6).

Invariants:
- Records are only appended (UPDATE and DELETE are refused by triggers). Each record stores
  the SHA-256 of the previous record's hash and its own canonical content, so editing,
  reordering or removing a record in the middle breaks ``verify_chain``; removing records
  at the tail is detected when the caller passes the head hash it last saw.
- The audit database is its own SQLite file with ``synchronous=FULL``: ``append`` returns only
  after the record is committed durably. A release writes an ``intent`` record before the
  response leaves and an outcome (``released``/``denied``) after; a denial writes a
  ``denied`` record with its category. Intents left without outcome (crash) become
  ``unknown`` records at the next start of their replica, or once older than the grace
  period for a replica that never returns (``reconcile``).
- Replicas sharing one log append under the store's write lock (SQLite's, or PostgreSQL's
  advisory lock): one linear chain, each record naming the replica that wrote it.
- Records never contain secret bytes, tokens or raw evidence: digests, ids, versions and the
  operator reason only.
- Any failure to write is ``Unavailable`` (so the caller releases nothing).
- Concurrent appends share one transaction (``keybroker.group_commit``): one durable commit
  covers the records that arrived during the previous one, and each ``append`` still
  returns only after its own record is committed.
- With an audit key (``mac``), a keyed checkpoint (``keybroker.audit_checkpoint``) covers the
  records every ``checkpoint_every`` appends and at shutdown (``checkpoint``). It is written in
  its own transaction after the record: a checkpoint that cannot be written (HSM down) is
  logged and retried on the next append, and never loses or blocks the record itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from keybroker.audit_checkpoint import (
    Checkpoint,
    Mac,
    checkpoint_schema,
    read_checkpoints,
    verify_checkpoints,
    write_checkpoint,
)
from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import FreshnessError, KeybrokerError, Malformed, Unavailable
from keybroker.group_commit import GroupCommit
from keybroker.migrations import Migration, ddl, refuse, sqlite_columns
from keybroker.store_session import Session, immediate

_log = logging.getLogger(__name__)

Clock = Callable[[], float]

GENESIS = "0" * 64
KINDS = ("intent", "released", "denied", "unknown", "admin")


@dataclass(frozen=True)
class AuditEntry:
    """What the caller records (the store adds seq, time and the chain hashes)."""

    request_id: str
    kind: str
    category: str = ""
    reason: str = ""
    evidence_digest: str = ""
    policy_ids: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()          # "<key id>@<version>"
    agent_key_fingerprint: str = ""     # hex SHA-256 of the agent's raw public key
    challenge_id: str = ""
    principal: str = ""                 # admin calls: the authenticated principal
    replica: str = ""                   # the broker replica that wrote it (releases)


@dataclass(frozen=True)
class AuditRecord:
    """A stored record."""

    seq: int
    time: float
    entry: AuditEntry
    prev_hash: str
    hash: str = field(default="")

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (for ``audit list --json``)."""
        out: dict[str, object] = {"seq": self.seq, "time": self.time}
        entry = asdict(self.entry)
        entry["policy_ids"] = list(self.entry.policy_ids)
        entry["keys"] = list(self.entry.keys)
        out.update(entry)
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


def record_hash(seq: int, time: float, entry: AuditEntry, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the record content and the previous hash."""
    body = {"seq": seq, "time": repr(time), "prev_hash": prev_hash, **asdict(entry)}
    body["policy_ids"] = list(entry.policy_ids)
    body["keys"] = list(entry.keys)
    for added in ("principal", "replica"):  # records from before these fields hash as they did
        if not body[added]:
            del body[added]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def audit_schema(db: Session) -> None:
    """Create the audit and checkpoint tables and their append-only triggers (idempotent)."""
    checkpoint_schema(db)
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS audit ("
        " seq INTEGER PRIMARY KEY,"
        " time REAL NOT NULL,"
        " request_id TEXT NOT NULL,"
        " kind TEXT NOT NULL,"
        " category TEXT NOT NULL,"
        " reason TEXT NOT NULL,"
        " evidence_digest TEXT NOT NULL,"
        " policy_ids TEXT NOT NULL,"
        " keys TEXT NOT NULL,"
        " agent_key_fingerprint TEXT NOT NULL,"
        " challenge_id TEXT NOT NULL,"
        " prev_hash TEXT NOT NULL,"
        " hash TEXT NOT NULL)"
    )
    if db.dialect == "sqlite" and "principal" not in sqlite_columns(db, "audit"):
        db.execute("ALTER TABLE audit ADD COLUMN principal TEXT NOT NULL DEFAULT ''")
    elif db.dialect == "postgresql":
        db.execute("ALTER TABLE audit ADD COLUMN IF NOT EXISTS principal TEXT NOT NULL"
                   " DEFAULT ''")
    db.execute("CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id)")
    for op in ("UPDATE", "DELETE"):
        refuse(db, f"audit_no_{op.lower()}", "audit", op, "audit log is append-only")


def _replica_column(db: Session) -> None:
    ddl(db, "ALTER TABLE audit ADD COLUMN replica TEXT NOT NULL DEFAULT ''")


def _challenge_index(db: Session) -> None:
    db.execute("CREATE INDEX IF NOT EXISTS audit_challenge ON audit (challenge_id)"
               " WHERE kind = 'intent'")


AUDIT_MIGRATIONS = (Migration(1, "audit records and checkpoints", audit_schema),
                    Migration(2, "the broker replica of each record", _replica_column),
                    Migration(3, "release intents by challenge", _challenge_index))


_SELECT_ALL = (
    "SELECT seq, time, request_id, kind, category, reason, evidence_digest, policy_ids, keys,"
    " agent_key_fingerprint, challenge_id, prev_hash, hash, principal, replica FROM audit"
    " ORDER BY seq"
)
_SELECT_REQUEST = (
    "SELECT seq, time, request_id, kind, category, reason, evidence_digest, policy_ids, keys,"
    " agent_key_fingerprint, challenge_id, prev_hash, hash, principal, replica FROM audit"
    " WHERE request_id = ? ORDER BY seq"
)
_SELECT_DANGLING = (
    "SELECT seq, time, request_id, kind, category, reason, evidence_digest, policy_ids, keys,"
    " agent_key_fingerprint, challenge_id, prev_hash, hash, principal, replica FROM audit a"
    " WHERE kind = 'intent' AND ({wanted}) AND NOT EXISTS (SELECT 1 FROM audit b"
    " WHERE b.request_id = a.request_id AND b.seq > a.seq"
    " AND b.kind IN ('released', 'denied', 'unknown')) ORDER BY seq"
)
_INSERT = (
    "INSERT INTO audit (seq, time, request_id, kind, category, reason, evidence_digest,"
    " policy_ids, keys, agent_key_fingerprint, challenge_id, prev_hash, hash, principal,"
    " replica) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _from_row(row: tuple[Any, ...]) -> AuditRecord:
    entry = AuditEntry(
        request_id=str(row[2]),
        kind=str(row[3]),
        category=str(row[4]),
        reason=str(row[5]),
        evidence_digest=str(row[6]),
        policy_ids=tuple(json.loads(str(row[7]))),
        keys=tuple(json.loads(str(row[8]))),
        agent_key_fingerprint=str(row[9]),
        challenge_id=str(row[10]),
        principal=str(row[13]),
        replica=str(row[14]),
    )
    return AuditRecord(int(row[0]), float(row[1]), entry, str(row[11]), str(row[12]))


class AuditLog:
    """The broker's audit sink."""

    def __init__(self, target: DatabaseTarget, *, clock: Clock,
                 busy_timeout_seconds: float = 2.0, mac: Mac | None = None,
                 checkpoint_every: int = 100) -> None:
        self._db = open_database(target, component="audit", migrations=AUDIT_MIGRATIONS,
                                 synchronous="FULL", busy_timeout_seconds=busy_timeout_seconds)
        self._clock = clock
        self._mac = mac
        self._every = checkpoint_every
        # Called with (seconds, succeeded) after every append (metrics).
        self.observer: Callable[[float, bool], None] | None = None
        self._group: GroupCommit[tuple[AuditEntry, bool], AuditRecord] = GroupCommit(
            lambda batch: self._db.run(lambda db: self._write(db, batch)))

    def _write(self, db: Session, batch: Sequence[tuple[AuditEntry, bool]]
               ) -> list[AuditRecord | BaseException]:
        """Append ``batch`` in one transaction (one durable commit), chained in order."""
        now = self._clock()
        outcomes: list[AuditRecord | BaseException] = []
        with immediate(db):
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                              ).fetchone()
            seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS)
            for entry, first_for_challenge in batch:
                if first_for_challenge and db.execute(
                        "SELECT 1 FROM audit WHERE kind = 'intent' AND challenge_id = ?"
                        " LIMIT 1", [entry.challenge_id]).fetchone() is not None:
                    outcomes.append(FreshnessError(
                        "challenge already spent (audit log)", rule="challenge.audit",
                        expected="an unused challenge",
                        actual=f"an intent for {entry.challenge_id[:64]!r}"))
                    continue
                seq += 1
                digest = record_hash(seq, now, entry, prev)
                db.execute(
                    _INSERT,
                    [seq, now, entry.request_id, entry.kind, entry.category, entry.reason,
                     entry.evidence_digest, json.dumps(list(entry.policy_ids)),
                     json.dumps(list(entry.keys)), entry.agent_key_fingerprint,
                     entry.challenge_id, prev, digest, entry.principal, entry.replica],
                )
                outcomes.append(AuditRecord(seq, now, entry, prev, digest))
                prev = digest
        return outcomes

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    def probe(self) -> None:
        """Health probe of the audit sink (``Database.probe``)."""
        self._db.probe()

    def append(self, entry: AuditEntry, *, first_for_challenge: bool = False) -> AuditRecord:
        """Append ``entry`` durably and return the stored record; failure -> Unavailable.

        ``first_for_challenge`` (release intents): FRESHNESS if the log already holds an
        intent for ``entry.challenge_id``, checked in the same transaction. The log is the
        durable record of what was spent: a challenge store restored from a backup cannot
        make a spent challenge release again."""
        if entry.kind not in KINDS:
            raise ValueError(f"unknown audit kind {entry.kind!r}")
        start = time.perf_counter()
        try:
            record = self._group.submit((entry, first_for_challenge))
        except Unavailable:
            if self.observer is not None:
                self.observer(time.perf_counter() - start, False)
            raise
        if self.observer is not None:
            self.observer(time.perf_counter() - start, True)
        if self._mac is not None and record.seq % self._every == 0:
            self._try_checkpoint()
        return record

    def _try_checkpoint(self) -> None:
        try:
            self.checkpoint()
        except KeybrokerError as exc:
            _log.error("audit checkpoint not written (retried later): %s", exc.detail)

    def checkpoint(self) -> Checkpoint | None:
        """Write a keyed checkpoint over the records since the last one (None: nothing new)."""
        if self._mac is None:
            return None
        mac = self._mac
        now = self._clock()

        def op(db: Session) -> Checkpoint | None:
            with immediate(db):
                return write_checkpoint(db, mac, now)

        return self._db.run(op)

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first."""
        return self._db.run(read_checkpoints)

    def records(self, *, request_id: str | None = None) -> list[AuditRecord]:
        """All records in order (optionally of one request)."""
        def op(db: Session) -> list[AuditRecord]:
            if request_id is None:
                rows = db.execute(_SELECT_ALL).fetchall()
            else:
                rows = db.execute(_SELECT_REQUEST, [request_id]).fetchall()
            return [_from_row(r) for r in rows]

        return self._db.run(op)

    def verify_chain(self, *, expect_head: str | None = None, mac: Mac | None = None) -> int:
        """Check every record's hash and link, then (with ``mac``) every checkpoint; return the
        record count.

        Raises Malformed (rule ``audit.chain``) at the first broken record, or when
        ``expect_head`` (a hash seen earlier) is no longer in the chain (truncation); rule
        ``audit.checkpoint`` for a forged checkpoint or a record it no longer matches.
        """
        prev = GENESIS
        seen_head = expect_head is None or expect_head == GENESIS
        records = self.records()
        for index, rec in enumerate(records, start=1):
            if rec.seq != index:
                raise Malformed("audit chain has a gap", rule="audit.chain",
                                expected=f"seq {index}", actual=f"seq {rec.seq}")
            if rec.prev_hash != prev:
                raise Malformed("audit chain link broken", rule="audit.chain",
                                expected=prev, actual=f"seq {rec.seq} prev_hash {rec.prev_hash}")
            digest = record_hash(rec.seq, rec.time, rec.entry, rec.prev_hash)
            if digest != rec.hash:
                raise Malformed("audit record altered", rule="audit.chain",
                                expected=digest, actual=f"seq {rec.seq} hash {rec.hash}")
            prev = rec.hash
            seen_head = seen_head or rec.hash == expect_head
        if not seen_head:
            raise Malformed("audit chain truncated", rule="audit.chain",
                            expected=f"head {expect_head}", actual=f"last {prev}")
        if mac is not None:
            verify_checkpoints(self.checkpoints(), {r.seq: r.hash for r in records}, mac)
        return len(records)

    def head(self) -> str:
        """Hash of the last record (GENESIS when empty); operators keep it to detect truncation."""
        records = self.records()
        return records[-1].hash if records else GENESIS

    def reconcile(self, *, replica: str | None = None, older_than: float | None = None) -> int:
        """Append an ``unknown`` outcome for intents without outcome; return how many.

        Without arguments every such intent (one broker alone). With replicas sharing the log,
        only the intents of ``replica`` (this replica, just restarted: none of its requests
        is in flight) and those older than ``older_than`` (a replica that never came back);
        the intents of live replicas are in flight and left alone."""
        wanted: list[str] = ["1 = 1"]
        args: list[object] = []
        if replica is not None or older_than is not None:
            wanted = []
            if replica is not None:
                wanted.append("replica = ?")
                args.append(replica)
            if older_than is not None:
                wanted.append("time < ?")
                args.append(older_than)
        sql = _SELECT_DANGLING.format(wanted=" OR ".join(wanted))

        def op(db: Session) -> list[AuditRecord]:
            rows = db.execute(sql, args).fetchall()
            return [_from_row(r) for r in rows]

        dangling = self._db.run(op)
        for rec in dangling:
            self.append(AuditEntry(
                request_id=rec.entry.request_id, kind="unknown", category="",
                reason="outcome unknown: intent without outcome (its broker stopped)",
                evidence_digest=rec.entry.evidence_digest, policy_ids=rec.entry.policy_ids,
                keys=rec.entry.keys, agent_key_fingerprint=rec.entry.agent_key_fingerprint,
                challenge_id=rec.entry.challenge_id, replica=rec.entry.replica))
        return len(dangling)
