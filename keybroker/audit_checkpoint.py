"""Keyed checkpoints of the audit log: what an attacker holding the audit database cannot forge.

Invariants:
- A checkpoint covers the records ``from_seq..to_seq`` (the ones since the previous
  checkpoint): it stores their hashes, in order, and an HMAC-SHA256 over a canonical encoding
  of (from_seq, to_seq, time, hashes) under the KEK provider's audit key (a file outside the
  database or a non-extractable key in the HSM). The database never holds that key.
- Checkpoints are append-only (triggers refuse UPDATE and DELETE) and contiguous: each starts
  right after the previous one ends.
- ``verify_checkpoints`` names the first problem: a checkpoint whose MAC does not verify, a
  gap between checkpoints, a covered record that is missing, or the first covered record whose
  hash differs from the one the checkpoint vouched for (an edited and re-hashed chain).
  Records after the last checkpoint are covered by the hash chain only (a checkpoint is written
  every N records and at shutdown; an operator can also keep the head hash externally).
"""

from __future__ import annotations

import hmac as _hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from keybroker.errors import Malformed
from keybroker.migrations import ddl, refuse
from keybroker.store_session import Session

Mac = Callable[[bytes], bytes]
_LABEL = "keybroker/v1/audit-checkpoint"


def checkpoint_schema(db: Session) -> None:
    """Create the checkpoint table and its append-only triggers (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS audit_checkpoints ("
        " to_seq INTEGER PRIMARY KEY,"
        " from_seq INTEGER NOT NULL,"
        " time REAL NOT NULL,"
        " hashes TEXT NOT NULL,"
        " mac TEXT NOT NULL)"
    )
    for op in ("UPDATE", "DELETE"):
        refuse(db, f"audit_checkpoints_no_{op.lower()}", "audit_checkpoints", op,
               "checkpoints are append-only")


@dataclass(frozen=True)
class Checkpoint:
    """One stored checkpoint."""

    from_seq: int
    to_seq: int
    time: float
    hashes: tuple[str, ...]
    mac: str

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (``audit export``)."""
        return {"type": "checkpoint", "from_seq": self.from_seq, "to_seq": self.to_seq,
                "time": self.time, "hashes": list(self.hashes), "mac": self.mac}


def checkpoint_mac(mac: Mac, from_seq: int, to_seq: int, time: float,
                   hashes: Sequence[str]) -> str:
    """Hex HMAC over the canonical JSON of the checkpoint's content."""
    body = json.dumps({"label": _LABEL, "from_seq": from_seq, "to_seq": to_seq,
                       "time": repr(time), "hashes": list(hashes)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return mac(body.encode("ascii")).hex()


def write_checkpoint(db: Session, mac: Mac, now: float) -> Checkpoint | None:
    """Cover every record after the last checkpoint (None when there is none). The caller
    holds the write lock."""
    row = db.execute("SELECT MAX(to_seq) FROM audit_checkpoints").fetchone()
    start = (int(row[0]) if row and row[0] is not None else 0) + 1
    rows = db.execute("SELECT seq, hash FROM audit WHERE seq >= ? ORDER BY seq",
                      [start]).fetchall()
    if not rows:
        return None
    hashes = tuple(str(r[1]) for r in rows)
    end = int(rows[-1][0])
    tag = checkpoint_mac(mac, start, end, now, hashes)
    db.execute("INSERT INTO audit_checkpoints (to_seq, from_seq, time, hashes, mac)"
               " VALUES (?, ?, ?, ?, ?)", [end, start, now, json.dumps(list(hashes)), tag])
    return Checkpoint(start, end, now, hashes, tag)


def read_checkpoints(db: Session) -> list[Checkpoint]:
    """Every checkpoint, oldest first."""
    rows = db.execute("SELECT from_seq, to_seq, time, hashes, mac FROM audit_checkpoints"
                      " ORDER BY to_seq").fetchall()
    return [Checkpoint(int(r[0]), int(r[1]), float(r[2]), tuple(json.loads(str(r[3]))),
                       str(r[4])) for r in rows]


def verify_checkpoints(checkpoints: Sequence[Checkpoint], hashes: Mapping[int, str],
                       mac: Mac) -> int:
    """Check every checkpoint against the records' hashes (seq -> hash); returns the last seq
    covered by a checkpoint. Raises ``Malformed`` (rule ``audit.checkpoint``) naming the first
    bad checkpoint or record (module invariants)."""
    expected_start = 1
    for cp in checkpoints:
        where = f"checkpoint {cp.from_seq}..{cp.to_seq}"
        good = checkpoint_mac(mac, cp.from_seq, cp.to_seq, cp.time, cp.hashes)
        if not _hmac.compare_digest(good, cp.mac) or len(cp.hashes) != cp.to_seq - cp.from_seq + 1:
            raise Malformed(f"audit {where} is not authentic", rule="audit.checkpoint",
                            expected="a MAC under the audit key", actual=f"mac {cp.mac[:16]}…")
        if cp.from_seq != expected_start:
            raise Malformed(f"audit checkpoints have a gap before {where}",
                            rule="audit.checkpoint", expected=f"from seq {expected_start}",
                            actual=f"from seq {cp.from_seq}")
        for offset, vouched in enumerate(cp.hashes):
            seq = cp.from_seq + offset
            found = hashes.get(seq)
            if found is None:
                raise Malformed(f"audit record seq {seq} is missing", rule="audit.checkpoint",
                                expected=f"seq {seq} (vouched for by {where})", actual="absent")
            if found != vouched:
                raise Malformed(f"audit record seq {seq} differs from {where}",
                                rule="audit.checkpoint", expected=vouched,
                                actual=f"seq {seq} hash {found}")
        expected_start = cp.to_seq + 1
    return expected_start - 1
