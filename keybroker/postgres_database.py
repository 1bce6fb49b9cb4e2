"""The PostgreSQL backend of the stores (psycopg 3 with psycopg-pool), for replicas.

Each store area (broker state, broker audit, verifier state, verifier audit) is one
PostgreSQL schema of the configured database; every connection of the area runs with
``search_path`` set to it, so the stores' SQL is the same as on SQLite.

Invariants:
- Connections are in autocommit mode; a transaction exists only inside ``immediate`` or
  ``read_view`` (explicit BEGIN ... COMMIT), so a single-statement write such as the
  challenge consume (a conditional UPDATE) is atomic on its own and no read leaves a
  transaction open.
- ``begin_write`` takes a transaction-scoped advisory lock of the area: writers of one area
  are serialised across every process and replica, as SQLite's write lock does for a file
  (the audit chain stays one linear chain across replicas).
- Connection loss, serialisation failures and deadlocks before a COMMIT was sent are retried
  a bounded number of times on a fresh connection (the server rolled the transaction back).
  A failure while COMMIT is in flight is never retried, because its outcome is unknown:
  ``Unavailable``. Every other database error is ``Unavailable`` at once. A lone autocommit
  statement retried after a lost connection is either idempotent (pruning) or fails closed
  (a challenge consumed by the lost attempt is not consumable again: FRESHNESS).
- Pools are shared by the stores of one area in one process and closed with the last one;
  nothing connects at import time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from keybroker.errors import Unavailable
from keybroker.migrations import Migration, migrate
from keybroker.store_session import Session

_log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected,
              psycopg.OperationalError, psycopg_pool.PoolTimeout)


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> bytes:
    return sql.replace("%", "%%").replace("?", "%s").encode()


def _values(params: Sequence[object]) -> list[object]:
    # SQLite stores booleans as integers; so do the BIGINT columns here.
    return [int(p) if isinstance(p, bool) else p for p in params]


def write_lock_key(schema: str) -> int:
    """The advisory lock key that serialises the writers of ``schema``."""
    return int.from_bytes(hashlib.sha256(f"keybroker:{schema}".encode()).digest()[:8], "big",
                          signed=True)


class CommitUnknown(Exception):
    """The connection failed while COMMIT was in flight."""


class PostgresSession:
    """One pooled connection, as the stores' ``Session``."""

    dialect: Literal["postgresql"] = "postgresql"

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], lock_key: int) -> None:
        self._conn = conn
        self._lock_key = lock_key

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[
            tuple[object, ...]]:
        if not params:
            return self._conn.execute(sql.encode())
        return self._conn.execute(_placeholders(sql), _values(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), [_values(row) for row in rows])

    def begin_write(self) -> None:
        self._conn.execute(b"BEGIN")
        self._conn.execute(b"SELECT pg_advisory_xact_lock(%s)", [self._lock_key])

    def begin_read(self) -> None:
        self._conn.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        try:
            self._conn.execute(b"COMMIT")
        except psycopg.OperationalError as exc:
            raise CommitUnknown(str(exc)) from exc

    def rollback(self) -> None:
        if not self._conn.closed:
            self._conn.execute(b"ROLLBACK")


class _Pools:
    """Process-wide pools, one per (database URL, schema), counted by their users."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str], tuple[psycopg_pool.ConnectionPool, int]] = {}

    def take(self, url: str, schema: str, size: int,
             timeout: float) -> psycopg_pool.ConnectionPool:
        with self._lock:
            pool, users = self._pools.get((url, schema), (None, 0))
            if pool is None:
                pool = psycopg_pool.ConnectionPool(
                    url, min_size=1, max_size=size, timeout=timeout, open=False,
                    kwargs={"autocommit": True, "options": f"-c search_path={schema}",
                            "connect_timeout": max(1, int(timeout))},
                    name=f"keybroker-{schema}")
                pool.open(wait=False)
            self._pools[(url, schema)] = (pool, users + 1)
            return pool

    def give(self, url: str, schema: str) -> None:
        with self._lock:
            pool, users = self._pools.pop((url, schema), (None, 0))
            if pool is None:
                return
            if users > 1:
                self._pools[(url, schema)] = (pool, users - 1)
                return
        pool.close()


_POOLS = _Pools()


class PostgresDatabase:
    """One store area (a schema) of a PostgreSQL database, shared by replicas."""

    def __init__(self, url: str, schema: str, *, component: str,
                 migrations: Sequence[Migration], pool_size: int = 8,
                 timeout_seconds: float = 5.0, retries: int = 3) -> None:
        if not schema.isidentifier() or not schema.islower():
            raise ValueError(f"schema must be a lower-case identifier, not {schema!r}")
        self.url = url
        self.schema = schema
        self.where = f"{_redacted(url)} schema {schema}"
        self._retries = retries
        self._lock_key = write_lock_key(schema)
        self._pool = _POOLS.take(url, schema, pool_size, timeout_seconds)
        self._local = threading.local()
        self._open = True
        try:
            self.applied = self.run(lambda db: migrate(
                db, component, migrations, prelude=(f"CREATE SCHEMA IF NOT EXISTS {schema}",)))
        except BaseException:
            self.close()
            raise

    def run(self, op: Callable[[Session], T]) -> T:
        """Run ``op`` on a pooled connection; transient failures before COMMIT are retried,
        then ``Unavailable``. An ``op`` run inside another of this thread uses the same
        connection (and transaction), as SQLite's per-thread connection does."""
        active: PostgresSession | None = getattr(self._local, "session", None)
        if active is not None:
            return op(active)
        delay = 0.05
        for attempt in range(1, self._retries + 1):
            try:
                with self._pool.connection() as conn:
                    self._local.session = PostgresSession(conn, self._lock_key)
                    try:
                        return op(self._local.session)
                    finally:
                        self._local.session = None
            except CommitUnknown as exc:
                _log.error("postgresql commit outcome unknown on %s: %s", self.where, exc)
                raise Unavailable("store unavailable: commit outcome unknown",
                                  rule="store.postgresql", actual="connection lost in COMMIT",
                                  ) from None
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if isinstance(exc, _RETRYABLE) and attempt < self._retries:
                    _log.warning("postgresql %s on %s (attempt %d), retrying",
                                 type(exc).__name__, self.where, attempt)
                    time.sleep(delay)
                    delay *= 4
                    continue
                _log.error("postgresql failure on %s: %s", self.where, exc)
                raise Unavailable("store unavailable", rule="store.postgresql",
                                  actual=_describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def probe(self) -> None:
        """Health probe: a fresh connection reads this area's migration table."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=2,
                                 options=f"-c search_path={self.schema}") as conn:
                row = conn.execute(b"SELECT count(*) FROM schema_migrations").fetchone()
        except psycopg.Error as exc:
            raise Unavailable(f"database {self.where} is not usable", rule="health.database",
                              actual=_describe(exc)) from None
        if row is None or not row[0]:
            raise Unavailable(f"database {self.where} has no schema",
                              rule="health.database", expected="its tables",
                              actual="no migrations")

    def close(self) -> None:
        """Give the pool back (closed with its last user)."""
        if self._open:
            self._open = False
            _POOLS.give(self.url, self.schema)


def _describe(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}{f' {state}' if state else ''}: {text}"


def _redacted(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    host = info.get("host", "")
    port = info.get("port", "")
    return f"postgresql://{host}{f':{port}' if port else ''}/{info.get('dbname', '')}"
