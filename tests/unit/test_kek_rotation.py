"""KEK rotation over real SQLite and the file backend: every data key re-wrapped (ciphertexts
untouched), an interrupted rotation leaves everything readable and resumes, new secrets during
a rotation use the target, old versions are retired only when nothing references them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.store_backends import StoreBackend

from broker.kek import FileBackend, FileKek, KekProvider
from broker.kek_ring import KekRing
from broker.secrets import SecretStore
from broker.service import BROKER_MIGRATIONS
from keybroker.database import open_database
from keybroker.errors import Unavailable

T0 = 1_750_000_000.0


def _store(tmp: Path, where: StoreBackend) -> SecretStore:
    if not (tmp / "kek.bin").exists() and not (tmp / "kek.bin.v2").exists():
        FileKek.create(tmp / "kek.bin")
    db = open_database(where.target("broker"), component="broker", migrations=BROKER_MIGRATIONS)
    return SecretStore(db, KekRing(db, FileBackend(tmp / "kek.bin"), clock=lambda: T0),
                       clock=lambda: T0)


def _rows(where: StoreBackend) -> list[tuple[str, int, str, bytes, bytes]]:
    return [(str(r[0]), int(r[1]), str(r[2]), bytes(r[3]), bytes(r[4])) for r in
            where.raw("broker").execute("SELECT key_id, version, kek_id, wrapped_key,"
                                        " ciphertext FROM secrets ORDER BY key_id, version")]


def test_rotation_rewraps_every_key_and_retires_the_old_kek(
        tmp_path: Path, db_backend: StoreBackend) -> None:
    """After rotate: every row names v2, ciphertexts are byte-identical, values read back,
    v1's file is destroyed and v1 is retired."""
    store = _store(tmp_path, db_backend)
    values = {f"app/k{i}": f"value-{i}".encode() for i in range(7)}
    for key_id, value in values.items():
        store.put(key_id, value)
    before = _rows(db_backend)
    done = store.ring.rotate(store.rewrap)
    after = _rows(db_backend)
    assert done.rewrapped == 7 and not done.resumed
    assert {r[2] for r in after} == {done.target.kek_id} != {r[2] for r in before}
    assert [r[4] for r in after] == [r[4] for r in before]  # ciphertext untouched
    assert [r[3] for r in after] != [r[3] for r in before]
    assert all(_store(tmp_path, db_backend).get(k).value == v for k, v in values.items())
    states = [(v.version, v.state) for v in store.ring.versions()]
    assert states == [(1, "retired"), (2, "current")]
    assert not (tmp_path / "kek.bin").exists() and (tmp_path / "kek.bin.v2").exists()
    assert done.retired == (before[0][2],)


class Crash(Exception):
    """A simulated crash in the middle of re-wrapping."""


def test_interrupted_rotation_stays_readable_and_resumes(
        tmp_path: Path, db_backend: StoreBackend) -> None:
    """A crash after some rows leaves a mix that still opens (each row names its KEK), new
    secrets use the target, and rotate again finishes ("resumed")."""
    store = _store(tmp_path, db_backend)
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
    mixed = {r[2] for r in _rows(db_backend)}
    assert len(mixed) == 2  # some rows under the target, the rest under v1
    fresh = _store(tmp_path, db_backend)
    assert all(fresh.get(f"app/k{i}").value == f"v{i}".encode() for i in range(5))
    fresh.put("app/new", b"during rotation")
    target = next(v for v in fresh.ring.versions() if v.state == "target")
    assert _rows(db_backend)[-1][2] == target.kek_id  # written under the target
    done = fresh.ring.rotate(fresh.rewrap)
    assert done.resumed and done.target.kek_id == target.kek_id and done.rewrapped == 3
    assert {r[2] for r in _rows(db_backend)} == {target.kek_id}
    assert [(v.version, v.state) for v in fresh.ring.versions()] == [(1, "retired"),
                                                                       (2, "current")]


def test_a_retired_or_unknown_kek_opens_nothing(
        tmp_path: Path, db_backend: StoreBackend) -> None:
    """A row naming a KEK version that is retired (or was never registered) is UNAVAILABLE."""
    store = _store(tmp_path, db_backend)
    store.put("app/k", b"v")
    old = _rows(db_backend)[0]
    store.ring.rotate(store.rewrap)
    with pytest.raises(Unavailable) as exc:
        store.ring.provider(old[2])
    assert exc.value.rule == "kek.version"
    with pytest.raises(Unavailable):
        store.ring.provider("file:0000000000000000")


def test_second_rotation_and_unreferenced_only_retirement(
        tmp_path: Path, db_backend: StoreBackend) -> None:
    """Two rotations in a row leave exactly one current version; retire_unused keeps a
    previous version while a row still names it."""
    store = _store(tmp_path, db_backend)
    store.put("app/k", b"v")
    store.ring.rotate(store.rewrap)
    store.ring.rotate(store.rewrap)
    assert [v.state for v in store.ring.versions()] == ["retired", "retired", "current"]
    assert store.get("app/k").value == b"v"
