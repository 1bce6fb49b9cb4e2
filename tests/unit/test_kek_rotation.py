"""KEK rotation over real SQLite and the file backend: every data key re-wrapped (ciphertexts
untouched), an interrupted rotation leaves everything readable and resumes, new secrets during
a rotation use the target, old versions are retired only when nothing references them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils

from broker.kek import FileBackend, FileKek, KekProvider
from broker.kek_ring import KekRing, kek_schema
from broker.secrets import SecretStore, secret_schema
from keybroker.database import Database
from keybroker.errors import Unavailable

T0 = 1_750_000_000.0


def _schema(db: sqlite_utils.Database) -> None:
    kek_schema(db)
    secret_schema(db)


def _store(tmp: Path) -> SecretStore:
    if not (tmp / "b.db").exists():
        FileKek.create(tmp / "kek.bin")
    db = Database(tmp / "b.db", schema=_schema)
    return SecretStore(db, KekRing(db, FileBackend(tmp / "kek.bin"), clock=lambda: T0),
                       clock=lambda: T0)


def _rows(tmp: Path) -> list[tuple[str, int, str, bytes, bytes]]:
    with sqlite3.connect(tmp / "b.db") as conn:
        return [(str(r[0]), int(r[1]), str(r[2]), bytes(r[3]), bytes(r[4])) for r in
                conn.execute("SELECT key_id, version, kek_id, wrapped_key, ciphertext FROM "
                             "secrets ORDER BY key_id, version")]


def test_rotation_rewraps_every_key_and_retires_the_old_kek(
        tmp_path: Path) -> None:
    """After rotate: every row names v2, ciphertexts are byte-identical, values read back,
    v1's file is destroyed and v1 is retired."""
    store = _store(tmp_path)
    values = {f"app/k{i}": f"value-{i}".encode() for i in range(7)}
    for key_id, value in values.items():
        store.put(key_id, value)
    before = _rows(tmp_path)
    done = store.ring.rotate(store.rewrap)
    after = _rows(tmp_path)
    assert done.rewrapped == 7 and not done.resumed
    assert {r[2] for r in after} == {done.target.kek_id} != {r[2] for r in before}
    assert [r[4] for r in after] == [r[4] for r in before]  # ciphertext untouched
    assert [r[3] for r in after] != [r[3] for r in before]
    assert all(_store(tmp_path).get(k).value == v for k, v in values.items())
    states = [(v.version, v.state) for v in store.ring.versions()]
    assert states == [(1, "retired"), (2, "current")]
    assert not (tmp_path / "kek.bin").exists() and (tmp_path / "kek.bin.v2").exists()
    assert done.retired == (before[0][2],)


class Crash(Exception):
    """A simulated crash in the middle of re-wrapping."""


def test_interrupted_rotation_stays_readable_and_resumes(tmp_path: Path) -> None:
    """A crash after some rows leaves a mix that still opens (each row names its KEK), new
    secrets use the target, and rotate again finishes ("resumed")."""
    store = _store(tmp_path)
    for i in range(5):
        store.put(f"app/k{i}", f"v{i}".encode())

    def one_batch_then_crash(target: KekProvider, kek: Callable[[str], KekProvider]) -> int:
        calls = {"n": 0}

        def dying(key_id: str) -> KekProvider:  # the third old key never gets opened
            calls["n"] += 1
            if calls["n"] > 2:
                raise Crash
            return kek(key_id)

        return store.rewrap(target, dying, batch=1)

    with pytest.raises(Crash):
        store.ring.rotate(one_batch_then_crash)
    mixed = {r[2] for r in _rows(tmp_path)}
    assert len(mixed) == 2  # some rows under the target, the rest under v1
    fresh = _store(tmp_path)
    assert all(fresh.get(f"app/k{i}").value == f"v{i}".encode() for i in range(5))
    fresh.put("app/new", b"during rotation")
    target = next(v for v in fresh.ring.versions() if v.state == "target")
    assert _rows(tmp_path)[-1][2] == target.kek_id  # written under the target
    done = fresh.ring.rotate(fresh.rewrap)
    assert done.resumed and done.target.kek_id == target.kek_id and done.rewrapped == 3
    assert {r[2] for r in _rows(tmp_path)} == {target.kek_id}
    assert [(v.version, v.state) for v in fresh.ring.versions()] == [(1, "retired"),
                                                                       (2, "current")]


def test_a_retired_or_unknown_kek_opens_nothing(tmp_path: Path) -> None:
    """A row naming a KEK version that is retired (or was never registered) is UNAVAILABLE."""
    store = _store(tmp_path)
    store.put("app/k", b"v")
    old = _rows(tmp_path)[0]
    store.ring.rotate(store.rewrap)
    with pytest.raises(Unavailable) as exc:
        store.ring.provider(old[2])
    assert exc.value.rule == "kek.version"
    with pytest.raises(Unavailable):
        store.ring.provider("file:0000000000000000")


def test_second_rotation_and_unreferenced_only_retirement(tmp_path: Path) -> None:
    """Two rotations in a row leave exactly one current version; retire_unused keeps a
    previous version while a row still names it."""
    store = _store(tmp_path)
    store.put("app/k", b"v")
    store.ring.rotate(store.rewrap)
    store.ring.rotate(store.rewrap)
    assert [v.state for v in store.ring.versions()] == ["retired", "retired", "current"]
    assert store.get("app/k").value == b"v"
