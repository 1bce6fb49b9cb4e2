"""The KEK ring: which KEK version wraps new data keys, which one opens each stored key, and
the crash-safe rotation from one version to the next.

Invariants:
- Versions are rows of ``kek_versions`` (kek id, version number, locator in the backend,
  state). Exactly one is ``current``; during a rotation one more is ``target``, and new data
  keys are wrapped under the target, so nothing written during a rotation needs re-wrapping.
- Opening a ring opens the version in force, so an unusable KEK (file permissions, HSM down)
  stops start-up instead of the first release.
- A stored data key is always opened by the version its row names (``kek_id``); an unknown
  version is ``Unavailable`` (never "try the others").
- Rotation is resumable: (1) the target version is created in the backend and recorded before
  any row changes; (2) each row is re-wrapped under the target with a compare-and-set on its
  old ``kek_id`` (only the wrapped data key changes, never the secret's ciphertext); (3) the
  target becomes current. A crash anywhere leaves every row openable, and running rotate again
  continues with the recorded target. (4) Old versions are destroyed in the backend only once
  no row references them; then they are ``retired``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from broker.kek import KekBackend, KekProvider
from keybroker.database import Database
from keybroker.errors import Unavailable
from keybroker.migrations import ddl
from keybroker.store_session import Session, immediate

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
Rewrap = Callable[[KekProvider, Callable[[str], KekProvider]], int]


def kek_schema(db: Session) -> None:
    """Create the KEK version table (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS kek_versions ("
        " kek_id TEXT PRIMARY KEY,"
        " version INTEGER UNIQUE NOT NULL,"
        " backend TEXT NOT NULL,"
        " locator TEXT NOT NULL,"
        " state TEXT NOT NULL CHECK (state IN ('current', 'target', 'previous', 'retired')),"
        " created_at REAL NOT NULL)"
    )


@dataclass(frozen=True)
class KekVersion:
    """One row of ``kek_versions``."""

    kek_id: str
    version: int
    backend: str
    locator: str
    state: str
    created_at: float


@dataclass(frozen=True)
class Rotation:
    """What one ``rotate`` call did."""

    target: KekVersion
    resumed: bool
    rewrapped: int
    retired: tuple[str, ...]


class KekRing:
    """The versions of one backend in one broker database."""

    def __init__(self, db: Database, backend: KekBackend, *, clock: Clock) -> None:
        self._db = db
        self.backend = backend
        self._clock = clock
        self._open: dict[str, KekProvider] = {}
        self._register_first()
        self.for_wrapping()  # the KEK in force must be usable now: refuse to start otherwise

    def _register_first(self) -> None:
        """A database without versions gets the backend's version 1 as current (also for a
        store created before versions were recorded: its rows name that KEK)."""
        if self.versions():
            return
        first = self.backend.open(self.backend.locator(1))

        def op(db: Session) -> None:
            with immediate(db):
                if db.execute("SELECT COUNT(*) FROM kek_versions").fetchone()[0] == 0:
                    db.execute("INSERT INTO kek_versions VALUES (?, 1, ?, ?, 'current', ?)",
                               [first.kek_id, self.backend.name, self.backend.locator(1),
                                self._clock()])

        self._db.run(op)

    def versions(self) -> list[KekVersion]:
        """Every version, oldest first."""
        def op(db: Session) -> list[KekVersion]:
            rows = db.execute("SELECT kek_id, version, backend, locator, state, created_at"
                              " FROM kek_versions ORDER BY version").fetchall()
            return [KekVersion(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]),
                               float(r[5])) for r in rows]

        return self._db.run(op)

    def _by_state(self, state: str) -> KekVersion | None:
        found = [v for v in self.versions() if v.state == state]
        return found[0] if found else None

    def provider(self, kek_id: str) -> KekProvider:
        """The KEK version ``kek_id`` (opened once, then cached)."""
        cached = self._open.get(kek_id)
        if cached is not None:
            return cached
        match = [v for v in self.versions() if v.kek_id == kek_id]
        if not match or match[0].state == "retired":
            raise Unavailable("stored data key names an unknown or retired KEK",
                              rule="kek.version", expected="a registered KEK version",
                              actual=kek_id)
        kek = self.backend.open(match[0].locator)
        if kek.kek_id != kek_id:
            raise Unavailable("KEK at the recorded location is another key", rule="kek.version",
                              expected=kek_id, actual=kek.kek_id)
        self._open[kek_id] = kek
        return kek

    def for_wrapping(self) -> KekProvider:
        """The target version during a rotation, else the current one."""
        chosen = self._by_state("target") or self._by_state("current")
        if chosen is None:
            raise Unavailable("no current KEK version", rule="kek.version")
        return self.provider(chosen.kek_id)

    def rotate(self, rewrap: Rewrap) -> Rotation:
        """Create (or resume) the next version, re-wrap every data key with ``rewrap`` (given
        the target and a lookup of old versions; returns how many rows changed), make it
        current, then retire versions nothing references (module invariants)."""
        target = self._by_state("target")
        resumed = target is not None
        if target is None:
            number = max(v.version for v in self.versions()) + 1
            locator = self.backend.locator(number)
            kek = self.backend.create(locator)

            def record(db: Session) -> None:
                with immediate(db):
                    db.execute("INSERT INTO kek_versions VALUES (?, ?, ?, ?, 'target', ?)",
                               [kek.kek_id, number, self.backend.name, locator,
                                self._clock()])

            self._db.run(record)
            target = self._by_state("target")
            assert target is not None
        _log.info("KEK rotation to version %d (%s)%s", target.version, target.kek_id,
                  " resumed" if resumed else "")
        count = rewrap(self.provider(target.kek_id), self.provider)

        def promote(db: Session) -> None:
            with immediate(db):
                db.execute("UPDATE kek_versions SET state = 'previous' WHERE state = 'current'")
                db.execute("UPDATE kek_versions SET state = 'current' WHERE kek_id = ?",
                           [target.kek_id])

        self._db.run(promote)
        return Rotation(target=target, resumed=resumed, rewrapped=count,
                        retired=self.retire_unused())

    def retire_unused(self) -> tuple[str, ...]:
        """Destroy ``previous`` versions that no secret row references; returns their ids."""
        retired: list[str] = []
        for version in self.versions():
            if version.state != "previous":
                continue

            def referenced(db: Session, kek_id: str = version.kek_id) -> bool:
                row = db.execute("SELECT 1 FROM secrets WHERE kek_id = ? LIMIT 1",
                                 [kek_id]).fetchone()
                return row is not None

            if self._db.run(referenced):
                continue
            self.backend.destroy(version.locator)
            self._open.pop(version.kek_id, None)

            def mark(db: Session, kek_id: str = version.kek_id) -> None:
                with immediate(db):
                    db.execute("UPDATE kek_versions SET state = 'retired' WHERE kek_id = ?",
                               [kek_id])

            self._db.run(mark)
            retired.append(version.kek_id)
            _log.info("retired KEK version %d (%s)", version.version, version.kek_id)
        return tuple(retired)
