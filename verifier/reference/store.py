"""Reference-value sets in the verifier state database: import, life cycle, snapshots.

Invariants:
- A set version (its document, digest, provenance and values) is written once and never
  updated or deleted; the same holds for state-change events (triggers refuse UPDATE and
  DELETE). A version's state is the ``to_state`` of its latest event; import writes the first
  event (``staged``), so every state a version ever had is in the log with author, comment
  and time.
- Import always creates a new STAGED version numbered max + 1 for the set, inside a
  ``BEGIN IMMEDIATE`` transaction (``UNIQUE(name, version)`` backs it up), so concurrent
  imports get distinct numbers. Re-importing the exact document of a version that is not
  retired is refused (``refvalues.unchanged``).
- Documents are parsed with ``keybroker.document`` against the ``reference-values`` schema,
  then read by ``reference_document`` (``not_before < not_after``, value names unique within
  the document, ``file:line`` errors).
- Allowed transitions: staged->active, staged->retired, active->deprecated (``retire_at``
  required, after the transition time), active->retired, deprecated->retired. Anything else is
  Malformed rule ``refvalues.state``. A RETIRED version's ``retire_at`` in snapshots is the
  time it was retired (or its earlier deprecation deadline).
- Author and comment are required (non-empty) for imports and transitions. Times are stored
  as fixed-width RFC 3339 UTC text. Storage failures are ``Unavailable``.
- ``generation()`` changes whenever any process imports or transitions (max row ids of the
  two append-only tables), so services reload their snapshot cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keybroker.database import DatabaseTarget, open_database
from keybroker.document import load_document
from keybroker.errors import Malformed
from keybroker.migrations import Migration, ddl, refuse
from keybroker.store_session import Session, immediate, read_view
from verifier.reference.manifest import Provider, manifest_provenance, verify_manifest
from verifier.reference.values import (
    ReferenceSnapshot,
    RefSetVersion,
    RefState,
    RefValue,
    reference_document,
    rfc3339,
)

SCHEMA_NAME = "reference-values"
_TRANSITIONS: dict[RefState, frozenset[RefState]] = {
    RefState.STAGED: frozenset({RefState.ACTIVE, RefState.RETIRED}),
    RefState.ACTIVE: frozenset({RefState.DEPRECATED, RefState.RETIRED}),
    RefState.DEPRECATED: frozenset({RefState.RETIRED}),
    RefState.RETIRED: frozenset(),
}


@dataclass(frozen=True)
class RefEvent:
    """One state change of a set version (import is the change to STAGED)."""

    name: str
    version: int
    from_state: RefState | None
    to_state: RefState
    retire_at: datetime | None
    author: str
    comment: str
    at: datetime


def _stamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(text: object) -> datetime:
    return datetime.fromisoformat(str(text)).astimezone(UTC)


def _opt_time(text: object) -> datetime | None:
    return None if text is None else _time(text)


def reference_schema(db: Session) -> None:
    """Create the reference-value tables and their immutability triggers (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS refset_versions ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " name TEXT NOT NULL,"
        " version INTEGER NOT NULL CHECK (version >= 1),"
        " digest TEXT NOT NULL,"
        " document BLOB NOT NULL,"
        " description TEXT NOT NULL,"
        " provenance TEXT NOT NULL,"
        " author TEXT NOT NULL CHECK (author <> ''),"
        " comment TEXT NOT NULL CHECK (comment <> ''),"
        " created_at TEXT NOT NULL,"
        " UNIQUE (name, version))"
    )
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS refset_values ("
        " set_name TEXT NOT NULL,"
        " version INTEGER NOT NULL,"
        " position INTEGER NOT NULL,"
        " value_name TEXT NOT NULL,"
        " value TEXT NOT NULL,"
        " not_before TEXT NOT NULL,"
        " not_after TEXT NOT NULL CHECK (not_after > not_before),"
        " PRIMARY KEY (set_name, version, value_name))"
    )
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS refset_events ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " name TEXT NOT NULL,"
        " version INTEGER NOT NULL,"
        " from_state TEXT,"
        " to_state TEXT NOT NULL"
        "  CHECK (to_state IN ('staged', 'active', 'deprecated', 'retired')),"
        " retire_at TEXT,"
        " author TEXT NOT NULL CHECK (author <> ''),"
        " comment TEXT NOT NULL CHECK (comment <> ''),"
        " at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS refset_events_version"
               " ON refset_events (name, version, seq)")
    for table in ("refset_versions", "refset_values", "refset_events"):
        for op in ("UPDATE", "DELETE"):
            refuse(db, f"{table}_no_{op.lower()}", table, op, "reference values are immutable")


REFERENCE_MIGRATIONS = (Migration(1, "reference-value sets, values and events",
                                  reference_schema),)


def _require(value: str, field: str) -> str:
    text = value.strip()
    if not text:
        raise Malformed(f"{field} is required", rule=f"refvalues.{field}",
                        expected=f"a non-empty {field}", actual=repr(value))
    return text


