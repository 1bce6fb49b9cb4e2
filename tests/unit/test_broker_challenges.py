"""Broker challenges: single use (also under thread and process races), TTL, BUSY handling."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from broker.challenges import ChallengeStore, challenge_schema
from keybroker.database import Database
from keybroker.errors import Category, FreshnessError, KeybrokerError, Malformed, Unavailable
from keybroker.v1 import evidence_pb2

T0 = 1_750_000_000.0
SNP = evidence_pb2.TEE_TYPE_SEV_SNP


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _store(path: Path, clock: Clock, ttl: int = 60, **kw: float) -> ChallengeStore:
    return ChallengeStore(Database(path, schema=challenge_schema, **kw),  # type: ignore[arg-type]
                          ttl_seconds=ttl, clock=clock)


def test_issue_and_consume_once(tmp_path: Path) -> None:
    """A consumed challenge returns its nonce, tee and keys; the nonce is 32 random bytes."""
    store = _store(tmp_path / "b.db", Clock())
    ch = store.issue(SNP, ["demo/a", "demo/b", "demo/a"])
    assert len(ch.nonce) == 32
    assert ch.key_ids == ("demo/a", "demo/b")
    got = store.consume(ch.challenge_id)
    assert (got.nonce, got.tee, got.key_ids) == (ch.nonce, SNP, ("demo/a", "demo/b"))
    assert store.issue(SNP, ["demo/a"]).nonce != ch.nonce


def test_second_use_is_freshness(tmp_path: Path) -> None:
    """Consuming the same challenge twice is refused with FRESHNESS (hostile row 24)."""
    store = _store(tmp_path / "b.db", Clock())
    ch = store.issue(SNP, ["demo/a"])
    store.consume(ch.challenge_id)
    with pytest.raises(FreshnessError) as exc:
        store.consume(ch.challenge_id)
    assert exc.value.category is Category.FRESHNESS


def test_unknown_challenge_is_freshness(tmp_path: Path) -> None:
    """A never-issued challenge id is FRESHNESS (hostile row 25)."""
    store = _store(tmp_path / "b.db", Clock())
    with pytest.raises(KeybrokerError) as exc:
        store.consume("00000000-0000-4000-8000-000000000000")
    assert exc.value.category is Category.FRESHNESS


def test_expiry_with_injected_clock(tmp_path: Path) -> None:
    """A challenge is usable until its TTL and FRESHNESS at or after it (hostile row 25)."""
    clock = Clock()
    store = _store(tmp_path / "b.db", clock, ttl=30)
    live = store.issue(SNP, ["demo/a"])
    dead = store.issue(SNP, ["demo/a"])
    clock.now = T0 + 29.9
    store.consume(live.challenge_id)
    clock.now = T0 + 30
    with pytest.raises(KeybrokerError) as exc:
        store.consume(dead.challenge_id)
    assert exc.value.category is Category.FRESHNESS


def test_thread_race_only_one_wins(tmp_path: Path) -> None:
    """Sixteen threads with their own connections race for one challenge; exactly one wins."""
    path = tmp_path / "b.db"
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


def consume_in_process(args: tuple[str, str, float]) -> str:
    """Child-process worker: open the database afresh and try to consume."""
    path, challenge_id, now = args
    store = ChallengeStore(Database(Path(path), schema=challenge_schema), ttl_seconds=60,
                           clock=lambda: now)
    try:
        store.consume(challenge_id)
    except KeybrokerError as err:
        return err.category.value
    return "ok"


def test_process_race_only_one_wins(tmp_path: Path) -> None:
    """Separate processes (like broker replicas) sharing one SQLite file: exactly one wins."""
    path = tmp_path / "b.db"
    clock = Clock()
    store = _store(path, clock)
    challenges = [store.issue(SNP, ["demo/a"]) for _ in range(3)]
    jobs = [(str(path), ch.challenge_id, T0) for ch in challenges for _ in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(consume_in_process, jobs)
    for i in range(3):
        assert sorted(results[i * 4:(i + 1) * 4]) == ["FRESHNESS"] * 3 + ["ok"]


def test_busy_database_is_unavailable(tmp_path: Path) -> None:
    """A store held locked by another writer ends in UNAVAILABLE after bounded retries."""
    path = tmp_path / "b.db"
    clock = Clock()
    store = _store(path, clock, busy_timeout_seconds=0.05, retries=2)
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
def test_invalid_key_ids_are_malformed(tmp_path: Path, key_ids: list[str]) -> None:
    """Empty, oversized, NUL-containing or too many key ids are MALFORMED."""
    store = _store(tmp_path / "b.db", Clock())
    with pytest.raises(Malformed) as exc:
        store.issue(SNP, key_ids)
    assert exc.value.category is Category.MALFORMED


def test_purge_removes_only_long_expired(tmp_path: Path) -> None:
    """Purging deletes challenges expired for longer than the window, not live ones."""
    clock = Clock()
    store = _store(tmp_path / "b.db", clock, ttl=10)
    old = store.issue(SNP, ["demo/a"])
    clock.now = T0 + 7200
    live = store.issue(SNP, ["demo/a"])
    assert store.purge_expired(older_than_seconds=3600) == 1
    with pytest.raises(FreshnessError):
        store.consume(old.challenge_id)
    assert store.consume(live.challenge_id).nonce == live.nonce
