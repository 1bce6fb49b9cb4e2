"""The PCK certificate chain: PCK leaf -> PCK Platform/Processor CA -> pinned Intel SGX Root CA,
with the Root CA CRL and the PCK CRL (evidence-formats.md sections 2.7 and 2.9 steps 2-3).

Invariants:
- The chain is [leaf, intermediate] optionally followed by the root; a root given in evidence
  must be byte-identical to the pinned one. The chain always ends at ``IntelTrustStore.root``.
- Every certificate is X.509 v3 with an EC P-256 key, ECDSA-P256-SHA256 signatures, exact CNs
  (leaf "Intel SGX PCK Certificate", intermediate "Intel SGX PCK Platform CA" or "... Processor
  CA"), issuer names chaining by equality, CA flags (leaf not a CA, intermediate a CA), and a
  validity window containing the caller's ``at``; failures are ``ChainUntrusted``.
- Revocation: the Root CA CRL must be signed by the root and must not list the intermediate;
  the PCK CRL must be signed by the intermediate and must not list the leaf. Listed ->
  ``ChainUntrusted``; stale, foreign or badly signed -> ``CollateralStale`` (``verifier.dcap.crl``).
  A missing CRL is ``CollateralStale`` unless ``allow_missing_crl`` is set, and then it is named
  in ``PckChain.missing_crls`` so claims can carry a warning. Never silently skipped.
- Everything time-independent (structure, names, profiles, signatures, extension, key) is
  cached per chain (``static_chain``, keyed by the PEM bytes' digest); signature results by
  (issuer, subject) DER digests and CRL signatures by (issuer, CRL digest). Validity windows
  and revocation are checked on every call (they depend on ``at``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keybroker.errors import ChainUntrusted, CollateralStale
from keybroker.evidence.sgx_extensions import SgxExtensions, decode_sgx_extensions
from verifier.dcap.crl import verify_crl
from verifier.dcap.trust import IntelTrustStore, verify_p256_signature
from verifier.pki import CacheStats, Certificate, check_validity, common_name, parse_pem_chain

_log = logging.getLogger(__name__)

LEAF_CN = "Intel SGX PCK Certificate"
INTERMEDIATE_CNS: dict[str, Literal["platform", "processor"]] = {
    "Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}
MAX_CHAIN_PEM = 64 * 1024
CRL_ROOT = "root-ca-crl"
CRL_PCK = "pck-crl"
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)"
                  rb"-----END CERTIFICATE-----")


@dataclass(frozen=True)
class PckChain:
    """A PCK leaf that chained to the pinned root at the verification time."""

    leaf: Certificate
    intermediate: Certificate
    root: Certificate
    ca: Literal["platform", "processor"]
    extensions: SgxExtensions
    public_key: ec.EllipticCurvePublicKey
    missing_crls: tuple[str, ...]

    @property
    def crl_warning(self) -> bool:
        """True when a CRL was missing and accepted because ``allow_missing_crl`` was set."""
        return bool(self.missing_crls)


@dataclass(frozen=True)
class StaticChain:
    """A PCK chain whose structure, pinned root, names, profiles and signatures were checked;
    validity windows (``windows``) and revocation depend on the time and are checked per use."""

    leaf: Certificate
    intermediate: Certificate
    root: Certificate
    ca: Literal["platform", "processor"]
    extensions: SgxExtensions
    public_key: ec.EllipticCurvePublicKey
    windows: tuple[tuple[str, datetime, datetime], ...]

    def check_time(self, at: datetime) -> None:
        """``ChainUntrusted`` unless every certificate is valid at ``at``."""
        for what, start, end in self.windows:
            if not start <= at <= end:
                raise ChainUntrusted(f"{what} is not valid at the verification time",
                                     rule="validity",
                                     expected=f"{start.isoformat()} .. {end.isoformat()}",
                                     actual=at.isoformat())


def check_profile(cert: Certificate, *, cn: str, ca: bool) -> None:
    """v3, P-256 key, CN and basicConstraints of an Intel PKI certificate."""
    actual_cn = common_name(cert.cert.subject)
    if actual_cn != cn:
        raise ChainUntrusted("certificate has the wrong name", rule="name", expected=cn,
                             actual=actual_cn)
    if cert.cert.version is not x509.Version.v3:
        raise ChainUntrusted(f"{cn} is not X.509 v3", actual=cert.cert.version.name)
    key = cert.cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                      ec.SECP256R1):
        raise ChainUntrusted(f"{cn} key is not EC P-256", expected="secp256r1",
                             actual=type(key).__name__)
    try:
        is_ca = cert.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ChainUntrusted(f"{cn} extensions do not parse: {exc}") from exc
    if is_ca != ca:
        raise ChainUntrusted(f"{cn} has the wrong CA flag", rule="basic-constraints",
                             expected=f"CA:{str(ca).upper()}", actual=f"CA:{str(is_ca).upper()}")


class PckVerifier:
    """Validates PCK chains against the pinned root; caches signature checks."""

    def __init__(self, trust: IntelTrustStore, *, cache_limit: int = 4096) -> None:
        self._trust = trust
        self._cache_limit = cache_limit
        self._signed: set[tuple[str, str]] = set()
        self._crls: set[tuple[str, str]] = set()
        self._static: dict[str, StaticChain] = {}
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the signature cache counters."""
        return dataclasses.replace(self._stats)

    def check_signed(self, subject: Certificate, issuer: Certificate, what: str) -> None:
        """Issuer name and ECDSA-P256-SHA256 signature of ``subject`` (cached)."""
        if subject.cert.issuer != issuer.cert.subject:
            raise ChainUntrusted(f"{what}: issuer name does not match", rule="issuer",
                                 expected=issuer.cert.subject.rfc4514_string(),
                                 actual=subject.cert.issuer.rfc4514_string())
        key = (issuer.fingerprint, subject.fingerprint)
        if key in self._signed:
            self._stats.hits += 1
            return
        self._stats.misses += 1
        verify_p256_signature(issuer, algorithm_oid=subject.cert.signature_algorithm_oid
                              .dotted_string, signature=subject.cert.signature,
                              tbs=subject.cert.tbs_certificate_bytes, what=what)
        if len(self._signed) >= self._cache_limit:
            self._signed.clear()
        self._signed.add(key)

    def check_root(self, certs: Sequence[Certificate], at: datetime) -> Certificate:
        """The pinned root, valid at ``at``; an evidence root must be byte-identical."""
        root = self._pinned_root_of(certs)
        check_validity(root.cert, at, "Intel SGX Root CA", rule="validity")
        return root

    def _pinned_root_of(self, certs: Sequence[Certificate]) -> Certificate:
        root = self._trust.root
        for cert in certs:
            if cert.cert.subject == root.cert.subject and not self._trust.is_pinned_root(
                    cert.der):
                raise ChainUntrusted("chain root is not the pinned Intel SGX Root CA",
                                     rule="root", expected=root.fingerprint,
                                     actual=cert.fingerprint)
        return root

    def static_chain(self, chain: Sequence[Certificate] | bytes) -> StaticChain:
        """Everything about a PCK chain that does not depend on the time: structure, pinned
        root, names, profiles, signatures, SGX extension, leaf key. Cached by the PEM bytes
        (or the certificate fingerprints); failures are not cached."""
        if isinstance(chain, bytes):
            key = "pem:" + hashlib.sha256(chain).hexdigest()
        else:
            key = "der:" + ",".join(c.fingerprint for c in chain)
        cached = self._static.get(key)
        if cached is not None:
            self._stats.hits += 2  # both certificate signatures served from the cache
            return cached
        certs = parse_pem_chain(chain) if isinstance(chain, bytes) else tuple(chain)
        static = self._check_static(certs)
        if len(self._static) >= self._cache_limit:
            self._static.clear()
        self._static[key] = static
        return static

    def _check_static(self, certs: Sequence[Certificate]) -> StaticChain:
        if len(certs) not in (2, 3):
            raise ChainUntrusted("PCK chain must be leaf, intermediate [, root]",
                                 expected="2 or 3 certificates", actual=str(len(certs)))
        leaf, intermediate = certs[0], certs[1]
        root = self._pinned_root_of(certs)
        if len(certs) == 3 and not self._trust.is_pinned_root(certs[2].der):
            raise ChainUntrusted("third certificate is not the pinned root", rule="root",
                                 expected=root.fingerprint, actual=certs[2].fingerprint)
        inter_cn = common_name(intermediate.cert.subject)
        ca = INTERMEDIATE_CNS.get(inter_cn)
        if ca is None:
            raise ChainUntrusted("PCK intermediate has the wrong name", rule="name",
                                 expected=" | ".join(INTERMEDIATE_CNS), actual=inter_cn)
        check_profile(intermediate, cn=inter_cn, ca=True)
        check_profile(leaf, cn=LEAF_CN, ca=False)
        self.check_signed(intermediate, root, inter_cn)
        self.check_signed(leaf, intermediate, LEAF_CN)
        ext = decode_sgx_extensions(leaf.cert)
        key = leaf.cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # checked by check_profile
        windows = tuple((what, c.cert.not_valid_before_utc, c.cert.not_valid_after_utc)
                        for what, c in (("Intel SGX Root CA", root), (inter_cn, intermediate),
                                        (LEAF_CN, leaf)))
        return StaticChain(leaf=leaf, intermediate=intermediate, root=root, ca=ca,
                           extensions=ext, public_key=key, windows=windows)

    def verify(self, chain: Sequence[Certificate] | bytes, *, at: datetime,
               root_crl: bytes | None, pck_crl: bytes | None,
               allow_missing_crl: bool = False) -> PckChain:
        """Validate a PCK chain (certificates or PEM bytes) at ``at`` with DER/PEM CRLs."""
        static = self.static_chain(chain)
        static.check_time(at)
        root, intermediate, leaf = static.root, static.intermediate, static.leaf
        missing: list[str] = []
        for name, data, issuer, subject in ((CRL_ROOT, root_crl, root, intermediate),
                                            (CRL_PCK, pck_crl, intermediate, leaf)):
            if data is None:
                if not allow_missing_crl:
                    raise CollateralStale(f"the {name} is not available", rule="crl-missing",
                                          expected=f"a CRL issued by "
                                                   f"{common_name(issuer.cert.subject)}",
                                          actual="none")
                missing.append(name)
                continue
            verify_crl(data, issuer, at=at, what=name, verified=self._crls).check_not_revoked(
                subject, common_name(subject.cert.subject))
        if missing:
            _log.warning("PCK chain %s accepted without %s", leaf.fingerprint,
                         ", ".join(missing))
        return PckChain(leaf=leaf, intermediate=intermediate, root=root, ca=static.ca,
                        extensions=static.extensions, public_key=static.public_key,
                        missing_crls=tuple(missing))