_LAST_EVENT = (
    "SELECT name, version, from_state, to_state, retire_at, author, comment, at"
    " FROM refset_events WHERE name = ? AND version = ? ORDER BY seq DESC LIMIT 1"
)
_INSERT_EVENT = (
    "INSERT INTO refset_events (name, version, from_state, to_state, retire_at, author,"
    " comment, at)"
    " VALUES (?,?,?,?,?,?,?,?)"
)
_EVENTS = (
    "SELECT name, version, from_state, to_state, retire_at, author, comment, at"
    " FROM refset_events WHERE (CAST(? AS TEXT) IS NULL OR name = ?)"
    " AND (CAST(? AS INTEGER) IS NULL OR version = ?)"
    " ORDER BY seq"
)
_HEADS = (
    "SELECT name, version, digest, provenance, author, created_at"
    " FROM refset_versions WHERE (CAST(? AS TEXT) IS NULL OR name = ?)"
    " ORDER BY name, version"
)
_VALUES = (
    "SELECT set_name, version, value_name, value, not_before, not_after"
    " FROM refset_values WHERE (CAST(? AS TEXT) IS NULL OR set_name = ?)"
    " ORDER BY set_name, version, position"
)


def _event(row: tuple[Any, ...]) -> RefEvent:
    return RefEvent(
        name=str(row[0]), version=int(row[1]),
        from_state=None if row[2] is None else RefState(str(row[2])),
        to_state=RefState(str(row[3])), retire_at=_opt_time(row[4]), author=str(row[5]),
        comment=str(row[6]), at=_time(row[7]))


