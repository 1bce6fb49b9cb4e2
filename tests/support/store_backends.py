"""The two store backends for tests: a SQLite file in the test's directory, or a fresh
schema of the session's throwaway PostgreSQL cluster (``keybroker_cli.pg_cluster``).

``StoreBackend.target(area)`` is what a config would name; ``raw(area)`` is a connection
behind the store's back (an attacker or operator with database access), with ``?``
placeholders on both backends and ``RawError`` for anything the database refuses."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from keybroker.database import DatabaseTarget, PostgresTarget

_SCHEMAS = itertools.count(1)


class RawError(Exception):
    """The database refused a raw statement."""


@dataclass
class RawConnection:
    """Autocommit statements straight to one store area."""

    conn: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]
    postgres: bool

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            if isinstance(self.conn, sqlite3.Connection):
                return self.conn.execute(sql, params).fetchall()
            cursor = self.conn.execute(sql.replace("?", "%s").encode(), list(params) or None)
            return cursor.fetchall() if cursor.description else []
        except (sqlite3.Error, psycopg.Error) as exc:
            raise RawError(str(exc)) from exc

    def drop_trigger(self, name: str, table: str) -> None:
        """What an attacker with write access does first."""
        self.execute(f"DROP TRIGGER {name} ON {table}" if self.postgres
                     else f"DROP TRIGGER {name}")

    def close(self) -> None:
        self.conn.close()


@dataclass
class StoreBackend:
    """One backend for one test."""

    name: str  # "sqlite" | "postgres"
    directory: Path
    url: str = ""
    prefix: str = field(default_factory=lambda: f"t{next(_SCHEMAS)}_")
    _raw: list[RawConnection] = field(default_factory=list)

    @property
    def postgres(self) -> bool:
        return self.name == "postgres"

    def target(self, area: str) -> DatabaseTarget:
        """Where the store ``area`` lives for this test (the same area, the same data)."""
        if self.postgres:
            return PostgresTarget(self.url, self.prefix + area)
        return self.directory / f"{area}.db"

    def raw(self, area: str) -> RawConnection:
        """A connection to ``area`` behind the store's back."""
        target = self.target(area)
        if isinstance(target, PostgresTarget):
            raw = RawConnection(psycopg.connect(
                target.url, autocommit=True, options=f"-c search_path={target.schema}"), True)
        else:
            raw = RawConnection(sqlite3.connect(str(target), isolation_level=None), False)
        self._raw.append(raw)
        return raw

    def close(self) -> None:
        for raw in self._raw:
            raw.close()
