"""Versioned schema migrations, on SQLite and on PostgreSQL: applied once and in order,
recorded, never half-applied, refused when the database is newer than the code."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from support.store_backends import StoreBackend

from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import Category, Unavailable
from keybroker.migrations import Migration, ddl, refuse
from keybroker.store_session import Session


def _one(db: Session) -> None:
    ddl(db, "CREATE TABLE things (id INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL,"
            " at REAL NOT NULL, tag TEXT NOT NULL DEFAULT '', empty BLOB NOT NULL DEFAULT x'')")
    refuse(db, "things_no_delete", "things", "DELETE", "things are kept")


def _two(db: Session) -> None:
    ddl(db, "CREATE TABLE counts (n INTEGER NOT NULL)")
    db.execute("INSERT INTO counts (n) VALUES (1)")


def _broken(db: Session) -> None:
    ddl(db, "CREATE TABLE half (n INTEGER)")
    db.execute("INSERT INTO no_such_table VALUES (1)")


STEPS = (Migration(1, "things", _one), Migration(2, "counts", _two))


def test_applied_once_and_recorded(db_backend: StoreBackend) -> None:
    """The first open applies 1 and 2 and records them; the next applies nothing."""
    target = db_backend.target("m")
    first = open_database(target, component="demo", migrations=STEPS)
    assert first.applied == (1, 2)
    again = open_database(target, component="demo", migrations=STEPS)
    assert again.applied == ()
    rows = db_backend.raw("m").execute(
        "SELECT component, version, summary FROM schema_migrations ORDER BY version")
    assert rows == [("demo", 1, "things"), ("demo", 2, "counts")]
    assert db_backend.raw("m").execute("SELECT n FROM counts") == [(1,)]


def test_later_step_applies_alone(db_backend: StoreBackend) -> None:
    """A database at version 1 gets only step 2 when the code learns it."""
    target = db_backend.target("m")
    assert open_database(target, component="demo", migrations=STEPS[:1]).applied == (1,)
    assert open_database(target, component="demo", migrations=STEPS).applied == (2,)


def test_translated_types_round_trip(db_backend: StoreBackend) -> None:
    """BLOB, REAL, defaults and the refusing trigger mean the same on both backends."""
    db = open_database(db_backend.target("m"), component="demo", migrations=STEPS)
    db.run(lambda s: s.execute("INSERT INTO things (blob, at) VALUES (?, ?)",
                               [b"\x00\xff", 1750000000.123456]))
    row = db.run(lambda s: s.execute("SELECT id, blob, at, tag, empty FROM things").fetchone())
    assert tuple(row) == (1, b"\x00\xff", 1750000000.123456, "", b"")
    with pytest.raises(Unavailable):
        db.run(lambda s: s.execute("DELETE FROM things"))


def test_failed_step_leaves_nothing(db_backend: StoreBackend) -> None:
    """A step that fails is rolled back with its version: nothing of it remains, and the
    fixed step applies later."""
    target = db_backend.target("m")
    with pytest.raises(Unavailable) as exc:
        open_database(target, component="demo",
                      migrations=(STEPS[0], Migration(2, "broken", _broken)))
    assert exc.value.category is Category.UNAVAILABLE
    raw = db_backend.raw("m")
    tables = ("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'"
              if db_backend.postgres else
              "SELECT count(*) FROM sqlite_master WHERE name = 'half'")
    assert raw.execute(tables) == [(0,)]
    assert open_database(target, component="demo", migrations=STEPS).applied == (1, 2)


def test_newer_database_is_refused(db_backend: StoreBackend) -> None:
    """A version this code does not know (a newer keybroker migrated) is refused."""
    target = db_backend.target("m")
    open_database(target, component="demo", migrations=STEPS)
    db_backend.raw("m").execute("INSERT INTO schema_migrations VALUES ('demo', 3, 'x', 0)")
    with pytest.raises(Unavailable) as exc:
        open_database(target, component="demo", migrations=STEPS)
    assert exc.value.rule == "store.schema-version"
    assert (exc.value.expected, exc.value.actual) == ("version <= 2", "version 3")


def test_steps_must_be_contiguous(tmp_path: Path) -> None:
    """Steps numbered with a gap are a programming error, caught at open."""
    with pytest.raises(ValueError, match="numbered"):
        open_database(tmp_path / "m.db", component="demo", migrations=(STEPS[1],))


def open_in_process(target: DatabaseTarget) -> tuple[int, ...]:
    """Child process: open (and migrate) the store."""
    return open_database(target, component="demo", migrations=STEPS).applied


def test_replicas_starting_together_migrate_once(db_backend: StoreBackend) -> None:
    """Four processes opening a fresh database at once: each step is applied by one."""
    target = db_backend.target("m")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(open_in_process, [target] * 4)
    assert sorted(results) == [(), (), (), (1, 2)]
    assert db_backend.raw("m").execute("SELECT n FROM counts") == [(1,)]
