"""The SQLite backend of the stores (stdlib sqlite3, WAL mode set through sqlite-utils).

Invariants:
- Every database runs in WAL mode with a busy timeout; each thread has its own connection
  (the gRPC services run blocking store calls in worker threads), in autocommit mode: a
  transaction exists only inside ``immediate`` or ``read_view``.
- ``synchronous`` is FULL where durability is a security property (the audit log), so a
  committed record survives a crash or power loss.
- SQLite BUSY/LOCKED is retried a bounded number of times, then becomes ``Unavailable``; any
  other SQLite failure is ``Unavailable`` at once. The store never answers "probably fine".
- Migrations run at open time, never at import time. Only that first open may create the
  file: a database file that vanishes later is ``Unavailable`` (connections of new threads
  open it read-write, never creating an empty one).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

import sqlite_utils

from keybroker.errors import Unavailable
from keybroker.migrations import Migration, migrate
from keybroker.store_session import Session

_log = logging.getLogger(__name__)

T = TypeVar("T")

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _BUSY_CODES:
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteSession:
    """One thread's connection, as the stores' ``Session``."""

    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self.conn.executemany(sql, rows)

    def begin_write(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()


class SqliteDatabase:
    """A SQLite file shared by threads (one connection each) and by other processes."""

    def __init__(
        self,
        path: Path,
        *,
        component: str,
        migrations: Sequence[Migration],
        synchronous: str = "NORMAL",
        busy_timeout_seconds: float = 2.0,
        retries: int = 3,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = path
        self.where = str(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout_seconds
        self._retries = retries
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._created = False
        self.applied = self.run(lambda db: migrate(db, component, migrations))
        self._created = True  # from now on a vanished file is an error, never re-created

    def _connect(self) -> SqliteSession:
        session: SqliteSession | None = getattr(self._local, "session", None)
        if session is not None:
            return session
        target, uri = ((f"file:{quote(str(self.path))}?mode=rw", True) if self._created
                       else (str(self.path), False))
        # Autocommit: a lone write is its own transaction; ``immediate`` and ``read_view``
        # open explicit ones (the same model as the PostgreSQL backend).
        conn = sqlite3.connect(target, uri=uri, timeout=self._busy_timeout,
                               check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        sqlite_utils.Database(conn, execute_plugins=False).enable_wal()
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        session = SqliteSession(conn)
        self._local.session = session
        with self._lock:
            self._connections.append(conn)
        return session

    def run(self, op: Callable[[Session], T]) -> T:
        """Run ``op`` on this thread's connection; BUSY is retried, then ``Unavailable``."""
        delay = 0.01
        for attempt in range(1, self._retries + 1):
            try:
                return op(self._connect())
            except sqlite3.Error as exc:
                if _is_busy(exc) and attempt < self._retries:
                    _log.warning("sqlite busy on %s (attempt %d), retrying", self.path, attempt)
                    time.sleep(delay)
                    delay *= 4
                    continue
                _log.error("sqlite failure on %s: %s", self.path, exc)
                raise Unavailable("store unavailable", rule="store.sqlite",
                                  actual=type(exc).__name__) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def probe(self) -> None:
        """Health probe of this database's file (``probe_file``)."""
        probe_file(self.path)

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


def probe_file(path: Path) -> None:
    """Health probe: open ``path`` afresh (read-write, never creating it) and read its schema;
    ``Unavailable`` naming the file when it is gone, unreadable or corrupt.

    A fresh connection, because open ones keep working on a file that was deleted."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=1.0)
        try:
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Unavailable(f"database {path} is not usable", rule="health.database",
                          actual=str(exc)[:200]) from None
    if not tables:
        raise Unavailable(f"database {path} is empty (replaced?)", rule="health.database",
                          expected="its tables", actual="no tables")
