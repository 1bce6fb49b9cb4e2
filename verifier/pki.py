"""Certificate handling every endorsement chain shares: parsing certificates, PEM chains and
CRLs, names, validity windows, verified CRLs and cache counters.

Invariants:
- Parsing is strict and typed: a certificate, PEM chain or CRL that does not decode is
  ``Malformed``; nothing here raises an untyped exception for any input bytes.
- Nothing here decides trust. Roots come from each TEE's pinned store; this module only gives
  the pieces (exact DER bytes, SHA-256 fingerprints, names compared by equality, validity
  windows checked against the caller's ``at``).
- A ``VerifiedCrl`` is only built by a TEE's chain code after the CRL's issuer name and
  signature were checked; its window is checked on every use (it depends on ``at``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import warnings
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from keybroker.errors import ChainUntrusted, CollateralStale, Malformed

MAX_CHAIN_PEM = 64 * 1024
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)"
                  rb"-----END CERTIFICATE-----")


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse one DER certificate. AMD VCEKs have serial number 0, which cryptography accepts
    with a deprecation warning; that warning is expected here and suppressed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
            # cryptography decodes these lazily; decode them now so that a malformed field is
            # a Malformed here and never an untyped exception deep inside chain validation.
            _ = (cert.version, cert.subject, cert.issuer, cert.public_key(), cert.extensions,
                 cert.signature_algorithm_oid, cert.not_valid_before_utc,
                 cert.not_valid_after_utc)
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
            x509.DuplicateExtension) as exc:
        raise Malformed("certificate is not well-formed DER X.509",
                        expected="a decodable X.509 v3 certificate",
                        actual=f"{len(der)} bytes: {type(exc).__name__}") from exc
    return cert


def fingerprint(der: bytes) -> str:
    """SHA-256 hex of DER bytes (how certificates are named in logs, caches and claims)."""
    return hashlib.sha256(der).hexdigest()


def common_name(name: x509.Name) -> str:
    """The single CN of a name, or "" if there is none or more than one."""
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(values) != 1:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Certificate:
    """A parsed certificate with its exact DER bytes and SHA-256 fingerprint. Its names are
    decoded once (cryptography builds new ``Name`` objects on every ``subject`` access)."""

    cert: x509.Certificate
    der: bytes
    fingerprint: str

    @functools.cached_property
    def subject(self) -> x509.Name:
        """The subject name (decoded once)."""
        return self.cert.subject

    @functools.cached_property
    def issuer(self) -> x509.Name:
        """The issuer name (decoded once)."""
        return self.cert.issuer

    @functools.cached_property
    def subject_cn(self) -> str:
        """The subject's single common name, or "" (see ``common_name``)."""
        return common_name(self.subject)

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        """Parse DER (raises ``Malformed``)."""
        return cls(cert=load_certificate(der), der=bytes(der), fingerprint=fingerprint(der))

    @classmethod
    def from_cert(cls, cert: x509.Certificate) -> Certificate:
        """Wrap an already parsed certificate."""
        return cls.from_der(cert.public_bytes(Encoding.DER))


@dataclass
class CacheStats:
    """Certificate signatures served from the cache (hits) or verified (misses)."""

    hits: int = 0
    misses: int = 0


def check_validity(cert: x509.Certificate, at: datetime, what: str, *, rule: str = "") -> None:
    """``ChainUntrusted`` (with ``rule``) unless notBefore <= at <= notAfter."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= at <= end:
        raise ChainUntrusted(f"{what} is not valid at the verification time", rule=rule,
                             expected=f"{start.isoformat()} .. {end.isoformat()}",
                             actual=at.isoformat())


def certificates_in(raw: bytes) -> list[x509.Certificate]:
    """The certificates of a file: PEM (any number) or one DER certificate; [] when neither
    decodes."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in raw:
            return x509.load_pem_x509_certificates(raw)
        return [x509.load_der_x509_certificate(raw)]
    except ValueError:
        return []


def parse_pem_chain(data: bytes) -> tuple[Certificate, ...]:
    """Certificates of a PEM chain in order. Trailing NUL bytes (section 2.16) and whitespace
    between blocks are tolerated; anything else outside the blocks is ``Malformed``."""
    if len(data) > MAX_CHAIN_PEM:
        raise Malformed("PEM chain too large", expected=f"<= {MAX_CHAIN_PEM} bytes",
                        actual=str(len(data)))
    text = data.rstrip(b"\x00")
    out: list[Certificate] = []
    pos = 0
    for match in _PEM.finditer(text):
        if text[pos:match.start()].strip():
            raise Malformed("unexpected bytes between PEM certificates",
                            actual=f"offset {pos}")
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except ValueError as exc:
            raise Malformed("PEM certificate is not base64") from exc
        out.append(Certificate.from_der(der))
        pos = match.end()
    if text[pos:].strip() or not out:
        raise Malformed("PEM chain holds no certificate or has trailing bytes",
                        actual=f"{len(out)} certificates, {len(text) - pos} trailing bytes")
    return tuple(out)


def load_crl(data: bytes) -> tuple[x509.CertificateRevocationList, bytes]:
    """Parse a DER or PEM CRL; returns it with its DER bytes. Raises ``Malformed``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if data.lstrip().startswith(b"-----BEGIN X509 CRL-----"):
                crl = x509.load_pem_x509_crl(data.strip())
            else:
                crl = x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise Malformed("CRL is not DER or PEM X.509 CRL", actual=f"{len(data)} bytes") from exc
    return crl, crl.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class VerifiedCrl:
    """A CRL whose issuer name and signature were checked (its window is checked per use)."""

    crl: x509.CertificateRevocationList
    der: bytes
    issuer: Certificate
    this_update: datetime
    next_update: datetime | None

    @property
    def digest(self) -> str:
        """SHA-256 hex of the CRL's DER."""
        return hashlib.sha256(self.der).hexdigest()

    @functools.cached_property
    def revoked_serials(self) -> frozenset[int]:
        """Serial numbers listed by the CRL (computed once)."""
        return frozenset(entry.serial_number for entry in self.crl)

    def covers(self, at: datetime) -> bool:
        """thisUpdate <= at < nextUpdate (never for a CRL without nextUpdate)."""
        return self.next_update is not None and self.this_update <= at < self.next_update

    @property
    def window(self) -> str:
        """``thisUpdate .. nextUpdate`` for messages."""
        end = self.next_update.isoformat() if self.next_update else "(no nextUpdate)"
        return f"{self.this_update.isoformat()} .. {end}"

    def check_current(self, at: datetime, what: str) -> None:
        """``CollateralStale`` unless the CRL covers ``at``."""
        if not self.covers(at):
            raise CollateralStale(f"{what} does not cover the verification time",
                                  rule="crl-window", expected=self.window, actual=at.isoformat())

    def check_not_revoked(self, cert: Certificate, what: str) -> None:
        """``ChainUntrusted`` if ``cert``'s serial is listed."""
        serial = cert.cert.serial_number
        if serial in self.revoked_serials:
            raise ChainUntrusted(f"{what} is revoked", rule="crl", expected="not listed",
                                 actual=f"serial {serial:#x} listed by "
                                        f"{common_name(self.issuer.cert.subject)}")
