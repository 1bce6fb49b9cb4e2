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
- A challenge remembers who asked (``Peer``: the caller's address and, over mutual TLS, the
  SHA-256 of its client certificate). Consuming it from another client certificate is
  FRESHNESS (hostile-evidence row 26), and the certificate digest joins the binding (row 30).
- Outstanding (unconsumed, unexpired) challenges are bounded in total and per peer address:
  past either bound ``issue`` is ``Exhausted`` (RESOURCE_EXHAUSTED) and stores nothing.
  Expired challenges are deleted by ``purge_expired`` (the service runs it periodically).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keybroker.database import Database
from keybroker.errors import Exhausted, FreshnessError, Malformed
from keybroker.migrations import ddl, sqlite_columns
from keybroker.store_session import Session, immediate

NONCE_SIZE = 32
MAX_KEY_IDS = 64
MAX_KEY_ID_LEN = 256

Clock = Callable[[], float]


@dataclass(frozen=True)
class Peer:
    """Who asked for a challenge: address (without port) and client certificate digest."""

    address: str = ""
    channel: bytes = b""  # SHA-256 of the mutual-TLS client certificate, empty without one

    @classmethod
    def from_grpc(cls, peer: str, channel: bytes) -> Peer:
        """From gRPC's ``context.peer()`` (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5``, ...)."""
        kind, _, rest = peer.partition(":")
        address = rest.rpartition(":")[0] if kind in ("ipv4", "ipv6") else peer
        return cls(address=address.strip("[]")[:64], channel=channel)


NO_PEER = Peer()  # in-process callers and tests without a channel


@dataclass(frozen=True)
class Challenge:
    """An issued challenge."""

    challenge_id: str
    nonce: bytes
    tee: int
    key_ids: tuple[str, ...]
    issued_at: float
    expires_at: float
    peer: Peer = NO_PEER


