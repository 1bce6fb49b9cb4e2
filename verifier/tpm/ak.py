"""AK trust by certificate (GCE Shielded VM style): an AK certificate chained to a configured
EK/AK CA root is accepted without enrolment, and its key must be the AK that signed the quote.

Invariants:
- Roots come only from configuration: the chain ends at a given root (issuer name equal to
  the root's subject, signature verified by the root's key). Intermediates may come from
  anywhere and must chain: each link verified with ``verify_directly_issued_by``, valid at
  the verification time, CA links with basicConstraints CA:TRUE and keyCertSign; a path
  longer than ``MAX_DEPTH`` is refused. (cryptography's path builder is not used: its client
  policy demands a clientAuth EKU that TPM AK certificates do not carry.)
- The certificate's public key must equal the AK public area's key (same numbers), when both
  are given; otherwise the quote's signer is not the certified key (SIG_INVALID).
- Failures are CHAIN_UNTRUSTED naming the link; undecodable certificates are MALFORMED.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.errors import ChainUntrusted, SignatureInvalid
from keybroker.evidence.tpm_public import TpmPublic
from verifier.pki import check_validity, common_name

MAX_DEPTH = 5


@contextmanager
def lenient_names() -> Iterator[None]:
    """Google's EK/AK CA names carry CNs longer than X.520's 64 characters; cryptography
    warns on each comparison. The names are still compared exactly; only the warning goes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        yield


def _label(cert: x509.Certificate) -> str:
    return common_name(cert.subject) or cert.subject.rfc4514_string() or "(empty subject)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return basic.ca and usage.key_cert_sign


def verify_ak_certificate(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                          roots: Sequence[x509.Certificate], *, at: datetime,
                          what: str = "AK") -> tuple[x509.Certificate, ...]:
    """The chain leaf .. root (module invariants); ``what`` = "AK" or "EK" (the same rules
    chain an EK certificate to its manufacturer root at enrolment)."""
    with lenient_names():
        return _chain(leaf, intermediates, roots, at, what)


def _chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
           roots: Sequence[x509.Certificate], at: datetime,
           what: str) -> tuple[x509.Certificate, ...]:
    rule = f"tpm.{what.lower()}-cert"
    if not roots:
        raise ChainUntrusted(f"no {what} CA root configured", rule=rule,
                             expected="a configured root", actual="none")
    check_validity(leaf, at, f"{what} certificate", rule=rule)
    chain = [leaf]
    pool = list(intermediates)
    current = leaf
    for _ in range(MAX_DEPTH):
        for root in roots:
            if current.issuer == root.subject and _signed_by(current, root):
                check_validity(root, at, f"root {_label(root)}", rule=rule)
                return (*chain, root)
        parent = next((c for c in pool if c.subject == current.issuer
                       and _signed_by(current, c)), None)
        if parent is None:
            raise ChainUntrusted(f"{what} certificate does not chain to a configured root",
                                 rule=rule,
                                 expected=", ".join(_label(r) for r in roots)[:200],
                                 actual=f"no issuer for {_label(current)} (issuer "
                                        f"{common_name(current.issuer)[:80]})")
        if not _is_ca(parent):
            raise ChainUntrusted(f"{_label(parent)} is not a CA", rule=rule,
                                 expected="basicConstraints CA:TRUE and keyCertSign",
                                 actual="missing")
        check_validity(parent, at, f"intermediate {_label(parent)}", rule=rule)
        pool.remove(parent)
        chain.append(parent)
        current = parent
    raise ChainUntrusted(f"{what} certificate chain too long", rule=rule,
                         expected=f"<= {MAX_DEPTH} links", actual="more")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_certified_key(cert: x509.Certificate, ak: TpmPublic) -> None:
    """The certificate certifies exactly the AK public area's key."""
    certified, actual = cert.public_key(), ak.public_key()
    same = (isinstance(certified, rsa.RSAPublicKey) and isinstance(actual, rsa.RSAPublicKey)
            and certified.public_numbers() == actual.public_numbers()) or (
        isinstance(certified, ec.EllipticCurvePublicKey)
        and isinstance(actual, ec.EllipticCurvePublicKey)
        and certified.public_numbers() == actual.public_numbers())
    if not same:
        raise SignatureInvalid("the AK certificate certifies another key than the quote's AK",
                               rule="tpm.ak-cert-key", expected="the certified key",
                               actual="a different key")
