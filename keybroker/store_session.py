"""What a store sees of its database: one session (connection) and its transactions.

Every store (challenges, secrets, KEK versions, audit, policies, reference values, records,
TPM enrolments) is written once against this interface and runs unchanged on SQLite (the
embedded default) and on PostgreSQL (replicas sharing state).

Invariants:
- SQL is written with ``?`` placeholders in the subset both dialects accept (``RETURNING``,
  ``ON CONFLICT``, ``coalesce``, partial indexes); the PostgreSQL session translates the
  placeholders. Values are bound, never formatted into SQL text.
- ``immediate`` is the only way to write more than one statement atomically: the write lock
  of the store is held from the start of the transaction (SQLite ``BEGIN IMMEDIATE``; on
  PostgreSQL a transaction-scoped advisory lock of the store's schema), so read-then-write
  sequences (next version number, the audit chain's last hash) are serialised across
  threads, processes and replicas alike.
- ``read_view`` gives several reads one consistent snapshot and never writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...


class Session(Protocol):
    """One connection of one store, used by one thread at a time."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...

    def begin_write(self) -> None:
        """Start a transaction holding the store's write lock."""

    def begin_read(self) -> None:
        """Start a read-only transaction with one snapshot."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


@contextmanager
def immediate(db: Session) -> Iterator[Session]:
    """A write transaction that holds the store's write lock from its first statement."""
    db.begin_write()
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    db.commit()


@contextmanager
def read_view(db: Session) -> Iterator[Session]:
    """Several reads from one snapshot (always rolled back: nothing is written)."""
    db.begin_read()
    try:
        yield db
    finally:
        db.rollback()
