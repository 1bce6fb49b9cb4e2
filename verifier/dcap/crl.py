"""Intel PKI certificate revocation lists: the Root CA CRL and the PCK Platform/Processor CA CRLs.

Invariants:
- A CRL counts only after its issuer name equals the expected CA's subject, its
  ECDSA-P256-SHA256 signature verifies under that CA's key, and thisUpdate <= at < nextUpdate
  (a CRL without nextUpdate never counts). A wrong issuer name or window is ``CollateralStale``
  (the right, current CRL is missing); a signature that fails is ``ChainUntrusted`` (a forged
  CRL is an attack, never "missing").
- A certificate listed in a verified CRL is ``ChainUntrusted``.
- Input is DER or one PEM "X509 CRL" block; anything else is ``Malformed``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography import x509

from keybroker.errors import ChainUntrusted, CollateralStale
from verifier.dcap.trust import verify_p256_signature
from verifier.pki import Certificate, VerifiedCrl, common_name, load_crl


def verify_crl_signature(crl: x509.CertificateRevocationList, der: bytes,
                         issuer: Certificate, *, what: str) -> VerifiedCrl:
    """Issuer name (``CollateralStale``) and ECDSA-P256-SHA256 signature (``ChainUntrusted``)
    of a parsed CRL; no window check."""
    cn = common_name(issuer.cert.subject)
    if crl.issuer != issuer.cert.subject:
        raise CollateralStale(f"{what} is not issued by {cn}", rule="crl-issuer",
                              expected=issuer.cert.subject.rfc4514_string(),
                              actual=crl.issuer.rfc4514_string())
    try:
        verify_p256_signature(issuer, algorithm_oid=crl.signature_algorithm_oid.dotted_string,
                              signature=crl.signature, tbs=crl.tbs_certlist_bytes, what=what)
    except ChainUntrusted as exc:
        raise ChainUntrusted(f"{what} is not signed by {cn}", rule="crl-signature",
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
