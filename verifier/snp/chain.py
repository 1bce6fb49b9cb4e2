"""The AMD endorsement chain: ARK -> ASK -> VCEK and ARK -> ASVK -> VLEK.

Invariants:
- A chain ends at an ARK from the trust store (never one from evidence or collateral); the
  intermediate is the pinned one or any certificate that verifies under that ARK with the
  right name; the leaf verifies under the intermediate. Names chain by exact equality.
- Signatures are verified explicitly: RSASSA-PSS with SHA-384, MGF1-SHA-384 and salt 48 for
  AMD anchors; ECDSA-SHA384 is accepted only below an anchor marked insecure (simulator).
- Subject/issuer CNs, basicConstraints CA:TRUE and keyUsage keyCertSign on the ARK and the
  ASK/ASVK (both required, ``ChainUntrusted`` when absent), P-384 leaf keys, the key type
  (VCEK via ASK only, VLEK via ASVK only), productName/structVersion and the validity window of
  every certificate at the caller's ``at`` are checked on every call.
- Signature results are cached by (insecure, issuer DER digest, subject DER digest), and
  decoded certificates/extensions by DER digest; nothing time-dependent is cached.
- Revocation: CRLs issued under the ARK's name count only if they verify under the ARK. None
  in the collateral is a *missing* CRL, none covering ``at`` a *stale* one: ``CollateralStale``
  unless the caller allows it, and then the key carries ``crl_warning`` so claims and token
  warn. CRLs in the ARK's name of which none verifies are forged: ``ChainUntrusted``, never
  "missing". An intermediate listed in any verified CRL is ``ChainUntrusted``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from keybroker.errors import ChainUntrusted, CollateralStale, KeybrokerError
from keybroker.evidence.snp_certs import AmdExtensions, decode_amd_extensions
from verifier.collateral.cache import CollateralCrl, CollateralStore
from verifier.pki import CacheStats, Certificate, check_validity, common_name
from verifier.snp.trust import PRODUCTS, AmdTrustStore, KeyKind, TrustAnchor
from verifier.snp.trust import intermediate_cn as _intermediate_cn

_log = logging.getLogger(__name__)

LEAF_CN = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_V = TypeVar("_V")


def _remember(cache: dict[str, _V], key: str, value: _V, limit: int) -> None:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


@dataclass(frozen=True)
class EndorsementKey:
    """A VCEK/VLEK that chained to a trust anchor at the verification time."""

    kind: KeyKind
    product: str
    leaf: Certificate
    extensions: AmdExtensions
    public_key: ec.EllipticCurvePublicKey
    intermediate: Certificate
    anchor: TrustAnchor
    crl_warning: str = ""  # "ARK-<product> CRL missing|stale" when the caller allowed that

    @property
    def insecure(self) -> bool:
        """True when the chain ends at a simulator (test) root."""
        return self.anchor.insecure


def verify_signature(issuer_key: object, *, algorithm: x509.ObjectIdentifier,
                     hash_algorithm: hashes.HashAlgorithm | None, signature: bytes, tbs: bytes,
                     allow_ecdsa: bool, what: str) -> None:
    """Verify an AMD-style signature (RSASSA-PSS SHA-384/MGF1-SHA-384/salt 48), or
    ECDSA-SHA384 with a P-384 key when ``allow_ecdsa``; raises ``ChainUntrusted``."""
    sha384 = isinstance(hash_algorithm, hashes.SHA384)
    try:
        if (algorithm == SignatureAlgorithmOID.RSASSA_PSS and sha384
                and isinstance(issuer_key, rsa.RSAPublicKey)):
            issuer_key.verify(signature, tbs, _PSS, hashes.SHA384())
            return
        if (allow_ecdsa and algorithm == SignatureAlgorithmOID.ECDSA_WITH_SHA384
                and isinstance(issuer_key, ec.EllipticCurvePublicKey)
                and isinstance(issuer_key.curve, ec.SECP384R1)):
            issuer_key.verify(signature, tbs, ec.ECDSA(hashes.SHA384()))
            return
    except InvalidSignature as exc:
        raise ChainUntrusted(f"{what}: signature does not verify under its issuer") from exc
    raise ChainUntrusted(f"{what}: signature algorithm or issuer key not allowed",
                         expected="RSASSA-PSS SHA-384 with an RSA issuer"
                         + (" or ECDSA-SHA384 with a P-384 issuer" if allow_ecdsa else ""),
                         actual=f"{algorithm.dotted_string} with {type(issuer_key).__name__}")


def signature_hash(obj: x509.Certificate | x509.CertificateRevocationList
                   ) -> hashes.HashAlgorithm | None:
    """The hash of ``obj``'s signature algorithm; None when cryptography does not know it."""
    try:
        return obj.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None


