"""The Nitro Enclaves certificate chain: the document's leaf through its ``cabundle`` to the
pinned AWS Nitro Enclaves root (G1), checked with cryptography's X.509 verification API.

Invariants:
- Roots come only from configuration: the pinned G1 root shipped in ``verifier/nitro/roots``
  (or the roots an operator names instead) and, behind the insecure switch, simulator roots
  (every result from those says so).
  ``cabundle[0]`` must be byte-identical to a configured root (a root shipped inside the
  evidence is never trusted on its own, hostile row 13), and the path is built from that root
  only.
- Path rules: every CA has basicConstraints CA:TRUE (path lengths enforced) and keyUsage
  keyCertSign; the leaf is not a CA and has keyUsage digitalSignature and a P-384 key; every
  certificate is valid at ``at`` (leaves live hours: an old document checked now is
  CHAIN_UNTRUSTED, hostile row 18). There is no revocation list for Nitro.
- Any failure is CHAIN_UNTRUSTED naming the reason; a certificate that does not parse is
  MALFORMED.
- Verified chains are cached by the SHA-256 of (leaf, bundle) with the window in which every
  certificate is valid: a later check at a time inside that window does no X.509 work again.
  The cache is bounded (``CACHE_SIZE``, oldest dropped first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification as v

from keybroker.errors import ChainUntrusted, Malformed
from verifier.pki import common_name, load_certificate

CACHE_SIZE = 1024
MAX_DEPTH = 8
G1_FINGERPRINT = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"


@dataclass(frozen=True)
class NitroRoot:
    """One trusted root: its DER, its certificate, and whether it is a simulator's."""

    der: bytes
    certificate: x509.Certificate
    insecure: bool


def pinned_root() -> NitroRoot:
    """The AWS Nitro Enclaves root G1 (its fingerprint checked against the published one)."""
    pem = resources.files("verifier.nitro.roots").joinpath("aws-nitro-root-g1.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(Encoding.DER)
    if hashlib.sha256(der).hexdigest() != G1_FINGERPRINT:
        raise Malformed("the pinned Nitro root is not AWS's G1", expected=G1_FINGERPRINT,
                        actual=hashlib.sha256(der).hexdigest())
    return NitroRoot(der, cert, insecure=False)


def _roots(paths: Sequence[Path], *, insecure: bool) -> tuple[NitroRoot, ...]:
    roots = []
    for path in paths:
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except ValueError as exc:
            raise Malformed("Nitro root file is not a PEM certificate",
                            actual=str(path)) from exc
        roots.append(NitroRoot(cert.public_bytes(Encoding.DER), cert, insecure=insecure))
    return tuple(roots)


def configured_roots(paths: Sequence[Path]) -> tuple[NitroRoot, ...]:
    """Production roots an operator named (PEM files), or the pinned G1 when none."""
    return _roots(paths, insecure=False) if paths else (pinned_root(),)


def simulator_roots(paths: Sequence[Path]) -> tuple[NitroRoot, ...]:
    """Roots from PEM files (INSECURE: tests and demos, behind the insecure switch)."""
    return _roots(paths, insecure=True)


def _ca_constraints(policy: object, cert: x509.Certificate,
                    value: x509.BasicConstraints | None) -> None:
    del policy, cert
    if value is None or not value.ca:
        raise ValueError("a CA certificate without basicConstraints CA:TRUE")


def _ca_usage(policy: object, cert: x509.Certificate, value: x509.KeyUsage | None) -> None:
    del policy, cert
    if value is None or not value.key_cert_sign:
        raise ValueError("a CA certificate without keyUsage keyCertSign")


def _leaf_constraints(policy: object, cert: x509.Certificate,
                      value: x509.BasicConstraints | None) -> None:
    del policy, cert
    if value is not None and value.ca:
        raise ValueError("the signing certificate is a CA")


def _leaf_usage(policy: object, cert: x509.Certificate, value: x509.KeyUsage | None) -> None:
    del policy
    if value is None or not value.digital_signature:
        raise ValueError("the signing certificate lacks keyUsage digitalSignature")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ValueError("the signing key is not ECDSA P-384")


def _policies() -> tuple[v.ExtensionPolicy, v.ExtensionPolicy]:
    crit = v.Criticality
    ca = (v.ExtensionPolicy.permit_all()
          .require_present(x509.BasicConstraints, crit.CRITICAL, _ca_constraints)
          .require_present(x509.KeyUsage, crit.AGNOSTIC, _ca_usage))
    leaf = (v.ExtensionPolicy.permit_all()
            .may_be_present(x509.BasicConstraints, crit.AGNOSTIC, _leaf_constraints)
            .require_present(x509.KeyUsage, crit.AGNOSTIC, _leaf_usage))
    return leaf, ca


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that verified: the leaf, its root, and the window every certificate shares."""

    leaf: x509.Certificate
    root: NitroRoot
    not_before: datetime
    not_after: datetime

    @property
    def leaf_subject(self) -> str:
        return common_name(self.leaf.subject)


class NitroChains:
    """Verifies document chains to the configured roots (module invariants)."""

    def __init__(self, roots: Sequence[NitroRoot]) -> None:
        if not roots:
            raise Malformed("no Nitro root configured", expected="the pinned G1 root")
        self._roots = {root.der: root for root in roots}
        self._leaf_policy, self._ca_policy = _policies()
        self._cache: OrderedDict[bytes, VerifiedChain] = OrderedDict()

    def verify(self, certificate: bytes, cabundle: Sequence[bytes], at: datetime
               ) -> VerifiedChain:
        """The verified chain of ``certificate`` (leaf) and ``cabundle`` (root first)."""
        key = hashlib.sha256(b"".join(hashlib.sha256(c).digest()
                                      for c in (certificate, *cabundle))).digest()
        cached = self._cache.get(key)
        if cached is not None and cached.not_before <= at <= cached.not_after:
            self._cache.move_to_end(key)
            return cached
        root = self._roots.get(bytes(cabundle[0])) if cabundle else None
        if root is None:
            raise ChainUntrusted("the document's root is not a configured Nitro root",
                                 rule="nitro.root", expected="the AWS Nitro Enclaves root G1",
                                 actual=("sha256 " + hashlib.sha256(cabundle[0]).hexdigest()
                                         if cabundle else "no root"))
        leaf = load_certificate(certificate)
        intermediates = [load_certificate(c) for c in cabundle[1:]]
        builder = (v.PolicyBuilder().store(v.Store([root.certificate])).time(at)
                   .max_chain_depth(MAX_DEPTH)
                   .extension_policies(ee_policy=self._leaf_policy, ca_policy=self._ca_policy))
        try:
            verified = builder.build_client_verifier().verify(leaf, intermediates)
        except v.VerificationError as exc:
            raise ChainUntrusted("the Nitro certificate chain does not verify",
                                 rule="nitro.chain",
                                 expected=f"a valid path to the root at {at.isoformat()}",
                                 actual=str(exc)[:300]) from None
        chain = verified.chain
        result = VerifiedChain(leaf, root, max(c.not_valid_before_utc for c in chain),
                               min(c.not_valid_after_utc for c in chain))
        self._cache[key] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result
