"""TPM attestation-key enrolment by credential activation, and the enrolled AKs the quote path
trusts (kept in the verifier's state database).

Invariants:
- ``begin`` accepts an AK only for an EK certificate that chains to a configured EK root
  (manufacturer or cloud; simulator roots only when configured, and then the enrolment is
  marked insecure) and only with the attributes of an attestation key: restricted, sign,
  fixedTPM, fixedParent, not decrypt (CHAIN_UNTRUSTED otherwise: such a key could sign
  anything). It answers a MakeCredential to the EK for the AK's Name; nothing is enrolled yet.
- At most ``MAX_PENDING`` enrolments are pending at once (expired ones are purged first);
  beyond that ``begin`` is refused as exhausted (UNAVAILABLE, RESOURCE_EXHAUSTED on the wire)
  and nothing is stored.
- ``activate`` enrols the AK only when the credential the TPM recovered matches (compared in
  constant time), within ``PENDING_SECONDS``, once: a pending enrolment is consumed by its
  first attempt, right or wrong (FRESHNESS for an unknown or expired one, CHAIN_UNTRUSTED for
  a wrong credential).
- One EK has at most one enrolled AK. Re-enrolling the same AK is idempotent; another AK for
  an enrolled EK is refused (CHAIN_UNTRUSTED, rule tpm.enrolment-conflict) until an admin
  revokes the old one (``revoke``). A revoked AK is no longer trusted by the quote path.
- ``observe`` keeps the highest (resetCount, restartCount) seen per enrolled AK and refuses a
  quote whose counters are lower (FRESHNESS, rule tpm.counters): the TPM was rolled back or
  the quote replayed from an earlier boot. Check and update are one write transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import ChainUntrusted, Exhausted, FreshnessError, Malformed
from keybroker.evidence.tpm_public import (
    DECRYPT,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SIGN,
    TpmPublic,
    parse_public,
)
from keybroker.migrations import Migration, ddl
from keybroker.store_session import Session, immediate
from verifier.pki import certificates_in
from verifier.tpm.ak import verify_ak_certificate
from verifier.tpm.credential import make_credential

PENDING_SECONDS = 120
MAX_PENDING = 4096  # enrolments begun and not yet activated (each holds a row for 120 s)
MAX_CERT_BYTES = 8192
MAX_INTERMEDIATES = 4
_REQUIRED = {"restricted": RESTRICTED, "sign": SIGN, "fixedTPM": FIXED_TPM,
             "fixedParent": FIXED_PARENT}


@dataclass(frozen=True)
class Enrolled:
    """An enrolled AK."""

    ek_fingerprint: str
    ak_name: bytes
    ak_public: bytes
    insecure: bool
    enrolled_at: str


@dataclass(frozen=True)
class PendingChallenge:
    """What ``begin`` answers: the credential for the TPM to activate."""

    enrolment_id: str
    blob: bytes
    encrypted_secret: bytes
    expires_at: datetime


@dataclass(frozen=True)
class EkRoots:
    """EK roots from configuration: trusted ones and simulator (insecure) ones."""

    trusted: tuple[x509.Certificate, ...] = ()
    simulator: tuple[x509.Certificate, ...] = ()

    @classmethod
    def load(cls, trusted: Sequence[Path], simulator: Sequence[Path]) -> EkRoots:
        """Every certificate in the given PEM/DER files."""
        def read(paths: Sequence[Path]) -> tuple[x509.Certificate, ...]:
            return tuple(c for p in paths for c in certificates_in(p.read_bytes()))
        return cls(read(trusted), read(simulator))


_SELECT = "SELECT ek_fingerprint, ak_name, ak_public, insecure, enrolled_at FROM tpm_aks WHERE"


def _blob(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected a BLOB column")
    return value


def _schema(db: Session) -> None:
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS tpm_aks ("
        " ek_fingerprint TEXT PRIMARY KEY, ak_name TEXT NOT NULL, ak_public BLOB NOT NULL,"
        " insecure INTEGER NOT NULL, enrolled_at TEXT NOT NULL, revoked_at TEXT,"
        " reset_count INTEGER NOT NULL DEFAULT 0, restart_count INTEGER NOT NULL DEFAULT 0)")
    db.execute("CREATE INDEX IF NOT EXISTS tpm_aks_name ON tpm_aks (ak_name)")
    ddl(
        db,
        "CREATE TABLE IF NOT EXISTS tpm_pending ("
        " enrolment_id TEXT PRIMARY KEY, ek_fingerprint TEXT NOT NULL, ak_public BLOB NOT NULL,"
        " credential_digest BLOB NOT NULL, insecure INTEGER NOT NULL, expires_at REAL NOT NULL)")


TPM_MIGRATIONS = (Migration(1, "enrolled and pending TPM attestation keys", _schema),)


def ek_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the EK certificate's SubjectPublicKeyInfo, hex."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def check_ak_attributes(ak: TpmPublic) -> None:
    """CHAIN_UNTRUSTED unless ``ak`` is a restricted, fixed, sign-only key."""
    missing = [name for name, bit in _REQUIRED.items() if not ak.attributes & bit]
    if missing or ak.attributes & DECRYPT:
        raise ChainUntrusted("the key is not an attestation key", rule="tpm.ak-attributes",
                             expected="restricted, sign, fixedTPM, fixedParent, not decrypt",
                             actual=("missing " + ", ".join(missing)) if missing
                             else "decrypt set")


def _certificate(der: bytes, what: str) -> x509.Certificate:
    if not der or len(der) > MAX_CERT_BYTES:
        raise Malformed(f"{what} missing or too large", rule="tpm.ek",
                        expected=f"1..{MAX_CERT_BYTES} bytes of DER", actual=str(len(der)))
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Malformed(f"{what} is not a DER certificate", rule="tpm.ek",
                        expected="X.509 DER", actual=str(exc)[:120]) from None


class TpmEnrolments:
    """The enrolment protocol and the enrolled AKs (module invariants)."""

    def __init__(self, target: DatabaseTarget, roots: EkRoots,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._db = open_database(target, component="tpm", migrations=TPM_MIGRATIONS)
        self._roots = roots
        self._clock = clock

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()

    def _ek_chain(self, ek: x509.Certificate, intermediates: Sequence[bytes],
                  at: datetime) -> bool:
        """Chain the EK certificate; True when it chains only to a simulator root."""
        if len(intermediates) > MAX_INTERMEDIATES:
            raise Malformed("too many EK intermediates", rule="tpm.ek",
                            expected=f"<= {MAX_INTERMEDIATES}", actual=str(len(intermediates)))
        pool = [_certificate(der, "EK intermediate") for der in intermediates]
        try:
            verify_ak_certificate(ek, pool, self._roots.trusted, at=at, what="EK")
            return False
        except ChainUntrusted:
            if not self._roots.simulator:
                raise
        verify_ak_certificate(ek, pool, self._roots.simulator, at=at, what="EK")
        return True

    def begin(self, ek_der: bytes, intermediates: Sequence[bytes],
              ak_public: bytes) -> PendingChallenge:
        """Check the EK chain and the AK, and make the credential (module invariants)."""
        now = self._clock()
        ek = _certificate(ek_der, "EK certificate")
        insecure = self._ek_chain(ek, intermediates, now)
        ak = parse_public(ak_public)
        check_ak_attributes(ak)
        fingerprint = ek_fingerprint(ek)
        current = self.by_ek(fingerprint)
        if current is not None and current.ak_name != ak.name:
            raise ChainUntrusted("this EK already has another enrolled AK",
                                 rule="tpm.enrolment-conflict",
                                 expected=f"AK {current.ak_name.hex()} (or an admin revocation)",
                                 actual=f"AK {ak.name.hex()}")
        made = make_credential(ek.public_key(), ak.name)
        enrolment_id = secrets.token_urlsafe(18)
        expires = now + timedelta(seconds=PENDING_SECONDS)

        def store(db: Session) -> None:
            with immediate(db):
                db.execute("DELETE FROM tpm_pending WHERE expires_at < ?", [now.timestamp()])
                (pending,) = db.execute("SELECT count(*) FROM tpm_pending").fetchone()
                if int(pending) >= MAX_PENDING:
                    raise Exhausted("too many TPM enrolments in progress", rule="tpm.enrolment",
                                    expected=f"< {MAX_PENDING} pending",
                                    actual=str(pending))
                db.execute("INSERT INTO tpm_pending VALUES (?,?,?,?,?,?)",
                           [enrolment_id, fingerprint, ak_public,
                            hashlib.sha256(made.credential).digest(), int(insecure),
                            expires.timestamp()])
        self._db.run(store)
        return PendingChallenge(enrolment_id, made.blob, made.encrypted_secret, expires)

    def activate(self, enrolment_id: str, credential: bytes) -> Enrolled:
        """Enrol the pending AK if ``credential`` is the one made for it (module invariants)."""
        now = self._clock()

        def consume(db: Session) -> tuple[object, ...] | None:
            with immediate(db):
                row = db.execute("SELECT ek_fingerprint, ak_public, credential_digest, insecure,"
                                 " expires_at FROM tpm_pending WHERE enrolment_id = ?",
                                 [enrolment_id]).fetchone()
                db.execute("DELETE FROM tpm_pending WHERE enrolment_id = ?", [enrolment_id])
            return tuple(row) if row is not None else None
        row = self._db.run(consume)
        if row is None or float(str(row[4])) < now.timestamp():
            raise FreshnessError("unknown or expired TPM enrolment", rule="tpm.enrolment",
                                 expected=f"an enrolment begun within {PENDING_SECONDS} s",
                                 actual=enrolment_id[:40] or "(empty)")
        fingerprint, public, insecure = str(row[0]), _blob(row[1]), bool(row[3])
        digest = _blob(row[2])
        if not hmac.compare_digest(hashlib.sha256(credential).digest(), digest):
            raise ChainUntrusted("the activated credential is not the one made for this AK",
                                 rule="tpm.activation",
                                 expected="the credential of the EK's TPM for this AK",
                                 actual="another value")
        ak = parse_public(public)
        stamp = now.isoformat()

        def enrol(db: Session) -> None:
            with immediate(db):
                current = db.execute("SELECT ak_name, revoked_at FROM tpm_aks WHERE"
                                     " ek_fingerprint = ?", [fingerprint]).fetchone()
                if current is not None and current[1] is None and current[0] != ak.name.hex():
                    raise ChainUntrusted("this EK already has another enrolled AK",
                                         rule="tpm.enrolment-conflict",
                                         expected=f"AK {current[0]} (or an admin revocation)",
                                         actual=f"AK {ak.name.hex()}")
                if current is not None and current[1] is None:
                    return  # the same AK again: already enrolled
                db.execute("INSERT INTO tpm_aks (ek_fingerprint, ak_name, ak_public, insecure,"
                           " enrolled_at) VALUES (?,?,?,?,?) ON CONFLICT (ek_fingerprint) DO"
                           " UPDATE SET ak_name = excluded.ak_name, ak_public ="
                           " excluded.ak_public, insecure = excluded.insecure, enrolled_at ="
                           " excluded.enrolled_at, revoked_at = NULL, reset_count = 0,"
                           " restart_count = 0",
                           [fingerprint, ak.name.hex(), public, int(insecure), stamp])
        self._db.run(enrol)
        enrolled = self.by_ek(fingerprint)
        assert enrolled is not None
        return enrolled

    def _one(self, query: str, value: str) -> Enrolled | None:
        def read(db: Session) -> tuple[object, ...] | None:
            row = db.execute(query, [value]).fetchone()
            return tuple(row) if row is not None else None
        row = self._db.run(read)
        if row is None:
            return None
        return Enrolled(str(row[0]), bytes.fromhex(str(row[1])), _blob(row[2]), bool(row[3]),
                        str(row[4]))

    def by_ek(self, fingerprint: str) -> Enrolled | None:
        """The AK enrolled for an EK (not revoked), or None."""
        return self._one(_SELECT + " ek_fingerprint = ? AND revoked_at IS NULL", fingerprint)

    def by_ak_name(self, name: bytes) -> Enrolled | None:
        """The enrolment of the AK named ``name`` (not revoked), or None."""
        return self._one(_SELECT + " ak_name = ? AND revoked_at IS NULL", name.hex())

    def listing(self, fingerprint: str = "") -> list[dict[str, object]]:
        """Every enrolment (revoked ones too), or the one of ``fingerprint``, for operators."""
        def read(db: Session) -> list[tuple[object, ...]]:
            query = ("SELECT ek_fingerprint, ak_name, insecure, enrolled_at, revoked_at,"
                     " reset_count, restart_count FROM tpm_aks")
            rows = (db.execute(query + " WHERE ek_fingerprint = ?", [fingerprint])
                    if fingerprint else db.execute(query + " ORDER BY enrolled_at"))
            return [tuple(row) for row in rows.fetchall()]
        keys = ("ek_fingerprint", "ak_name", "insecure", "enrolled_at", "revoked_at",
                "reset_count", "restart_count")
        return [{**dict(zip(keys, row, strict=True)), "insecure": bool(row[2])}
                for row in self._db.run(read)]

    def revoke(self, fingerprint: str) -> bool:
        """Revoke the AK enrolled for an EK; False when there was none."""
        stamp = self._clock().isoformat()

        def update(db: Session) -> int:
            with immediate(db):
                cursor = db.execute("UPDATE tpm_aks SET revoked_at = ? WHERE ek_fingerprint = ?"
                                    " AND revoked_at IS NULL", [stamp, fingerprint])
            return int(cursor.rowcount)
        return self._db.run(update) > 0

    def observe(self, ak_name: bytes, reset_count: int, restart_count: int) -> None:
        """Refuse counters below the highest seen for this AK, then remember them."""
        def check(db: Session) -> tuple[int, int] | None:
            with immediate(db):
                row = db.execute("SELECT reset_count, restart_count FROM tpm_aks WHERE"
                                 " ak_name = ? AND revoked_at IS NULL",
                                 [ak_name.hex()]).fetchone()
                if row is None:
                    return None
                seen = (int(row[0]), int(row[1]))
                if (reset_count, restart_count) < seen:
                    return seen
                db.execute("UPDATE tpm_aks SET reset_count = ?, restart_count = ? WHERE"
                           " ak_name = ? AND revoked_at IS NULL",
                           [reset_count, restart_count, ak_name.hex()])
            return None
        seen = self._db.run(check)
        if seen is not None:
            raise FreshnessError("the TPM's reset/restart counters went backwards",
                                 rule="tpm.counters",
                                 expected=f"resetCount/restartCount >= {seen[0]}/{seen[1]}",
                                 actual=f"{reset_count}/{restart_count}")