def challenge_schema(db: Session) -> None:
    """Create the challenges table (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS challenges ("
        " challenge_id TEXT PRIMARY KEY,"
        " nonce BLOB NOT NULL,"
        " tee INTEGER NOT NULL,"
        " key_ids TEXT NOT NULL,"
        " issued_at REAL NOT NULL,"
        " expires_at REAL NOT NULL,"
        " consumed_at REAL,"
        " peer TEXT NOT NULL DEFAULT '',"
        " channel BLOB NOT NULL DEFAULT x'')"
    )
    if db.dialect == "sqlite" and "peer" not in sqlite_columns(db, "challenges"):
        # a file from before peer binding
        db.execute("ALTER TABLE challenges ADD COLUMN peer TEXT NOT NULL DEFAULT ''")
        db.execute("ALTER TABLE challenges ADD COLUMN channel BLOB NOT NULL DEFAULT x''")
    db.execute("CREATE INDEX IF NOT EXISTS challenges_expiry ON challenges (expires_at)")
    # Outstanding challenges only: the bounds count these on every issue, so the count stays
    # proportional to what is outstanding, not to everything issued within the TTL.
    db.execute("DROP INDEX IF EXISTS challenges_peer")
    db.execute("CREATE INDEX IF NOT EXISTS challenges_open ON challenges (expires_at)"
               " WHERE consumed_at IS NULL")
    db.execute("CREATE INDEX IF NOT EXISTS challenges_open_peer ON challenges (peer, expires_at)"
               " WHERE consumed_at IS NULL")


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

    def __init__(self, db: Database, *, ttl_seconds: int, clock: Clock,
                 max_outstanding: int = 100_000, max_per_peer: int = 64) -> None:
        self._db = db
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self.max_outstanding = max_outstanding
        self.max_per_peer = max_per_peer

    def issue(self, tee: int, key_ids: Sequence[str], peer: Peer = NO_PEER) -> Challenge:
        """Create and store a fresh challenge for ``tee`` and ``key_ids`` asked by ``peer``;
        ``Exhausted`` past the bounds on outstanding challenges."""
        ids = validate_key_ids(key_ids)
        now = self._clock()
        challenge = Challenge(
            challenge_id=str(uuid.uuid4()),
            nonce=secrets.token_bytes(NONCE_SIZE),
            tee=tee,
            key_ids=ids,
            issued_at=now,
            expires_at=now + self.ttl_seconds,
            peer=peer,
        )

        def op(db: Session) -> None:
            with immediate(db):
                total = db.execute("SELECT COUNT(*) FROM challenges WHERE consumed_at IS NULL"
                                   " AND expires_at > ?", [now]).fetchone()[0]
                if total >= self.max_outstanding:
                    raise Exhausted("too many outstanding challenges", rule="challenge.limit",
                                    expected=f"< {self.max_outstanding} outstanding",
                                    actual=str(total))
                mine = db.execute("SELECT COUNT(*) FROM challenges WHERE peer = ? AND"
                                  " consumed_at IS NULL AND expires_at > ?",
                                  [peer.address, now]).fetchone()[0]
                if mine >= self.max_per_peer:
                    raise Exhausted("too many outstanding challenges for this peer",
                                    rule="challenge.peer-limit",
                                    expected=f"< {self.max_per_peer} per peer",
                                    actual=f"{mine} for {peer.address or 'unknown peer'}")
                db.execute(
                    "INSERT INTO challenges (challenge_id, nonce, tee, key_ids, issued_at,"
                    " expires_at, peer, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [challenge.challenge_id, challenge.nonce, tee, json.dumps(list(ids)), now,
                     challenge.expires_at, peer.address, peer.channel],
                )

        self._db.run(op)
        return challenge

    def consume(self, challenge_id: str, peer: Peer = NO_PEER) -> Challenge:
        """Atomically mark the challenge consumed and return it; otherwise FRESHNESS (also
        when it was issued to another client certificate: the challenge is spent)."""
        now = self._clock()

        def op(db: Session) -> Challenge | None:
            cursor = db.execute(
                "UPDATE challenges SET consumed_at = ?"
                " WHERE challenge_id = ? AND consumed_at IS NULL AND expires_at > ?"
                " RETURNING nonce, tee, key_ids, issued_at, expires_at, peer, channel",
                [now, challenge_id, now],
            )
            row = cursor.fetchone()
            cursor.close()
            db.commit()
            if row is None:
                return None
            return Challenge(challenge_id, bytes(row[0]), int(row[1]), tuple(json.loads(row[2])),
                             float(row[3]), float(row[4]), Peer(str(row[5]), bytes(row[6])))

        found = self._db.run(op)
        if found is None:
            raise FreshnessError("challenge unknown, expired or already used",
                                 rule="challenge.single-use", expected="unused, unexpired",
                                 actual=f"challenge {challenge_id[:64]!r} not consumable")
        if found.peer.channel != peer.channel:
            raise FreshnessError("challenge was issued to another client",
                                 rule="challenge.peer",
                                 expected="the client certificate it was issued to",
                                 actual="another client certificate" if peer.channel
                                 else "no client certificate")
        return found

    def outstanding(self) -> int:
        """Challenges issued, not consumed and not expired (for metrics)."""
        now = self._clock()
        return int(self._db.run(lambda db: db.execute(
            "SELECT COUNT(*) FROM challenges WHERE consumed_at IS NULL AND expires_at > ?",
            [now]).fetchone()[0]))

    def probe(self) -> None:
        """Health probe of the challenge database (``Database.probe``)."""
        self._db.probe()

    def close(self) -> None:
        """Close the underlying database connections."""
        self._db.close()

    def purge_expired(self, *, older_than_seconds: float = 0.0) -> int:
        """Delete challenges that expired more than ``older_than_seconds`` ago."""
        cutoff = self._clock() - older_than_seconds

        def op(db: Session) -> int:
            return db.execute("DELETE FROM challenges WHERE expires_at < ?", [cutoff]).rowcount

        return self._db.run(op)
