"""Immutable, versioned policy documents in SQLite (appraisal policies, release rules).

Invariants:
- A policy version is a row that is never updated or deleted (triggers refuse UPDATE and
  DELETE). Changing a policy appends a new version; rolling back appends a new version whose
  document is the old one (``action = "rollback"``, ``rollback_of`` names it). The version in
  force for a (kind, name) is the one with the highest version number.
- Version numbers are assigned inside a ``BEGIN IMMEDIATE`` transaction and protected by
  ``UNIQUE(kind, name, version)``, so two processes applying at once get distinct, gap-free
  numbers (the second waits for the first's write lock).
- Every version names an author and a comment (both required, non-empty) and its creation
  time, stored as fixed-width RFC 3339 UTC text. The digest is the hex SHA-256 of the exact
  document bytes.
- Applying a document identical to the version in force is refused (``policy.unchanged``), so
  history only holds real changes.
- ``generation()`` is the highest row id of the version table: one indexed read, monotonic,
  and it sees commits by any process or connection (each read is a fresh WAL snapshot).
- Storage failures are ``Unavailable`` (see ``keybroker.database``); the file runs in WAL mode
  with ``synchronous=FULL`` because an applied policy is a security decision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import Malformed
from keybroker.migrations import Migration, ddl, refuse
from keybroker.store_session import Session, immediate

ACTIONS = ("apply", "rollback", "seed")
SEED_AUTHOR = "config-seed"


@dataclass(frozen=True)
class PolicyVersion:
    """One stored, immutable version of a named policy document."""

    kind: str
    name: str
    version: int
    digest: str
    document: bytes
    author: str
    comment: str
    created_at: datetime
    action: str  # "apply" | "rollback" | "seed"
    rollback_of: int | None

    @property
    def label(self) -> str:
        """``<name>@<version>`` for messages."""
        return f"{self.name}@{self.version}"


def _stamp(value: datetime) -> str:
    """Fixed-width RFC 3339 UTC text (sorts like the instant)."""
    if value.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def policy_schema(db: Session) -> None:
    """Create the policy version table and its immutability triggers (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS policy_versions ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " kind TEXT NOT NULL,"
        " name TEXT NOT NULL,"
        " version INTEGER NOT NULL CHECK (version >= 1),"
        " digest TEXT NOT NULL,"
        " document BLOB NOT NULL,"
        " author TEXT NOT NULL CHECK (author <> ''),"
        " comment TEXT NOT NULL CHECK (comment <> ''),"
        " created_at TEXT NOT NULL,"
        " action TEXT NOT NULL CHECK (action IN ('apply', 'rollback', 'seed')),"
        " rollback_of INTEGER,"
        " UNIQUE (kind, name, version))"
    )
    for op in ("UPDATE", "DELETE"):
        refuse(db, f"policy_versions_no_{op.lower()}", "policy_versions", op,
               "policy versions are immutable")


POLICY_MIGRATIONS = (Migration(1, "policy versions", policy_schema),)


