"""Single-use, short-lived challenges (architecture invariant 2).

Invariants:
- A challenge is a random 32-byte nonce under a uuid4 id, bound to one TEE type and the set
  of key ids the agent announced; it expires ``ttl`` seconds after issue.
- Consumption is one atomic ``UPDATE ... WHERE consumed_at IS NULL AND expires_at > now``
  (with RETURNING); the affected row decides. Two callers, threads, processes or replicas
  sharing the database can never both consume one challenge.
- Unknown, expired and already-consumed challenges are indistinguishable to the caller:
  all are FRESHNESS. A request naming keys outside the challenge's set, or evidence of another
  TEE type, is FRESHNESS too (the challenge is spent either way).
- Time is the injected wall clock (seconds since the epoch), shared by replicas through the
  store; it is never read from the request.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlite_utils

from keybroker.database import Database
from keybroker.errors import FreshnessError, Malformed

NONCE_SIZE = 32
MAX_KEY_IDS = 64
MAX_KEY_ID_LEN = 256

Clock = Callable[[], float]


@dataclass(frozen=True)
class Challenge:
    """An issued challenge."""

    challenge_id: str
    nonce: bytes
    tee: int
    key_ids: tuple[str, ...]
    issued_at: float
    expires_at: float


def challenge_schema(db: sqlite_utils.Database) -> None:
    """Create the challenges table (idempotent)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS challenges ("
        " challenge_id TEXT PRIMARY KEY,"
        " nonce BLOB NOT NULL,"
        " tee INTEGER NOT NULL,"
        " key_ids TEXT NOT NULL,"
        " issued_at REAL NOT NULL,"
        " expires_at REAL NOT NULL,"
        " consumed_at REAL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS challenges_expiry ON challenges (expires_at)")


def validate_key_ids(key_ids: Sequence[str]) -> tuple[str, ...]:
    """Check the announced key ids: 1..64 distinct, non-empty ids of at most 256 characters."""
    if not 1 <= len(key_ids) <= MAX_KEY_IDS:
        raise Malformed("wrong number of key ids", expected=f"1..{MAX_KEY_IDS}",
                        actual=str(len(key_ids)))
    for key_id in key_ids:
        if not key_id or len(key_id) > MAX_KEY_ID_LEN or "\x00" in key_id:
            raise Malformed("invalid key id", expected=f"1..{MAX_KEY_ID_LEN} characters, no NUL",
                            actual=f"{len(key_id)} characters")
    return tuple(dict.fromkeys(key_ids))


class ChallengeStore:
    """Issues and atomically consumes challenges in the broker database."""

    def __init__(self, db: Database, *, ttl_seconds: int, clock: Clock) -> None:
        self._db = db
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(self, tee: int, key_ids: Sequence[str]) -> Challenge:
        """Create and store a fresh challenge for ``tee`` and ``key_ids``."""
        ids = validate_key_ids(key_ids)
        now = self._clock()
        challenge = Challenge(
            challenge_id=str(uuid.uuid4()),
            nonce=secrets.token_bytes(NONCE_SIZE),
            tee=tee,
            key_ids=ids,
            issued_at=now,
            expires_at=now + self.ttl_seconds,
        )

        def op(db: sqlite_utils.Database) -> None:
            db.execute(
                "INSERT INTO challenges (challenge_id, nonce, tee, key_ids, issued_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [challenge.challenge_id, challenge.nonce, tee, json.dumps(list(ids)), now,
                 challenge.expires_at],
            )

        self._db.run(op)
        return challenge

    def consume(self, challenge_id: str) -> Challenge:
        """Atomically mark the challenge consumed and return it; otherwise FRESHNESS."""
        now = self._clock()

        def op(db: sqlite_utils.Database) -> tuple[bytes, int, str, float, float] | None:
            cursor = db.execute(
                "UPDATE challenges SET consumed_at = ?"
                " WHERE challenge_id = ? AND consumed_at IS NULL AND expires_at > ?"
                " RETURNING nonce, tee, key_ids, issued_at, expires_at",
                [now, challenge_id, now],
            )
            row = cursor.fetchone()
            cursor.close()
            db.commit()
            if row is None:
                return None
            return bytes(row[0]), int(row[1]), str(row[2]), float(row[3]), float(row[4])

        row = self._db.run(op)
        if row is None:
            raise FreshnessError("challenge unknown, expired or already used",
                                 rule="challenge.single-use", expected="unused, unexpired",
                                 actual=f"challenge {challenge_id[:64]!r} not consumable")
        nonce, tee, key_ids, issued_at, expires_at = row
        return Challenge(challenge_id, nonce, tee, tuple(json.loads(key_ids)), issued_at,
                         expires_at)

    def close(self) -> None:
        """Close the underlying database connections."""
        self._db.close()

    def purge_expired(self, *, older_than_seconds: float = 3600.0) -> int:
        """Delete challenges that expired more than ``older_than_seconds`` ago."""
        cutoff = self._clock() - older_than_seconds

        def op(db: sqlite_utils.Database) -> int:
            return db.execute("DELETE FROM challenges WHERE expires_at < ?", [cutoff]).rowcount

        return self._db.run(op)
