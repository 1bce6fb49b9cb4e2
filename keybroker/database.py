"""Where a store lives: a SQLite file (the embedded default) or a PostgreSQL schema.

A process's configuration names its databases as paths or ``postgresql://`` URLs
(``target``); ``open_database`` opens the store area there, applying its migrations.

Invariants:
- A URL selects PostgreSQL only with the ``postgresql://`` or ``postgres://`` scheme; any
  other value is a path. The area's schema name is fixed by the process (``broker``,
  ``broker_audit``, ``verifier``, ``verifier_audit``), so replicas of one deployment share
  the same tables and two areas never share a table.
- Both backends give the stores the same ``run`` / ``probe`` / ``close`` contract and the
  same ``Unavailable`` errors; stores never see which backend they run on except through
  ``Session.dialect`` in migrations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from keybroker.migrations import Migration
from keybroker.sqlite_database import SqliteDatabase
from keybroker.store_session import Session

T = TypeVar("T")

_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class PostgresTarget:
    """One store area of a PostgreSQL database."""

    url: str
    schema: str

    def __str__(self) -> str:
        return f"PostgreSQL schema {self.schema}"


DatabaseTarget = Path | PostgresTarget


def is_database_url(value: str) -> bool:
    """True when ``value`` names a PostgreSQL database rather than a file."""
    return value.startswith(_SCHEMES)


def database_target(value: str, base: Path, schema: str) -> DatabaseTarget:
    """A configured ``value`` (path relative to ``base``, or URL) for the area ``schema``."""
    if is_database_url(value):
        return PostgresTarget(value, schema)
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


class Database(Protocol):
    """An opened store area."""

    @property
    def where(self) -> str: ...

    @property
    def applied(self) -> tuple[int, ...]: ...

    def run(self, op: Callable[[Session], T]) -> T: ...

    def probe(self) -> None: ...

    def close(self) -> None: ...


def open_database(target: DatabaseTarget, *, component: str, migrations: Sequence[Migration],
                  synchronous: str = "NORMAL", busy_timeout_seconds: float = 2.0) -> Database:
    """Open ``component``'s store at ``target`` and apply its migrations.

    ``synchronous`` and ``busy_timeout_seconds`` are SQLite's; PostgreSQL commits durably
    (the server's ``synchronous_commit``) and waits on its own locks."""
    if isinstance(target, PostgresTarget):
        # Imported here: psycopg only in processes that use PostgreSQL (start-up time).
        from keybroker.postgres_database import PostgresDatabase  # noqa: PLC0415

        return PostgresDatabase(target.url, target.schema, component=component,
                                migrations=migrations)
    return SqliteDatabase(target, component=component, migrations=migrations,
                          synchronous=synchronous, busy_timeout_seconds=busy_timeout_seconds)