def _check_name(cert: Certificate, name: str) -> None:
    if cert.subject_cn != name:
        raise ChainUntrusted("intermediate has the wrong name", rule="key-type",
                             expected=name, actual=cert.subject_cn)


def check_ca(cert: x509.Certificate, what: str) -> None:
    """basicConstraints CA:TRUE and keyUsage keyCertSign, both required (every AMD ARK, ASK
    and ASVK carries them; a CA certificate without them is not one)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ChainUntrusted(f"{what} has no basicConstraints", rule="ca-constraints",
                             expected="basicConstraints CA:TRUE", actual="absent") from None
    if not bc.ca:
        raise ChainUntrusted(f"{what} is not a CA certificate", rule="ca-constraints",
                             expected="CA:TRUE", actual="CA:FALSE")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise ChainUntrusted(f"{what} has no keyUsage", rule="ca-key-usage",
                             expected="keyUsage keyCertSign", actual="absent") from None
    if not ku.key_cert_sign:
        raise ChainUntrusted(f"{what} may not sign certificates", rule="ca-key-usage",
                             expected="keyCertSign", actual="keyUsage without keyCertSign")


class ChainValidator:
    """Validates VCEK/VLEK chains against a trust store, with collateral intermediates/CRLs."""

    def __init__(self, trust: AmdTrustStore, collateral: CollateralStore, *,
                 cache_limit: int = 4096) -> None:
        self._trust = trust
        self._collateral = collateral
        self._cache_limit = cache_limit
        self._signed: set[tuple[bool, str, str]] = set()
        self._stats = CacheStats()
        self._certs: dict[str, Certificate] = {}
        self._extensions: dict[str, AmdExtensions] = {}

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the certificate-signature cache counters."""
        return dataclasses.replace(self._stats)

    def certificate(self, der: bytes) -> Certificate:
        """Parse DER once (cached by digest); raises ``Malformed``."""
        digest = hashlib.sha256(der).hexdigest()
        cached = self._certs.get(digest)
        if cached is None:
            cached = Certificate.from_der(der)
            _remember(self._certs, digest, cached, self._cache_limit)
        return cached

    def extensions(self, leaf: Certificate) -> AmdExtensions:
        """Decoded AMD extensions of ``leaf`` (cached); raises ``ChainUntrusted``."""
        cached = self._extensions.get(leaf.fingerprint)
        if cached is None:
            cached = decode_amd_extensions(leaf.cert)
            _remember(self._extensions, leaf.fingerprint, cached, self._cache_limit)
        return cached

    def validate(self, leaf: Certificate, *, kind: KeyKind, product: str | None,
                 evidence_certs: Sequence[Certificate], at: datetime,
                 allow_missing_crl: bool = False) -> EndorsementKey:
        """Chain ``leaf`` to a trust anchor. ``product`` comes from the report's CPUID (None
        for v2 reports: productName decides). Raises ChainUntrusted or CollateralStale; a
        missing ARK CRL is accepted only with ``allow_missing_crl`` (then named in the key)."""
        ext = self.extensions(leaf)
        public_key = self._check_leaf(leaf, ext, kind, at)
        line = ext.product_line
        if line not in PRODUCTS:
            raise ChainUntrusted("certificate names an unsupported product",
                                 expected=" | ".join(PRODUCTS), actual=ext.product_name or "")
        if product is not None and product != line:
            raise ChainUntrusted("certificate product does not match the report's CPUID",
                                 rule="product", expected=product, actual=line)
        if ext.turin_layout != (line == "Turin"):
            raise ChainUntrusted("structVersion does not match the product", rule="product",
                                 expected="1" if line == "Turin" else "0",
                                 actual=str(ext.struct_version))
        issuer_cn = common_name(leaf.issuer)
        if issuer_cn != _intermediate_cn(kind, line):
            raise ChainUntrusted(f"{kind.upper()} issuer is not the {line} "
                                 f"{'ASK' if kind == 'vcek' else 'ASVK'}", rule="key-type",
                                 expected=_intermediate_cn(kind, line), actual=issuer_cn)
        anchors = self._trust.anchors(line)
        if not anchors:
            raise ChainUntrusted("no trust anchor configured for the product", actual=line)
        best: tuple[int, KeybrokerError] | None = None
        for anchor in anchors:
            stage = 0
            try:
                self._check_root(anchor, at)
                stage = 1
                intermediate = self._find_intermediate(anchor, leaf, kind, line,
                                                       evidence_certs=evidence_certs, at=at)
                stage = 2
                missing = self._check_crls(anchor, intermediate, at, allow_missing_crl)
            except KeybrokerError as exc:
                if best is None or stage > best[0]:
                    best = (stage, exc)
                continue
            _log.debug("%s %s chains to %s (insecure=%s)", kind, leaf.fingerprint,
                       anchor.ark.fingerprint, anchor.insecure)
            return EndorsementKey(kind=kind, product=line, leaf=leaf, extensions=ext,
                                  public_key=public_key, intermediate=intermediate,
                                  anchor=anchor, crl_warning=missing)
        assert best is not None
        raise best[1]

    def _check_leaf(self, leaf: Certificate, ext: AmdExtensions, kind: KeyKind,
                    at: datetime) -> ec.EllipticCurvePublicKey:
        cert = leaf.cert
        cn = leaf.subject_cn
        if cn != LEAF_CN[kind]:
            raise ChainUntrusted("endorsement key type does not match the report's SIGNING_KEY",
                                 rule="key-type", expected=LEAF_CN[kind], actual=cn)
        if cert.version is not x509.Version.v3:
            raise ChainUntrusted("endorsement certificate is not X.509 v3",
                                 actual=cert.version.name)
        if kind == "vcek" and (ext.hw_id is None or ext.csp_id is not None):
            raise ChainUntrusted("a VCEK must carry hwID and no csp_id", rule="key-type")
        if kind == "vlek" and (ext.csp_id is None or ext.hw_id is not None):
            raise ChainUntrusted("a VLEK must carry csp_id and no hwID", rule="key-type")
        if ext.struct_version not in (0, 1):
            raise ChainUntrusted("unsupported structVersion", expected="0 or 1",
                                 actual=str(ext.struct_version))
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                          ec.SECP384R1):
            raise ChainUntrusted("endorsement key is not EC P-384", expected="secp384r1",
                                 actual=getattr(getattr(key, "curve", None), "name",
                                                type(key).__name__))
        check_validity(cert, at, f"{cn} certificate")
        return key

    def _check_root(self, anchor: TrustAnchor, at: datetime) -> None:
        ark = anchor.ark
        if ark.subject_cn != f"ARK-{anchor.product}":
            raise ChainUntrusted("trust anchor has the wrong name",
                                 expected=f"ARK-{anchor.product}",
                                 actual=ark.subject_cn)
        check_validity(ark.cert, at, f"ARK-{anchor.product}")
        check_ca(ark.cert, f"ARK-{anchor.product}")
        self._check_signed(ark, ark, anchor, f"ARK-{anchor.product}")

    def _find_intermediate(self, anchor: TrustAnchor, leaf: Certificate, kind: KeyKind,
                           product: str, *, evidence_certs: Sequence[Certificate],
                           at: datetime) -> Certificate:
        candidates: list[Certificate] = []
        pinned = anchor.intermediate(kind)
        for cand in ([pinned] if pinned else []) + list(evidence_certs) + \
                self._collateral.with_subject(leaf.issuer):
            if cand.subject == leaf.issuer and all(
                    c.fingerprint != cand.fingerprint for c in candidates):
                candidates.append(cand)
        if not candidates:
            raise CollateralStale("the intermediate certificate is not available",
                                  expected=_intermediate_cn(kind, product),
                                  actual="not in the trust store, evidence or collateral")
        errors: list[KeybrokerError] = []
        name = _intermediate_cn(kind, product)
        for cand in candidates:
            try:
                _check_name(cand, name)
                check_validity(cand.cert, at, name)
                check_ca(cand.cert, name)
                self._check_signed(cand, anchor.ark, anchor, name)
                self._check_signed(leaf, cand, anchor, LEAF_CN[kind])
            except ChainUntrusted as exc:
                errors.append(exc)
                continue
            return cand
        raise errors[0]

    def _check_signed(self, subject: Certificate, issuer: Certificate, anchor: TrustAnchor,
                      what: str) -> None:
        if subject.issuer != issuer.subject:
            raise ChainUntrusted(f"{what}: issuer name does not match",
                                 expected=issuer.subject.rfc4514_string(),
                                 actual=subject.issuer.rfc4514_string())
        key = (anchor.insecure, issuer.fingerprint, subject.fingerprint)
        if key in self._signed:
            self._stats.hits += 1
            return
        self._stats.misses += 1
        verify_signature(issuer.cert.public_key(), algorithm=subject.cert.signature_algorithm_oid,
                         hash_algorithm=signature_hash(subject.cert),
                         signature=subject.cert.signature, tbs=subject.cert.tbs_certificate_bytes,
                         allow_ecdsa=anchor.insecure, what=what)
        if len(self._signed) >= self._cache_limit:
            self._signed.clear()
        self._signed.add(key)

    def _check_crls(self, anchor: TrustAnchor, intermediate: Certificate, at: datetime,
                    allow_missing: bool) -> str:
        """Revocation of ``intermediate``; returns the warning for an allowed missing or stale
        CRL ("" when a current one was checked)."""
        name = f"ARK-{anchor.product} CRL"
        claimed = self._collateral.crls_by_issuer(anchor.ark.subject)
        if not claimed:
            if not allow_missing:
                raise CollateralStale(f"the {name} is not available", rule="crl-missing",
                                      expected=f"a CRL issued by ARK-{anchor.product} "
                                               "(collateral)", actual="none")
            return f"{name} missing"
        crls = [entry for entry in claimed if self._crl_signed(anchor, entry)]
        if not crls:
            raise ChainUntrusted(f"every CRL named for ARK-{anchor.product} fails its signature",
                                 rule="crl-signature", expected=anchor.ark.fingerprint,
                                 actual=", ".join(hashlib.sha256(c.der).hexdigest()[:16]
                                                  for c in claimed))
        windows = [(c.crl.last_update_utc, c.crl.next_update_utc) for c in crls]
        current = any(nu is not None and lu <= at <= nu for lu, nu in windows)
        if not current and not allow_missing:
            raise CollateralStale(f"no CRL of ARK-{anchor.product} covers the verification time",
                                  rule="crl-window",
                                  expected=" | ".join(f"{lu.isoformat()} .. {nu.isoformat()}"
                                                      for lu, nu in windows if nu is not None),
                                  actual=at.isoformat())
        serial = intermediate.cert.serial_number
        for entry in crls:
            if entry.crl.get_revoked_certificate_by_serial_number(serial) is not None:
                raise ChainUntrusted(f"{intermediate.subject_cn} is revoked",
                                     rule="crl", expected="not listed",
                                     actual=f"serial {serial:#x} listed")
        return "" if current else f"{name} stale"

    def _crl_signed(self, anchor: TrustAnchor, entry: CollateralCrl) -> bool:
        """Whether ``entry`` verifies under the ARK (a CRL of another root with the same name,
        e.g. a simulator's, does not and is ignored when a genuine one is present)."""
        digest = entry.digest
        key = (anchor.insecure, anchor.ark.fingerprint, digest)
        if key in self._signed:
            return True
        try:
            verify_signature(anchor.ark.cert.public_key(),
                             algorithm=entry.crl.signature_algorithm_oid,
                             hash_algorithm=signature_hash(entry.crl),
                             signature=entry.crl.signature,
                             tbs=entry.crl.tbs_certlist_bytes, allow_ecdsa=anchor.insecure,
                             what="CRL")
        except ChainUntrusted:
            _log.warning("ignoring a CRL in the name of ARK-%s that it did not sign (%s)",
                         anchor.product, digest[:16])
            return False
        self._signed.add(key)
        return True
