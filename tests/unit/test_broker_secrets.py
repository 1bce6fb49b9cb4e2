"""Broker secrets: envelope encryption round trip, tamper detection, CAS, KEK file rules."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support.store_backends import RawConnection, RawError, StoreBackend

from broker.kek import KEK_SIZE, FileBackend, FileKek
from broker.kek_ring import KekRing
from broker.secrets import SecretStore, VersionConflict
from broker.service import BROKER_MIGRATIONS
from keybroker.database import open_database
from keybroker.errors import Category, KeybrokerError, Malformed, Unavailable

T0 = 1_750_000_000.0


def _store(tmp: Path, where: StoreBackend) -> SecretStore:
    kek_path = tmp / "kek.bin"
    if not kek_path.exists():
        FileKek.create(kek_path)
    db = open_database(where.target("broker"), component="broker",
                       migrations=BROKER_MIGRATIONS)
    return SecretStore(db, KekRing(db, FileBackend(kek_path), clock=lambda: T0),
                       clock=lambda: T0)


def _raw(where: StoreBackend) -> RawConnection:
    conn = where.raw("broker")
    for trigger in ("secrets_value_immutable", "secrets_no_delete"):  # an attacker with
        conn.drop_trigger(trigger, "secrets")  # database access drops the guards
    return conn


def test_round_trip_and_versions(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Versions count from 1; latest and explicit versions decrypt to what was stored."""
    store = _store(tmp_path, db_backend)
    assert store.put("demo/db", b"v1-secret") == 1
    assert store.put("demo/db", b"v2-secret") == 2
    assert store.get("demo/db").value == b"v2-secret"
    assert store.get("demo/db").version == 2
    assert store.get("demo/db", 1).value == b"v1-secret"
    assert store.latest_version("demo/db") == 2
    assert [(i.key_id, i.version) for i in store.list()] == [("demo/db", 1), ("demo/db", 2)]


def test_plaintext_not_stored(tmp_path: Path) -> None:
    """Neither the value nor the data key appears in the database file."""
    store = _store(tmp_path, StoreBackend("sqlite", tmp_path))
    store.put("demo/db", b"very-recognisable-secret-value")
    store._db.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("broker.db*"))
    assert b"very-recognisable-secret-value" not in data


def test_tampered_ciphertext_detected(tmp_path: Path, db_backend: StoreBackend) -> None:
    """One flipped ciphertext bit makes the read fail with UNAVAILABLE (integrity)."""
    store = _store(tmp_path, db_backend)
    store.put("demo/db", b"secret")
    conn = _raw(db_backend)
    [(ct,)] = conn.execute("SELECT ciphertext FROM secrets")
    flipped = bytes([ct[0]]) + bytes([ct[1] ^ 1]) + ct[2:]
    conn.execute("UPDATE secrets SET ciphertext = ?", [flipped])
    with pytest.raises(Unavailable) as exc:
        store.get("demo/db")
    assert exc.value.category is Category.UNAVAILABLE


