"""Broker challenges: single use (also under thread and process races), TTL, BUSY handling."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import grpc
import pytest
from support.store_backends import StoreBackend

from broker.challenges import ChallengeStore, Peer
from broker.service import BROKER_MIGRATIONS
from keybroker.database import Database, DatabaseTarget, open_database
from keybroker.errors import (
    Category,
    Exhausted,
    FreshnessError,
    KeybrokerError,
    Malformed,
    Unavailable,
)
from keybroker.rpc_errors import STATUS_FOR
from keybroker.sqlite_database import SqliteDatabase
from keybroker.v1 import evidence_pb2

T0 = 1_750_000_000.0
SNP = evidence_pb2.TEE_TYPE_SEV_SNP


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _store(target: DatabaseTarget, clock: Clock, ttl: int = 60) -> ChallengeStore:
    return ChallengeStore(_db(target), ttl_seconds=ttl, clock=clock)


def _db(target: DatabaseTarget) -> Database:
    return open_database(target, component="broker", migrations=BROKER_MIGRATIONS)


def test_issue_and_consume_once(db_backend: StoreBackend) -> None:
    """A consumed challenge returns its nonce, tee and keys; the nonce is 32 random bytes."""
    store = _store(db_backend.target("broker"), Clock())
    ch = store.issue(SNP, ["demo/a", "demo/b", "demo/a"])
    assert len(ch.nonce) == 32
    assert ch.key_ids == ("demo/a", "demo/b")
    got = store.consume(ch.challenge_id)
    assert (got.nonce, got.tee, got.key_ids) == (ch.nonce, SNP, ("demo/a", "demo/b"))
    assert store.issue(SNP, ["demo/a"]).nonce != ch.nonce


def test_second_use_is_freshness(db_backend: StoreBackend) -> None:
    """Consuming the same challenge twice is refused with FRESHNESS (hostile row 24)."""
    store = _store(db_backend.target("broker"), Clock())
    ch = store.issue(SNP, ["demo/a"])
    store.consume(ch.challenge_id)
    with pytest.raises(FreshnessError) as exc:
        store.consume(ch.challenge_id)
    assert exc.value.category is Category.FRESHNESS


def test_unknown_challenge_is_freshness(db_backend: StoreBackend) -> None:
    """A never-issued challenge id is FRESHNESS (hostile row 25)."""
    store = _store(db_backend.target("broker"), Clock())
    with pytest.raises(KeybrokerError) as exc:
        store.consume("00000000-0000-4000-8000-000000000000")
    assert exc.value.category is Category.FRESHNESS


def test_expiry_with_injected_clock(db_backend: StoreBackend) -> None:
    """A challenge is usable until its TTL and FRESHNESS at or after it (hostile row 25)."""
    clock = Clock()
    store = _store(db_backend.target("broker"), clock, ttl=30)
    live = store.issue(SNP, ["demo/a"])
    dead = store.issue(SNP, ["demo/a"])
    clock.now = T0 + 29.9
    store.consume(live.challenge_id)
    clock.now = T0 + 30
    with pytest.raises(KeybrokerError) as exc:
        store.consume(dead.challenge_id)
    assert exc.value.category is Category.FRESHNESS


def test_thread_race_only_one_wins(db_backend: StoreBackend) -> None:
    """Sixteen threads with their own connections race for one challenge; exactly one wins."""
    path = db_backend.target("broker")
    clock = Clock()
    ch = _store(path, clock).issue(SNP, ["demo/a"])
    stores = [_store(path, clock) for _ in range(16)]
    barrier = threading.Barrier(len(stores))
    results: list[str] = []
    lock = threading.Lock()

    def worker(store: ChallengeStore) -> None:
        barrier.wait()
        try:
            store.consume(ch.challenge_id)
            outcome = "ok"
        except KeybrokerError as err:
            outcome = err.category.value
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["FRESHNESS"] * 15 + ["ok"]


def consume_in_process(args: tuple[DatabaseTarget, str, float]) -> str:
    """Child-process worker: open the database afresh and try to consume."""
    target, challenge_id, now = args
    store = ChallengeStore(_db(target), ttl_seconds=60, clock=lambda: now)
    try:
        store.consume(challenge_id)
    except KeybrokerError as err:
        return err.category.value
    return "ok"


def test_process_race_only_one_wins(db_backend: StoreBackend) -> None:
    """Separate processes (broker replicas) sharing one store: exactly one wins."""
    path = db_backend.target("broker")
    clock = Clock()
    store = _store(path, clock)
    challenges = [store.issue(SNP, ["demo/a"]) for _ in range(3)]
    jobs = [(path, ch.challenge_id, T0) for ch in challenges for _ in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(consume_in_process, jobs)
    for i in range(3):
        assert sorted(results[i * 4:(i + 1) * 4]) == ["FRESHNESS"] * 3 + ["ok"]


def test_busy_database_is_unavailable(tmp_path: Path) -> None:
    """A store held locked by another writer ends in UNAVAILABLE after bounded retries."""
    path = tmp_path / "b.db"
    clock = Clock()
    store = ChallengeStore(SqliteDatabase(path, component="broker", migrations=BROKER_MIGRATIONS,
                                          busy_timeout_seconds=0.05, retries=2),
                           ttl_seconds=60, clock=clock)
    ch = store.issue(SNP, ["demo/a"])
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Unavailable) as exc:
            store.consume(ch.challenge_id)
        assert exc.value.category is Category.UNAVAILABLE
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.consume(ch.challenge_id).challenge_id == ch.challenge_id


@pytest.mark.parametrize(
    "key_ids", [[], [""], ["x" * 257], ["a\x00b"], [f"k{i}" for i in range(65)]])
def test_invalid_key_ids_are_malformed(db_backend: StoreBackend, key_ids: list[str]) -> None:
    """Empty, oversized, NUL-containing or too many key ids are MALFORMED."""
    store = _store(db_backend.target("broker"), Clock())
    with pytest.raises(Malformed) as exc:
        store.issue(SNP, key_ids)
    assert exc.value.category is Category.MALFORMED


def test_purge_removes_only_long_expired(db_backend: StoreBackend) -> None:
    """Purging deletes challenges expired for longer than the window, not live ones."""
    clock = Clock()
    store = _store(db_backend.target("broker"), clock, ttl=10)
    old = store.issue(SNP, ["demo/a"])
    clock.now = T0 + 7200
    live = store.issue(SNP, ["demo/a"])
    assert store.purge_expired(older_than_seconds=3600) == 1
    with pytest.raises(FreshnessError):
        store.consume(old.challenge_id)
    assert store.consume(live.challenge_id).nonce == live.nonce


def _limited(path: DatabaseTarget, clock: Clock, *, total: int, per_peer: int) -> ChallengeStore:
    return ChallengeStore(_db(path), ttl_seconds=60, clock=clock,
                          max_outstanding=total, max_per_peer=per_peer)


def test_outstanding_challenges_are_bounded_per_peer_and_in_total(db_backend: StoreBackend) -> None:
    """Past the per-peer or the total bound issue() is Exhausted (UNAVAILABLE category, sent
    as RESOURCE_EXHAUSTED) and stores nothing; consumed or expired ones do not count."""
    clock = Clock()
    store = _limited(db_backend.target("broker"), clock, total=4, per_peer=2)
    a, b = Peer("10.0.0.1"), Peer("10.0.0.2")
    first = store.issue(SNP, ["k"], a)
    store.issue(SNP, ["k"], a)
    with pytest.raises(Exhausted) as exc:
        store.issue(SNP, ["k"], a)
    assert exc.value.category is Category.UNAVAILABLE and exc.value.rule == "challenge.peer-limit"
    store.consume(first.challenge_id, a)
    store.issue(SNP, ["k"], a)  # a consumed challenge frees its slot
    store.issue(SNP, ["k"], b)
    store.issue(SNP, ["k"], b)
    with pytest.raises(Exhausted) as exc:
        store.issue(SNP, ["k"], Peer("10.0.0.3"))
    assert exc.value.rule == "challenge.limit"
    clock.now += 61  # everything expires: the bounds are about outstanding challenges only
    store.issue(SNP, ["k"], a)
    assert isinstance(exc.value, Exhausted)
    assert STATUS_FOR[exc.value.category] is grpc.StatusCode.UNAVAILABLE  # refined in abort()


def test_expired_challenges_are_purged(db_backend: StoreBackend) -> None:
    """purge_expired deletes every expired challenge (consumed or not) and keeps live ones."""
    clock = Clock()
    store = _store(db_backend.target("broker"), clock)
    old = [store.issue(SNP, ["k"]) for _ in range(3)]
    store.consume(old[0].challenge_id)
    clock.now += 61
    live = store.issue(SNP, ["k"])
    assert store.purge_expired() == 3
    assert store.purge_expired() == 0
    assert store.consume(live.challenge_id).challenge_id == live.challenge_id


def test_challenge_is_bound_to_the_client_certificate(db_backend: StoreBackend) -> None:
    """A challenge issued to one client certificate cannot be consumed from another one, or
    from a channel without a certificate: FRESHNESS, and it is spent (row 26)."""
    store = _store(db_backend.target("broker"), Clock())
    alice, bob = Peer("10.0.0.1", b"\xaa" * 32), Peer("10.0.0.1", b"\xbb" * 32)
    for thief in (bob, Peer("10.0.0.1")):
        ch = store.issue(SNP, ["k"], alice)
        with pytest.raises(FreshnessError) as exc:
            store.consume(ch.challenge_id, thief)
        assert exc.value.rule == "challenge.peer"
        with pytest.raises(FreshnessError):
            store.consume(ch.challenge_id, alice)
    ch = store.issue(SNP, ["k"], alice)
    assert store.consume(ch.challenge_id, alice).peer == alice


def test_peer_from_grpc_addresses() -> None:
    """gRPC peer strings give the address without the port (IPv4, IPv6, Unix)."""
    assert Peer.from_grpc("ipv4:10.1.2.3:5555", b"").address == "10.1.2.3"
    assert Peer.from_grpc("ipv6:[::1]:5555", b"").address == "::1"
    assert Peer.from_grpc("unix:/run/k.sock", b"x").address == "unix:/run/k.sock"


def test_database_from_before_peer_binding_is_upgraded(tmp_path: Path) -> None:
    """A challenges table without the peer columns gains them on open; old rows still work."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE challenges (challenge_id TEXT PRIMARY KEY, nonce BLOB NOT "
                     "NULL, tee INTEGER NOT NULL, key_ids TEXT NOT NULL, issued_at REAL NOT "
                     "NULL, expires_at REAL NOT NULL, consumed_at REAL)")
        conn.execute("INSERT INTO challenges VALUES ('old', x'00', 1, '[\"k\"]', ?, ?, NULL)",
                     [T0, T0 + 60])
    store = _store(path, Clock())
    assert store.consume("old").peer == Peer()