class ReferenceStore:
    """Reference-value set versions, their values and their state log."""

    def __init__(self, target: DatabaseTarget, *, busy_timeout_seconds: float = 5.0) -> None:
        self._db = open_database(target, component="references",
                                 migrations=REFERENCE_MIGRATIONS, synchronous="FULL",
                                 busy_timeout_seconds=busy_timeout_seconds)

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    # --- import -----------------------------------------------------------------------

    def import_document(self, raw: bytes, source: str, *, provenance: str, author: str,
                        comment: str, now: datetime) -> RefSetVersion:
        """Parse a ReferenceValues document and store it as a new STAGED version."""
        author = _require(author, "author")
        comment = _require(comment, "comment")
        provenance = _require(provenance, "provenance")
        doc = load_document(raw, source, SCHEMA_NAME)
        name, description, values = reference_document(doc)
        created = _stamp(now)
        digest = doc.digest

        def op(db: Session) -> int:
            with immediate(db):
                for row in db.execute("SELECT version FROM refset_versions WHERE name = ?"
                                      " AND digest = ?", [name, digest]).fetchall():
                    state = self._state(db, name, int(row[0]))
                    if state is not RefState.RETIRED:
                        raise Malformed(f"{source}: document is identical to {name}@{row[0]}",
                                        rule="refvalues.unchanged",
                                        expected=f"a document different from {name}@{row[0]}",
                                        actual=f"sha256 {digest}")
                last = db.execute("SELECT coalesce(max(version), 0) FROM refset_versions"
                                  " WHERE name = ?", [name]).fetchone()
                version = int(last[0]) + 1
                db.execute(
                    "INSERT INTO refset_versions (name, version, digest, document, description,"
                    " provenance, author, comment, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    [name, version, digest, raw, description, provenance, author, comment,
                     created])
                db.executemany(
                    "INSERT INTO refset_values (set_name, version, position, value_name, value,"
                    " not_before, not_after) VALUES (?,?,?,?,?,?,?)",
                    [[name, version, i, v.name, v.value, _stamp(v.not_before),
                      _stamp(v.not_after)] for i, v in enumerate(values)])
                db.execute(
                    _INSERT_EVENT,
                    [name, version, None, RefState.STAGED.value, None, author, comment,
                     created])
            return version

        version = self._db.run(op)
        return RefSetVersion(name, version, RefState.STAGED, None, provenance, author,
                             _time(created), values)

    def import_admin(self, raw: bytes, source: str, *, author: str, comment: str,
                     now: datetime) -> RefSetVersion:
        """Import a document submitted by an administrator (provenance ``admin:<author>``).

        The caller checks that ``author`` holds the ``refvalue-admin`` role.
        """
        author = _require(author, "author")
        return self.import_document(raw, source, provenance=f"admin:{author}", author=author,
                                    comment=comment, now=now)

    def import_manifest(self, token: bytes, source: str, providers: Sequence[Provider], *,
                        author: str, comment: str, now: datetime) -> RefSetVersion:
        """Import a provider-signed JWS manifest (provenance ``jws:<provider>:<sha256>``)."""
        payload, provider = verify_manifest(token, providers)
        return self.import_document(payload, source,
                                    provenance=manifest_provenance(token, provider),
                                    author=author, comment=comment, now=now)

    # --- life cycle -------------------------------------------------------------------

    @staticmethod
    def _state(db: Session, name: str, version: int) -> RefState | None:
        row = db.execute(_LAST_EVENT, [name, version]).fetchone()
        return None if row is None else RefState(str(row[3]))

    def transition(self, name: str, version: int, to: RefState, *, author: str, comment: str,
                   now: datetime, retire_at: datetime | None = None) -> RefEvent:
        """Move ``name@version`` to state ``to``; refused transitions -> Malformed."""
        author = _require(author, "author")
        comment = _require(comment, "comment")
        at = _stamp(now)
        if to is RefState.DEPRECATED:
            if retire_at is None:
                raise Malformed("deprecation needs a retirement time", rule="refvalues.state",
                                expected="retire_at", actual="none")
            if retire_at <= now:
                raise Malformed("retirement time is not in the future", rule="refvalues.state",
                                expected=f"after {rfc3339(now)}", actual=rfc3339(retire_at))
        elif retire_at is not None:
            raise Malformed("retire_at is only for deprecation", rule="refvalues.state",
                            expected="no retire_at", actual=rfc3339(retire_at))
        retire = None if retire_at is None else _stamp(retire_at)

        def op(db: Session) -> RefEvent:
            with immediate(db):
                current = self._state(db, name, version)
                if current is None:
                    raise Malformed(f"reference set {name}@{version} does not exist",
                                    rule="refvalues.version",
                                    expected=f"an existing version of {name}",
                                    actual=f"version {version}")
                if to not in _TRANSITIONS[current]:
                    allowed = ", ".join(sorted(s.value for s in _TRANSITIONS[current]))
                    raise Malformed(f"{name}@{version} cannot go from {current} to {to}",
                                    rule="refvalues.state",
                                    expected=f"{current} -> {allowed or 'nothing'}",
                                    actual=f"{current} -> {to}")
                db.execute(
                    _INSERT_EVENT,
                    [name, version, current.value, to.value, retire, author, comment, at])
            return RefEvent(name, version, current, to, _opt_time(retire), author, comment,
                            _time(at))

        return self._db.run(op)

    def history(self, name: str, version: int | None = None) -> list[RefEvent]:
        """State events of a set (or of one version), oldest first."""
        args = [name, name, version, version]
        rows = self._db.run(lambda db: db.execute(_EVENTS, args).fetchall())
        return [_event(r) for r in rows]

    def document(self, name: str, version: int) -> bytes:
        """The exact document bytes of a version (Malformed if absent)."""
        row = self._db.run(lambda db: db.execute(
            "SELECT document FROM refset_versions WHERE name = ? AND version = ?",
            [name, version]).fetchone())
        if row is None:
            raise Malformed(f"reference set {name}@{version} does not exist",
                            rule="refvalues.version", expected=f"an existing version of {name}",
                            actual=f"version {version}")
        return bytes(row[0])

    # --- reading ----------------------------------------------------------------------

    def versions(self, name: str | None = None) -> list[RefSetVersion]:
        """Every set version (or every version of ``name``) with its current state."""
        args = [name, name]

        def op(db: Session) -> list[RefSetVersion]:
            # One read transaction so versions, values and events are one consistent view.
            with read_view(db):
                heads = db.execute(_HEADS, args).fetchall()
                vals = db.execute(_VALUES, args).fetchall()
                events = db.execute(_EVENTS, [*args, None, None]).fetchall()
            return _assemble(heads, vals, events)

        return self._db.run(op)

    def snapshot(self) -> ReferenceSnapshot:
        """An immutable matching view of every set version in its current state."""
        return ReferenceSnapshot(self.versions())

    def generation(self) -> int:
        """A cheap counter that changes whenever any process imports or changes a state."""
        row = self._db.run(lambda db: db.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM refset_versions)"
            " + (SELECT coalesce(max(seq), 0) FROM refset_events)").fetchone())
        return int(row[0])


def _assemble(heads: list[tuple[Any, ...]], vals: list[tuple[Any, ...]],
              events: list[tuple[Any, ...]]) -> list[RefSetVersion]:
    values: dict[tuple[str, int], list[RefValue]] = {}
    for row in vals:
        values.setdefault((str(row[0]), int(row[1])), []).append(
            RefValue(str(row[2]), str(row[3]), _time(row[4]), _time(row[5])))
    state: dict[tuple[str, int], tuple[RefState, datetime | None]] = {}
    for event in map(_event, events):
        key = (event.name, event.version)
        retire_at = event.retire_at
        if event.to_state is RefState.RETIRED:
            previous = state.get(key, (RefState.STAGED, None))[1]
            retire_at = previous if previous is not None and previous < event.at else event.at
        state[key] = (event.to_state, retire_at)
    out = []
    for row in heads:
        key = (str(row[0]), int(row[1]))
        current, retire_at = state.get(key, (RefState.STAGED, None))
        out.append(RefSetVersion(
            name=key[0], version=key[1], state=current, retire_at=retire_at,
            provenance=str(row[3]), author=str(row[4]), created_at=_time(row[5]),
            values=tuple(values.get(key, ()))))
    return out