def test_row_moved_to_other_version_detected(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Copying version 1's blobs over version 2 fails: AAD binds key id and version."""
    store = _store(tmp_path, db_backend)
    store.put("demo/db", b"old")
    store.put("demo/db", b"new")
    conn = _raw(db_backend)
    [(wrapped, ct)] = conn.execute(
        "SELECT wrapped_key, ciphertext FROM secrets WHERE version = 1")
    conn.execute("UPDATE secrets SET wrapped_key = ?, ciphertext = ? WHERE version = 2",
                 [wrapped, ct])
    with pytest.raises(KeybrokerError) as exc:
        store.get("demo/db", 2)
    assert exc.value.category is Category.UNAVAILABLE


def test_other_kek_cannot_open(tmp_path: Path, db_backend: StoreBackend) -> None:
    """A different KEK file in place of the recorded one opens nothing (UNAVAILABLE, no
    fallback)."""
    _store(tmp_path, db_backend).put("demo/db", b"secret")
    (tmp_path / "kek.bin").unlink()
    FileKek.create(tmp_path / "kek.bin")
    with pytest.raises(Unavailable) as exc:
        _store(tmp_path, db_backend).get("demo/db")
    assert (exc.value.category, exc.value.rule) == (Category.UNAVAILABLE, "kek.version")


def test_versions_are_immutable(tmp_path: Path, db_backend: StoreBackend) -> None:
    """The store refuses UPDATE of a stored version."""
    store = _store(tmp_path, db_backend)
    store.put("demo/db", b"secret")
    conn = db_backend.raw("broker")
    with pytest.raises(RawError, match="immutable"):
        conn.execute("UPDATE secrets SET created_at = 0")


def test_cas_conflict(tmp_path: Path, db_backend: StoreBackend) -> None:
    """expect_version must equal the latest version (0 = new key), else VersionConflict."""
    store = _store(tmp_path, db_backend)
    assert store.put("demo/db", b"a", expect_version=0) == 1
    with pytest.raises(VersionConflict) as exc:
        store.put("demo/db", b"b", expect_version=0)
    assert (exc.value.expected, exc.value.actual) == (0, 1)
    assert store.put("demo/db", b"b", expect_version=1) == 2
    with pytest.raises(VersionConflict):
        store.put("demo/db", b"c", expect_version=1)
    assert store.get("demo/db").value == b"b"


def test_concurrent_rotation_one_wins(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Eight rotators with the same expected version: exactly one succeeds."""
    _store(tmp_path, db_backend).put("demo/db", b"v1")
    stores = [_store(tmp_path, db_backend) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def rotate(store: SecretStore, n: int) -> None:
        barrier.wait()
        try:
            store.put("demo/db", f"v2-{n}".encode(), expect_version=1)
            outcomes.append("ok")
        except VersionConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=rotate, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert _store(tmp_path, db_backend).latest_version("demo/db") == 2


def test_unknown_key_or_version_is_malformed(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Reading a key or version that was never stored is MALFORMED."""
    store = _store(tmp_path, db_backend)
    store.put("demo/db", b"x")
    for key_id, version in (("demo/none", 0), ("demo/db", 2)):
        with pytest.raises(Malformed) as exc:
            store.get(key_id, version)
        assert exc.value.category is Category.MALFORMED


@pytest.mark.parametrize("value", [b"", b"x" * (64 * 1024 + 1)])
def test_value_size_bounds(tmp_path: Path, db_backend: StoreBackend, value: bytes) -> None:
    """Empty and oversized values are MALFORMED."""
    with pytest.raises(Malformed):
        _store(tmp_path, db_backend).put("demo/db", value)


def test_kek_file_created_0600_and_not_overwritten(tmp_path: Path) -> None:
    """init creates 32 random bytes with mode 0600 and never overwrites an existing KEK."""
    path = tmp_path / "kek.bin"
    FileKek.create(path)
    st = path.stat()
    assert st.st_mode & 0o777 == 0o600
    assert st.st_size == KEK_SIZE
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        FileKek.create(path)
    assert path.read_bytes() == before
    assert FileKek.load(path).kek_id == FileKek(before).kek_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o601])
def test_kek_file_with_group_or_other_access_refused(tmp_path: Path, mode: int) -> None:
    """A KEK file readable or writable by group/others is refused (UNAVAILABLE)."""
    path = tmp_path / "kek.bin"
    FileKek.create(path)
    path.chmod(mode)
    with pytest.raises(Unavailable) as exc:
        FileKek.load(path)
    assert exc.value.category is Category.UNAVAILABLE
    assert exc.value.rule == "kek.permissions"


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_kek_file_with_wrong_size_refused(tmp_path: Path, size: int) -> None:
    """A KEK file that is not exactly 32 bytes is refused."""
    path = tmp_path / "kek.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(size))
    os.close(fd)
    with pytest.raises(Unavailable) as exc:
        FileKek.load(path)
    assert exc.value.rule == "kek.size"


def test_kek_symlink_and_missing_refused(tmp_path: Path) -> None:
    """A missing KEK file or a symlink to one is refused."""
    real = tmp_path / "real.bin"
    FileKek.create(real)
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    for path in (link, tmp_path / "missing.bin"):
        with pytest.raises(Unavailable) as exc:
            FileKek.load(path)
        assert exc.value.category is Category.UNAVAILABLE
