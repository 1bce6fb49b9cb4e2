"""Envelope-encrypted, versioned secrets (architecture section 8).

Invariants:
- Each secret version has its own random 256-bit data key. The value is AES-256-GCM encrypted
  under it with AAD = key id + version; the data key is wrapped by a KEK version of the ring
  (``broker.kek_ring``) with the same AAD, and the row names that version (``kek_id``).
  Moving a row to another key id or version, or editing any byte, fails authentication.
- Versions start at 1. A version's key id, number, ciphertext and creation time never change
  (a trigger refuses it) and rows are never deleted; only the wrapped data key and its
  ``kek_id`` change, when a KEK rotation re-wraps it (compare-and-set on the old ``kek_id``).
- ``put`` is compare-and-set: with ``expect_version`` given, it succeeds only if that is the
  latest version (0 = the key does not exist yet); of two concurrent writers one gets
  ``VersionConflict``. The write lock is taken before reading the latest version.
- Lifecycle of a version: ``enabled`` -> ``disabled`` <-> ``enabled``; ``enabled`` or
  ``disabled`` -> ``pending_destruction`` (with a grace period; ``enable`` cancels it) ->
  ``destroyed`` once the grace period has passed (``destroy_due``), which erases the wrapped
  data key (the ciphertext then opens under no key). ``destroyed`` is final. Any other
  transition is ``Malformed`` (rule ``secrets.state``).
- Only enabled versions are released: version 0 means the latest enabled one; a named
  version that is not enabled, or a key without an enabled version, is PLATFORM_POLICY.
- ``generate`` stores random key material made here (``secrets.token_bytes``) of the given
  length; the value is never returned or logged.
- Plaintext never reaches logs; listings show ids, versions and states only.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.challenges import MAX_KEY_ID_LEN, Clock
from broker.kek import KekProvider
from broker.kek_ring import KekRing
from keybroker.database import Database
from keybroker.errors import Malformed, PlatformPolicyViolation, Unavailable
from keybroker.migrations import ddl, refuse, sqlite_columns
from keybroker.store_session import Session, immediate

_AAD_LABEL = b"keybroker/v1/secret\x00"
_NONCE = 12
MAX_SECRET_BYTES = 64 * 1024
MAX_VERSION = 0xFFFFFFFF
MAX_GENERATED_BYTES = 4096
MAX_GRACE_SECONDS = 365 * 86400
ENABLED, DISABLED, PENDING, DESTROYED = "enabled", "disabled", "pending_destruction", "destroyed"
STATES = (ENABLED, DISABLED, PENDING, DESTROYED)
_INFO = ("SELECT key_id, version, created_at, kek_id, state, destroy_after FROM secrets")


class VersionConflict(Exception):
    """Compare-and-set failed: the latest version is not the one the writer expected."""

    def __init__(self, key_id: str, expected: int, actual: int) -> None:
        super().__init__(f"version conflict on {key_id!r}: expected latest {expected}, "
                         f"found {actual}")
        self.key_id = key_id
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class SecretVersion:
    """A decrypted secret version (held only in memory, only while sealing)."""

    key_id: str
    version: int
    value: bytes


@dataclass(frozen=True)
class SecretInfo:
    """Metadata of a stored version (no value)."""

    key_id: str
    version: int
    created_at: float
    kek_id: str
    state: str = ENABLED
    destroy_after: float | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-able metadata."""
        return {"key_id": self.key_id, "version": self.version, "created_at": self.created_at,
                "kek_id": self.kek_id, "state": self.state, "destroy_after": self.destroy_after}


def secret_schema(db: Session) -> None:
    """Create the secrets table (idempotent)."""
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS secrets ("
        " key_id TEXT NOT NULL,"
        " version INTEGER NOT NULL,"
        " kek_id TEXT NOT NULL,"
        " wrapped_key BLOB NOT NULL,"
        " ciphertext BLOB NOT NULL,"
        " created_at REAL NOT NULL,"
        " PRIMARY KEY (key_id, version))"
    )
    if db.dialect == "sqlite":
        if "state" not in sqlite_columns(db, "secrets"):  # a file from before the lifecycle
            db.execute("ALTER TABLE secrets ADD COLUMN state TEXT NOT NULL DEFAULT 'enabled'")
            db.execute("ALTER TABLE secrets ADD COLUMN destroy_after REAL")
        db.execute("DROP TRIGGER IF EXISTS secrets_immutable")  # from before KEK rotation
    else:
        ddl(db, "ALTER TABLE secrets ADD COLUMN IF NOT EXISTS state TEXT NOT NULL"
                " DEFAULT 'enabled'")
        ddl(db, "ALTER TABLE secrets ADD COLUMN IF NOT EXISTS destroy_after REAL")
    refuse(db, "secrets_value_immutable", "secrets", "UPDATE", "secret versions are immutable",
           columns=("key_id", "version", "ciphertext", "created_at"))
    refuse(db, "secrets_no_delete", "secrets", "DELETE", "secret versions are never deleted")


