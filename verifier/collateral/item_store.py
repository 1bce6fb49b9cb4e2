"""The verifier's collateral store: verified collateral items in the state database (SQLite or
PostgreSQL), one row per key (what the item endorses).

Invariants:
- Only items a source verified are put here (fetch, prefetch, refresh, bundle import all
  verify first); the verifier still verifies everything it reads from here on each use.
- ``put`` keeps one item per key: it replaces the stored item only with a different one that
  is not older (``issued``), so importing an old bundle never rolls collateral back.
- Every change takes the next ``version``; ``generation`` (the highest version) tells a
  running verifier that something changed, so it reloads without a restart.
- Times are stored as fixed-width RFC 3339 UTC text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import Malformed
from keybroker.migrations import Migration, ddl
from keybroker.store_session import Session, immediate
from verifier.collateral.item import ITEM_KINDS, CollateralItem, Need, check_key


def _schema(db: Session) -> None:
    ddl(db, "CREATE TABLE IF NOT EXISTS collateral_items ("
            " key TEXT PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL,"
            " issuer_chain BLOB NOT NULL, issued TEXT NOT NULL, next_update TEXT NOT NULL,"
            " digest TEXT NOT NULL, source TEXT NOT NULL, fetched_at TEXT NOT NULL,"
            " version INTEGER NOT NULL)")


COLLATERAL_MIGRATIONS = (Migration(1, "collateral items", _schema),)
_SELECT = ("SELECT key, kind, body, issuer_chain, issued, next_update, digest, source, "
           "fetched_at FROM collateral_items")
_UPSERT = ("INSERT INTO collateral_items (key, kind, body, issuer_chain, issued, next_update,"
           " digest, source, fetched_at, version) VALUES (?,?,?,?,?,?,?,?,?,?)"
           " ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, body = excluded.body,"
           " issuer_chain = excluded.issuer_chain, issued = excluded.issued,"
           " next_update = excluded.next_update, digest = excluded.digest,"
           " source = excluded.source, fetched_at = excluded.fetched_at,"
           " version = excluded.version")


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(value: object) -> datetime:
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def _item(row: Sequence[Any]) -> CollateralItem:
    kind = str(row[1])
    if kind not in ITEM_KINDS:
        raise Malformed("stored collateral item has an unknown kind", rule="collateral.kind",
                        expected=" | ".join(ITEM_KINDS), actual=kind)
    return CollateralItem(key=str(row[0]), kind=kind,
                          body=bytes(row[2]), issuer_chain=bytes(row[3]), issued=_time(row[4]),
                          next_update=_time(row[5]), source=str(row[7]),
                          fetched_at=_time(row[8]))


class CollateralItemStore:
    """Verified collateral items by key."""

    def __init__(self, target: DatabaseTarget, *, busy_timeout_seconds: float = 5.0) -> None:
        self._db = open_database(target, component="collateral",
                                 migrations=COLLATERAL_MIGRATIONS, synchronous="FULL",
                                 busy_timeout_seconds=busy_timeout_seconds)

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    def put(self, item: CollateralItem) -> bool:
        """Store ``item`` unless the same or a newer item is there; True when stored."""
        check_key(item.key)
        row = [item.key, item.kind, item.body, item.issuer_chain, _stamp(item.issued),
               _stamp(item.next_update), item.digest, item.source, _stamp(item.fetched_at)]

        def op(db: Session) -> bool:
            with immediate(db):
                found = db.execute("SELECT digest, issued FROM collateral_items WHERE key = ?",
                                   [item.key]).fetchone()
                if found is not None and (str(found[0]) == item.digest
                                          or _time(found[1]) > item.issued):
                    return False
                version = int(db.execute("SELECT coalesce(max(version), 0) + 1 FROM "
                                         "collateral_items").fetchone()[0])
                db.execute(_UPSERT, [*row, version])
                return True

        return bool(self._db.run(op))

    def get(self, key: str) -> CollateralItem | None:
        """The item stored under ``key``."""
        row = self._db.run(lambda db: db.execute(
            _SELECT + " WHERE key = ?", [key]).fetchone())
        return None if row is None else _item(row)

    def held(self, need: Need) -> tuple[bytes, bytes] | None:
        """The body and issuer chain stored for ``need`` (a fetcher's ``held``)."""
        item = self.get(need.key)
        return None if item is None else (item.body, item.issuer_chain)

    def items(self) -> list[CollateralItem]:
        """Every stored item, by key."""
        rows = self._db.run(lambda db: db.execute(
            _SELECT + " ORDER BY key").fetchall())
        return [_item(r) for r in rows]

    def generation(self) -> int:
        """Changes whenever any process stores an item."""
        row = self._db.run(lambda db: db.execute(
            "SELECT coalesce(max(version), 0) FROM collateral_items").fetchone())
        return int(row[0])