_LATEST = (
    "SELECT kind, name, version, digest, document, author, comment, created_at, action, rollback_of"
    " FROM policy_versions WHERE kind = ? AND name = ? ORDER BY version DESC LIMIT 1"
)
_IN_FORCE = (
    "SELECT kind, name, version, digest, document, author, comment, created_at, action, rollback_of"
    " FROM policy_versions p WHERE kind = ? AND version ="
    " (SELECT max(version) FROM policy_versions q WHERE q.kind = p.kind AND q.name = p.name)"
    " ORDER BY name"
)
_HISTORY = (
    "SELECT kind, name, version, digest, document, author, comment, created_at, action, rollback_of"
    " FROM policy_versions WHERE kind = ? AND name = ? ORDER BY version"
)
_GET = (
    "SELECT kind, name, version, digest, document, author, comment, created_at, action, rollback_of"
    " FROM policy_versions WHERE kind = ? AND name = ? AND version = ?"
)
_INSERT = (
    "INSERT INTO policy_versions (kind, name, version, digest, document, author, comment,"
    " created_at, action, rollback_of)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)


def _from_row(row: tuple[Any, ...]) -> PolicyVersion:
    return PolicyVersion(
        kind=str(row[0]), name=str(row[1]), version=int(row[2]), digest=str(row[3]),
        document=bytes(row[4]), author=str(row[5]), comment=str(row[6]),
        created_at=_parse_stamp(str(row[7])), action=str(row[8]),
        rollback_of=None if row[9] is None else int(row[9]),
    )


def _require_text(value: str, field: str) -> str:
    text = value.strip()
    if not text:
        raise Malformed(f"{field} is required", rule=f"policy.{field}",
                        expected=f"a non-empty {field}", actual=repr(value))
    return text


class PolicyStore:
    """Versioned policy documents of every kind in one SQLite file."""

    def __init__(self, target: DatabaseTarget, *, busy_timeout_seconds: float = 5.0) -> None:
        self._db = open_database(target, component="policies", migrations=POLICY_MIGRATIONS,
                                 synchronous="FULL", busy_timeout_seconds=busy_timeout_seconds)

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    def probe(self) -> None:
        """Health probe of the database (a fresh connection)."""
        self._db.probe()

    def apply(
        self,
        kind: str,
        name: str,
        document: bytes,
        *,
        author: str,
        comment: str,
        now: datetime,
        action: str = "apply",
        rollback_of: int | None = None,
    ) -> PolicyVersion:
        """Append a new version of ``kind``/``name`` and return it.

        Refuses (Malformed ``policy.unchanged``) a document identical to the version in force.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown policy action {action!r}")
        if (action == "rollback") != (rollback_of is not None):
            raise ValueError("rollback_of is set exactly for action 'rollback'")
        _require_text(kind, "kind")
        _require_text(name, "name")
        author = _require_text(author, "author")
        comment = _require_text(comment, "comment")
        created = _stamp(now)
        digest = hashlib.sha256(document).hexdigest()

        def op(db: Session) -> PolicyVersion:
            with immediate(db):
                row = db.execute(_LATEST, [kind, name]).fetchone()
                current = _from_row(row) if row else None
                if current is not None and current.digest == digest:
                    raise Malformed(
                        f"document is identical to {current.label} in force",
                        rule="policy.unchanged",
                        expected=f"a document different from {current.label}",
                        actual=f"sha256 {digest}")
                version = current.version + 1 if current else 1
                db.execute(_INSERT, [kind, name, version, digest, document, author, comment,
                                     created, action, rollback_of])
            return PolicyVersion(kind, name, version, digest, document, author, comment,
                                 _parse_stamp(created), action, rollback_of)

        return self._db.run(op)

    def seed(
        self, kind: str, name: str, document: bytes, *, source: str, now: datetime
    ) -> PolicyVersion | None:
        """Store ``document`` as version 1 when no version of ``name`` exists; else None."""
        _require_text(kind, "kind")
        _require_text(name, "name")
        created = _stamp(now)
        digest = hashlib.sha256(document).hexdigest()
        comment = f"seeded from {source}" if source.strip() else "seeded from configuration"

        def op(db: Session) -> PolicyVersion | None:
            with immediate(db):
                if db.execute(_LATEST, [kind, name]).fetchone() is not None:
                    return None
                db.execute(_INSERT, [kind, name, 1, digest, document, SEED_AUTHOR, comment,
                                     created, "seed", None])
            return PolicyVersion(kind, name, 1, digest, document, SEED_AUTHOR, comment,
                                 _parse_stamp(created), "seed", None)

        return self._db.run(op)

    def in_force(self, kind: str) -> dict[str, PolicyVersion]:
        """The latest version of every name of ``kind``."""
        rows = self._db.run(lambda db: db.execute(_IN_FORCE, [kind]).fetchall())
        return {v.name: v for v in map(_from_row, rows)}

    def history(self, kind: str, name: str) -> list[PolicyVersion]:
        """Every version of ``kind``/``name``, oldest first (empty when unknown)."""
        rows = self._db.run(lambda db: db.execute(_HISTORY, [kind, name]).fetchall())
        return [_from_row(r) for r in rows]

    def get(self, kind: str, name: str, version: int) -> PolicyVersion:
        """One version; Malformed (``policy.version``) if it does not exist."""
        row = self._db.run(lambda db: db.execute(_GET, [kind, name, version]).fetchone())
        if row is None:
            raise Malformed(f"{kind} {name}@{version} does not exist", rule="policy.version",
                            expected=f"an existing version of {name}",
                            actual=f"version {version}")
        return _from_row(row)

    def rollback(
        self, kind: str, name: str, to_version: int, *, author: str, comment: str,
        now: datetime,
    ) -> PolicyVersion:
        """Append a new version whose document is version ``to_version``'s."""
        old = self.get(kind, name, to_version)
        return self.apply(kind, name, old.document, author=author, comment=comment, now=now,
                          action="rollback", rollback_of=to_version)

    def generation(self) -> int:
        """A cheap monotonic counter that changes whenever any process appends a version."""
        row = self._db.run(
            lambda db: db.execute("SELECT coalesce(max(seq), 0) FROM policy_versions"
                                  ).fetchone())
        return int(row[0])