def _aad(key_id: str, version: int) -> bytes:
    return _AAD_LABEL + key_id.encode("utf-8") + b"\x00" + version.to_bytes(4, "big")


def _check_key_id(key_id: str) -> None:
    if not key_id or len(key_id) > MAX_KEY_ID_LEN or "\x00" in key_id:
        raise Malformed("invalid key id", expected=f"1..{MAX_KEY_ID_LEN} characters, no NUL",
                        actual=f"{len(key_id)} characters")


class SecretStore:
    """Versioned secrets in the broker database, envelope-encrypted under a KEK."""

    def __init__(self, db: Database, ring: KekRing, *, clock: Clock) -> None:
        self._db = db
        self.ring = ring
        self._clock = clock

    def put(self, key_id: str, value: bytes, *, expect_version: int | None = None) -> int:
        """Store a new version of ``key_id`` and return its number (CAS on ``expect_version``)."""
        _check_key_id(key_id)
        if not value or len(value) > MAX_SECRET_BYTES:
            raise Malformed("secret value has the wrong size",
                            expected=f"1..{MAX_SECRET_BYTES} bytes", actual=f"{len(value)} bytes")
        now = self._clock()

        def op(db: Session) -> int:
            with immediate(db):
                row = db.execute("SELECT MAX(version) FROM secrets WHERE key_id = ?",
                                 [key_id]).fetchone()
                latest = int(row[0]) if row and row[0] is not None else 0
                if expect_version is not None and expect_version != latest:
                    raise VersionConflict(key_id, expect_version, latest)
                version = latest + 1
                if version > MAX_VERSION:
                    raise Malformed("version space exhausted", actual=str(version))
                data_key = AESGCM.generate_key(bit_length=256)
                aad = _aad(key_id, version)
                nonce = _random.token_bytes(_NONCE)
                ciphertext = nonce + AESGCM(data_key).encrypt(nonce, value, aad)
                kek = self.ring.for_wrapping()
                wrapped = kek.wrap(data_key, aad)
                db.execute(
                    "INSERT INTO secrets (key_id, version, kek_id, wrapped_key, ciphertext,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [key_id, version, kek.kek_id, wrapped, ciphertext, now],
                )
            return version

        return self._db.run(op)

    def latest_version(self, key_id: str) -> int:
        """The latest version of ``key_id``, 0 if it has none."""
        def op(db: Session) -> int:
            row = db.execute("SELECT MAX(version) FROM secrets WHERE key_id = ?",
                             [key_id]).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return self._db.run(op)

    def get(self, key_id: str, version: int = 0) -> SecretVersion:
        """Decrypt ``key_id`` at ``version`` (0 = the latest enabled one). Unknown -> MALFORMED;
        not enabled -> PLATFORM_POLICY; tamper -> UNAVAILABLE."""
        if not 0 <= version <= MAX_VERSION:
            raise Malformed("version out of range", expected=f"0..{MAX_VERSION}",
                            actual=str(version))

        def op(db: Session) -> tuple[int, str, bytes, bytes, str] | None:
            if version == 0:
                sql = ("SELECT version, kek_id, wrapped_key, ciphertext, state FROM secrets"
                       " WHERE key_id = ? ORDER BY state = 'enabled' DESC, version DESC LIMIT 1")
                params: list[object] = [key_id]
            else:
                sql = ("SELECT version, kek_id, wrapped_key, ciphertext, state FROM secrets"
                       " WHERE key_id = ? AND version = ?")
                params = [key_id, version]
            row = db.execute(sql, params).fetchone()
            if row is None:
                return None
            return int(row[0]), str(row[1]), bytes(row[2]), bytes(row[3]), str(row[4])

        row = self._db.run(op)
        if row is None:
            raise Malformed("no such secret or version", rule="secrets.exists",
                            expected="a stored key id/version",
                            actual=f"{key_id}@{version or 'latest'}")
        found, kek_id, wrapped, ciphertext, state = row
        if state != ENABLED:
            raise PlatformPolicyViolation(
                "key version is not enabled" if version else "key has no enabled version",
                rule="secrets.state", expected="an enabled version",
                actual=f"{key_id}@{found} {state}")
        aad = _aad(key_id, found)
        data_key = self.ring.provider(kek_id).unwrap(wrapped, aad)
        try:
            value = AESGCM(data_key).decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], aad)
        except (InvalidTag, ValueError) as exc:
            raise Unavailable("stored secret failed authentication", rule="secrets.integrity",
                              expected="authentic ciphertext",
                              actual=f"{key_id}@{found} tampered") from exc
        return SecretVersion(key_id, found, value)

    def list(self, key_id: str | None = None) -> list[SecretInfo]:
        """All stored versions (of ``key_id``), by key id then version (never values)."""
        def op(db: Session) -> list[SecretInfo]:
            where, params = ("WHERE key_id = ?", [key_id]) if key_id is not None else ("", [])
            rows = db.execute(f"{_INFO} {where} ORDER BY key_id, version", params).fetchall()
            return [SecretInfo(str(r[0]), int(r[1]), float(r[2]), str(r[3]), str(r[4]),
                               None if r[5] is None else float(r[5])) for r in rows]

        return self._db.run(op)

    def generate(self, key_id: str, length: int, *,
                 expect_version: int | None = None) -> int:
        """Store ``length`` random bytes made here as a new version (CAS as for ``put``)."""
        if not 1 <= length <= MAX_GENERATED_BYTES:
            raise Malformed("generated key length out of range", rule="secrets.generate",
                            expected=f"1..{MAX_GENERATED_BYTES} bytes", actual=str(length))
        return self.put(key_id, _random.token_bytes(length), expect_version=expect_version)

    def set_state(self, key_id: str, version: int, target: str, *,
                  grace_seconds: float = 0.0) -> SecretInfo:
        """Move one version to ``enabled``, ``disabled`` or ``pending_destruction`` (after
        ``grace_seconds``); see the module invariants for the allowed moves."""
        allowed = {ENABLED: (DISABLED, PENDING), DISABLED: (ENABLED,),
                   PENDING: (ENABLED, DISABLED)}
        if target not in allowed:
            raise Malformed("unknown target state", rule="secrets.state",
                            expected=", ".join(allowed), actual=target)
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise Malformed("grace period out of range", rule="secrets.grace",
                            expected=f"0..{MAX_GRACE_SECONDS} seconds", actual=str(grace_seconds))
        now = self._clock()

        def op(db: Session) -> None:
            with immediate(db):
                row = db.execute("SELECT state FROM secrets WHERE key_id = ? AND version = ?",
                                 [key_id, version]).fetchone()
                if row is None:
                    raise Malformed("no such secret or version", rule="secrets.exists",
                                    expected="a stored key id/version",
                                    actual=f"{key_id}@{version}")
                if str(row[0]) not in allowed[target]:
                    raise Malformed(f"cannot move a {row[0]} version to {target}",
                                    rule="secrets.state",
                                    expected=f"a version in state {' or '.join(allowed[target])}",
                                    actual=f"{key_id}@{version} {row[0]}")
                db.execute("UPDATE secrets SET state = ?, destroy_after = ?"
                           " WHERE key_id = ? AND version = ?",
                           [target, now + grace_seconds if target == PENDING else None,
                            key_id, version])

        self._db.run(op)
        return self.list(key_id)[version - 1]

    def destroy_due(self) -> tuple[str, ...]:
        """Destroy every version whose destruction grace period has passed: the wrapped data
        key is erased. Returns ``key@version`` of what was destroyed."""
        now = self._clock()

        def op(db: Session) -> tuple[str, ...]:
            with immediate(db):
                rows = db.execute("SELECT key_id, version FROM secrets WHERE state = ?"
                                  " AND destroy_after <= ?", [PENDING, now]).fetchall()
                db.execute("UPDATE secrets SET state = ?, wrapped_key = ?"
                           " WHERE state = ? AND destroy_after <= ?",
                           [DESTROYED, b"", PENDING, now])
                return tuple(f"{r[0]}@{r[1]}" for r in rows)

        return self._db.run(op)

    def rewrap(self, target: KekProvider, kek: Callable[[str], KekProvider], *,
               batch: int = 100) -> int:
        """Re-wrap every data key not under ``target`` (old versions via ``kek``); each row
        is a compare-and-set on its old ``kek_id``. Returns the number of rows changed."""
        changed = 0
        while True:
            def pending(db: Session) -> list[tuple[str, int, str, bytes]]:
                rows = db.execute(
                    "SELECT key_id, version, kek_id, wrapped_key FROM secrets"
                    " WHERE kek_id != ? AND length(wrapped_key) > 0 LIMIT ?",
                    [target.kek_id, batch]).fetchall()
                return [(str(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]

            rows = self._db.run(pending)
            if not rows:
                return changed
            updates = []
            for key_id, version, old_id, wrapped in rows:
                aad = _aad(key_id, version)
                rewrapped = target.wrap(kek(old_id).unwrap(wrapped, aad), aad)
                updates.append((target.kek_id, rewrapped, key_id, version, old_id))

            def write(db: Session,
                      updates: list[tuple[str, bytes, str, int, str]] = updates) -> int:
                with immediate(db):
                    return sum(db.execute(
                        "UPDATE secrets SET kek_id = ?, wrapped_key = ?"
                        " WHERE key_id = ? AND version = ? AND kek_id = ?", list(u)).rowcount
                        for u in updates)

            changed += self._db.run(write)
