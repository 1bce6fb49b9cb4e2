"""The Intel SGX Root CA: the one trust anchor of every PCK chain, CRL and collateral signature.

Invariants:
- ``IntelTrustStore.pinned()`` reads the root only from the package data in
  ``verifier/dcap/roots``; it must match the SHA-256 fingerprint pinned in this module (over
  the DER bytes), its subject CN, and be a self-signed ECDSA-P256-SHA256 certificate; otherwise
  the store is not built.
- ``from_der`` builds a secure store only for the pinned root. Any other self-signed
  "Intel SGX Root CA" (the DCAP simulator's test root) gives a store with ``insecure=True``,
  which every claim derived from it carries (``insecure_root``), so appraisal can refuse it.
  Anything that is not a self-signed P-256 "Intel SGX Root CA" is refused (``ChainUntrusted``).
- Nothing is trusted because it appeared in evidence or collateral: ``is_pinned_root``
  compares exact DER bytes, and chains are anchored at ``IntelTrustStore.root`` only.
- ``load_simulator_roots`` reads each ``simulator_intel_roots`` file (DER, or PEM with one or
  more certificates) into an ``IntelTrustStore``; an unreadable or non-certificate file, or one
  that is not a self-signed "Intel SGX Root CA", refuses the start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import SignatureAlgorithmOID

from keybroker.errors import ChainUntrusted, Malformed
from verifier.config import VerifierConfig
from verifier.pki import Certificate, certificates_in, common_name

_log = logging.getLogger(__name__)

ROOT_CN = "Intel SGX Root CA"
ROOT_FILE = "IntelSGXRootCA.der"
# SHA-256 of the DER of the Intel SGX Root CA (evidence-formats.md section 2.7).
PINNED_ROOT_FINGERPRINT = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


def verify_p256_signature(issuer: Certificate, *, algorithm_oid: str, signature: bytes,
                          tbs: bytes, what: str) -> None:
    """ECDSA-P256-SHA256 signature over ``tbs`` by ``issuer``'s key; raises ``ChainUntrusted``."""
    key = issuer.cert.public_key()
    if algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256.dotted_string:
        raise ChainUntrusted(f"{what}: signature algorithm not allowed",
                             expected="ecdsa-with-SHA256", actual=algorithm_oid)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                      ec.SECP256R1):
        raise ChainUntrusted(f"{what}: issuer key is not EC P-256", expected="secp256r1",
                             actual=getattr(getattr(key, "curve", None), "name",
                                            type(key).__name__))
    try:
        key.verify(signature, tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise ChainUntrusted(f"{what}: signature does not verify under "
                             f"{common_name(issuer.cert.subject) or 'its issuer'}") from exc


@dataclass(frozen=True)
class IntelTrustStore:
    """One Intel SGX Root CA: the pinned one, or (``insecure``) a simulator test root."""

    root: Certificate
    insecure: bool = False

    @classmethod
    def pinned(cls) -> IntelTrustStore:
        """The root shipped as package data, checked against its pinned fingerprint."""
        der = resources.files("verifier.dcap.roots").joinpath(ROOT_FILE).read_bytes()
        store = cls.from_der(der)
        if store.insecure:
            raise ChainUntrusted("Intel root does not match its pin",
                                 expected=PINNED_ROOT_FINGERPRINT, actual=store.root.fingerprint)
        return store

    @classmethod
    def from_der(cls, der: bytes) -> IntelTrustStore:
        """A store for ``der``: secure for the pinned root, INSECURE for any other self-signed
        "Intel SGX Root CA" (simulator roots); anything else raises ``ChainUntrusted``."""
        root = Certificate.from_der(der)
        if common_name(root.cert.subject) != ROOT_CN or root.cert.issuer != root.cert.subject:
            raise ChainUntrusted("Intel root is not the self-signed Intel SGX Root CA",
                                 expected=ROOT_CN, actual=root.cert.subject.rfc4514_string())
        verify_p256_signature(root, algorithm_oid=root.cert.signature_algorithm_oid.dotted_string,
                              signature=root.cert.signature,
                              tbs=root.cert.tbs_certificate_bytes, what=ROOT_CN)
        if root.fingerprint != PINNED_ROOT_FINGERPRINT:
            _log.warning("INSECURE Intel-style test root accepted (sha256 %s, %s)",
                         root.fingerprint, root.cert.subject.rfc4514_string())
            return cls(root=root, insecure=True)
        _log.debug("Intel SGX Root CA pinned (sha256 %s)", root.fingerprint)
        return cls(root=root)

    @property
    def subject_der(self) -> bytes:
        """DER of the root's subject name (issuer of everything it signs)."""
        return self.root.cert.subject.public_bytes()

    def is_pinned_root(self, der: bytes) -> bool:
        """True only for the exact DER of the pinned root."""
        return der == self.root.der


def load_simulator_roots(config: VerifierConfig) -> list[IntelTrustStore]:
    """The DCAP simulator roots named by ``simulator_intel_roots`` (read at start-up)."""
    stores: list[IntelTrustStore] = []
    for path in config.simulator_intel_roots:
        raw = path.read_bytes()
        certs = certificates_in(raw)
        if not certs:
            raise Malformed(f"{config.source}: not a DER or PEM certificate file",
                            rule="config.simulator_intel_roots",
                            expected="Intel-style root CA certificate(s)", actual=str(path))
        stores.extend(IntelTrustStore.from_der(cert.public_bytes(Encoding.DER))
                      for cert in certs)
    return stores
