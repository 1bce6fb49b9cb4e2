"""Intel PKI certificate revocation lists: the Root CA CRL and the PCK Platform/Processor CA CRLs.

Invariants:
- A CRL counts only after its issuer name equals the expected CA's subject, its
  ECDSA-P256-SHA256 signature verifies under that CA's key, and thisUpdate <= at < nextUpdate
  (a CRL without nextUpdate never counts). Any of these failing is ``CollateralStale``: the
  revocation status is unknown, so the right, current CRL is missing.
- A certificate listed in a verified CRL is ``ChainUntrusted``.
- Input is DER or one PEM "X509 CRL" block; anything else is ``Malformed``.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from keybroker.errors import ChainUntrusted, CollateralStale, Malformed
from keybroker.evidence.snp_certs import common_name
from verifier.dcap.trust import verify_p256_signature
from verifier.snp.trust import Certificate


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


def verify_crl_signature(crl: x509.CertificateRevocationList, der: bytes,
                         issuer: Certificate, *, what: str) -> VerifiedCrl:
    """Issuer name and ECDSA-P256-SHA256 signature of a parsed CRL (no window check);
    ``CollateralStale`` if either is wrong."""
    cn = common_name(issuer.cert.subject)
    if crl.issuer != issuer.cert.subject:
        raise CollateralStale(f"{what} is not issued by {cn}", rule="crl-issuer",
                              expected=issuer.cert.subject.rfc4514_string(),
                              actual=crl.issuer.rfc4514_string())
    try:
        verify_p256_signature(issuer, algorithm_oid=crl.signature_algorithm_oid.dotted_string,
                              signature=crl.signature, tbs=crl.tbs_certlist_bytes, what=what)
    except ChainUntrusted as exc:
        raise CollateralStale(f"{what} is not signed by {cn}", rule="crl-signature",
                              expected=issuer.fingerprint,
                              actual=hashlib.sha256(der).hexdigest()) from exc
    return VerifiedCrl(crl=crl, der=der, issuer=issuer, this_update=crl.last_update_utc,
                       next_update=crl.next_update_utc)


def verify_crl(data: bytes, issuer: Certificate, *, at: datetime, what: str,
               verified: set[tuple[str, str]] | None = None) -> VerifiedCrl:
    """Check a CRL against its expected issuer CA at ``at`` (see the module invariants).
    ``verified`` caches (issuer fingerprint, CRL digest) of signatures already checked."""
    crl, der = load_crl(data)
    digest = hashlib.sha256(der).hexdigest()
    cn = common_name(issuer.cert.subject)
    if crl.issuer != issuer.cert.subject:
        raise CollateralStale(f"{what} is not issued by {cn}", rule="crl-issuer",
                              expected=issuer.cert.subject.rfc4514_string(),
                              actual=crl.issuer.rfc4514_string())
    if verified is None or (issuer.fingerprint, digest) not in verified:
        checked = verify_crl_signature(crl, der, issuer, what=what)
        if verified is not None:
            if len(verified) >= 4096:
                verified.clear()
            verified.add((issuer.fingerprint, digest))
    else:
        checked = VerifiedCrl(crl=crl, der=der, issuer=issuer, this_update=crl.last_update_utc,
                              next_update=crl.next_update_utc)
    checked.check_current(at, what)
    return checked
