"""Intel DCAP quote verification for TDX (quote v4/v5) and SGX (quote v3), producing
``TdxClaims`` / ``SgxClaims`` (evidence-formats.md sections 2.9, 2.10 and 3.3).

Invariants:
- Order and error categories: parse (``Malformed``: any structural fault, a TDX path given an
  SGX quote or vice versa, a QE vendor id other than Intel's); PCK chain to a configured root
  and its validity (``ChainUntrusted``); Root CA CRL and PCK CRL current at ``at``
  (``CollateralStale`` when missing or stale unless ``allow_missing_crl``, then named in
  ``collateral_warnings``; a listed certificate is ``ChainUntrusted``); QE report signature by
  the PCK key, QE report data == SHA-256(attestation key || QE auth data) || 32 zero bytes,
  quote signature by the attestation key over the received header and body
  (``SignatureInvalid``); QE identity (TD_QE for TDX, QE for SGX) and TCB Info (id TDX/SGX for
  the PCK certificate's FMSPC) signed under the same root and current at ``at``
  (``ChainUntrusted`` if forged or the QE does not match, ``CollateralStale`` if absent or
  stale); TCB level matching (``TcbPolicyViolation`` when no level matches or the result is
  Revoked). Which statuses and advisories are acceptable beyond that is policy.
- The root is chosen by the chain: the configured root whose subject issued the PCK
  intermediate. Simulator roots are INSECURE: their claims carry ``insecure_root=True``.
- Per quote, the only public-key operations are the QE report and quote signatures; PCK
  chains, CRLs and collateral documents are verified once and cached (``Anchor``), while every
  time-dependent check runs on each call. No file or network I/O happens here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import ChainUntrusted, KeybrokerError, Malformed, SignatureInvalid
from keybroker.evidence.dcap_quote import (
    INTEL_QE_VENDOR_ID,
    DcapQuote,
    parse_sgx_quote,
    parse_tdx_quote,
)
from keybroker.evidence.dcap_signature import EcdsaSignatureData
from verifier.collateral.cache import CollateralStore
from verifier.dcap.anchor import Anchor
from verifier.dcap.claims import DcapTcbClaims, SgxClaims, TdAttributes, TdxClaims
from verifier.dcap.pck import CRL_PCK, CRL_ROOT, StaticChain
from verifier.dcap.tcb import (
    PlatformTcb,
    QeReport,
    QeResult,
    TcbResult,
    TdxTcb,
    evaluate_qe,
    evaluate_sgx,
    evaluate_tdx,
)
from verifier.dcap.trust import IntelTrustStore
from verifier.pki import VerifiedCrl, parse_pem_chain

_log = logging.getLogger(__name__)

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_K = TypeVar("_K")
_V = TypeVar("_V")
_ZERO32 = bytes(32)


@dataclass(frozen=True)
class DcapCacheStats:
    """Signature work done so far (verifications are cache misses) and chain-cache reuse."""

    certificate_signatures: int  # PCK chain and TCB Signing certificate signatures verified
    crl_signatures: int
    collateral_signatures: int  # TCB Info / enclave identity signatures verified
    chains_verified: int  # distinct PCK chains verified
    chains_reused: int  # quotes whose PCK chain came from the cache


@dataclass(frozen=True)
class _Platform:
    """A PCK chain verified under one anchor, with what TCB evaluation needs from it."""

    anchor: Anchor
    chain: StaticChain
    platform: PlatformTcb


@dataclass(frozen=True)
class _Checked:
    """Outcome of the checks shared by TDX and SGX quotes."""

    anchor: Anchor
    platform: PlatformTcb
    qe: QeReport
    warnings: tuple[str, ...]
    root_crl: VerifiedCrl | None  # the current Root CA CRL (None only when allowed missing)


class DcapVerifier:
    """Verifies TDX and SGX quotes; holds the caches, so keep one per process."""

    def __init__(self, collateral: CollateralStore, *, trust: IntelTrustStore | None = None,
                 simulator_roots: Sequence[IntelTrustStore] = (),
                 cache_limit: int = 4096) -> None:
        stores = [trust if trust is not None else IntelTrustStore.pinned(), *simulator_roots]
        for store in stores[1:]:
            if store.insecure:
                _log.warning("DCAP verifier trusts INSECURE simulator root %s",
                             store.root.fingerprint)
        self._anchors = tuple(Anchor(store, collateral, cache_limit=cache_limit)
                              for store in stores)
        self._platforms: dict[bytes, _Platform] = {}
        # TCB evaluation is a pure function of (collateral document, platform values); its
        # outcome is cached so that a known platform costs a lookup (errors are not cached).
        self._results: dict[tuple[str, PlatformTcb, TdxTcb | None, QeResult], TcbResult] = {}
        self._qe_results: dict[tuple[str, QeReport], QeResult] = {}
        self._cache_limit = cache_limit
        self._chain_misses = 0
        self._chain_hits = 0

    @property
    def cache_stats(self) -> DcapCacheStats:
        """Counters over all roots (see ``DcapCacheStats``)."""
        return DcapCacheStats(
            certificate_signatures=sum(a.chains.stats.misses for a in self._anchors),
            crl_signatures=sum(a.crl_signatures for a in self._anchors),
            collateral_signatures=sum(a.documents.stats.misses for a in self._anchors),
            chains_verified=self._chain_misses, chains_reused=self._chain_hits)

    def verify_tdx(self, quote: bytes, *, at: datetime,
                   allow_missing_crl: bool = False) -> TdxClaims:
        """Verify a TDX quote (v4/v5) at ``at``; returns its claims or raises a typed error."""
        _check_time(at)
        parsed = parse_tdx_quote(quote)
        td = parsed.td_report
        checked = self._check_quote(parsed, at, allow_missing_crl)
        qe = self._qe(checked, "TD_QE", at)
        info = checked.anchor.tcb_info("TDX", checked.platform.fmspc, at, checked.root_crl)
        tdx = TdxTcb(tee_tcb_svn=td.tee_tcb_svn, mrsignerseam=td.mr_signer_seam,
                     seam_attributes=td.seam_attributes)
        key = (info.source.digest, checked.platform, tdx, qe)
        result = self._results.get(key)
        if result is None:
            result = evaluate_tdx(info.parsed, checked.platform, tdx, qe=qe)
            self._remember(self._results, key, result)
        rtmrs = td.rtmrs
        claims = TdxClaims(
            version=parsed.header.version, body_type=parsed.body_type,
            tee_tcb_svn=td.tee_tcb_svn, mr_seam=td.mr_seam, mr_signer_seam=td.mr_signer_seam,
            seam_attributes=td.seam_attributes, td_attributes=TdAttributes(td.td_attributes),
            xfam=td.xfam, mr_td=td.mr_td, mr_config_id=td.mr_config_id, mr_owner=td.mr_owner,
            mr_owner_config=td.mr_owner_config, rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]),
            report_data=td.report_data, tee_tcb_svn2=td.tee_tcb_svn2,
            mr_service_td=td.mr_service_td, tcb=_tcb_claims(result, qe, checked),
            insecure_root=checked.anchor.insecure)
        _log.debug("TDX quote verified: fmspc=%s status=%s insecure=%s",
                   result.fmspc.hex(), result.status.value, claims.insecure_root)
        return claims

    def verify_sgx(self, quote: bytes, *, at: datetime,
                   allow_missing_crl: bool = False) -> SgxClaims:
        """Verify an SGX quote (v3) at ``at``; returns its claims or raises a typed error."""
        _check_time(at)
        parsed = parse_sgx_quote(quote)
        body = parsed.sgx_report
        checked = self._check_quote(parsed, at, allow_missing_crl)
        qe = self._qe(checked, "QE", at)
        info = checked.anchor.tcb_info("SGX", checked.platform.fmspc, at, checked.root_crl)
        key = (info.source.digest, checked.platform, None, qe)
        result = self._results.get(key)
        if result is None:
            result = evaluate_sgx(info.parsed, checked.platform, qe=qe)
            self._remember(self._results, key, result)
        claims = SgxClaims(
            version=parsed.header.version, cpu_svn=body.cpu_svn, misc_select=body.misc_select,
            attributes=body.attributes, mr_enclave=body.mr_enclave, mr_signer=body.mr_signer,
            isv_prod_id=body.isv_prod_id, isv_svn=body.isv_svn, config_id=body.config_id,
            config_svn=body.config_svn, isv_family_id=body.isv_family_id,
            isv_ext_prod_id=body.isv_ext_prod_id, report_data=body.report_data,
            tcb=_tcb_claims(result, qe, checked), insecure_root=checked.anchor.insecure)
        _log.debug("SGX quote verified: fmspc=%s status=%s insecure=%s",
                   result.fmspc.hex(), result.status.value, claims.insecure_root)
        return claims

    # --- shared steps ---------------------------------------------------------------------

    def _check_quote(self, quote: DcapQuote, at: datetime, allow_missing_crl: bool) -> _Checked:
        header = quote.header
        if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
            raise Malformed("quote is not from Intel's quoting enclave", rule="qe-vendor-id",
                            expected=INTEL_QE_VENDOR_ID.hex(), actual=header.qe_vendor_id.hex())
        sig = quote.signature_data
        entry = self._platform(sig.pck_cert_data.data)
        chain = entry.chain
        chain.check_time(at)
        warnings = []
        root_check = entry.anchor.current_crl(chain.root, CRL_ROOT, at,
                                              allow_missing=allow_missing_crl)
        if root_check.crl is not None:
            root_check.crl.check_not_revoked(chain.intermediate, "PCK intermediate CA")
        elif root_check.warning:
            warnings.append(root_check.warning)
        pck_check = entry.anchor.current_crl(chain.intermediate, CRL_PCK, at,
                                             allow_missing=allow_missing_crl)
        if pck_check.crl is not None:
            pck_check.crl.check_not_revoked(chain.leaf, "PCK certificate")
        elif pck_check.warning:
            warnings.append(pck_check.warning)
        _check_signatures(quote, sig, chain.public_key)
        report = sig.qe_report
        return _Checked(anchor=entry.anchor, platform=entry.platform,
                        qe=QeReport(miscselect=report.misc_select, attributes=report.attributes,
                                    mrsigner=report.mr_signer, isvprodid=report.isv_prod_id,
                                    isvsvn=report.isv_svn),
                        warnings=tuple(warnings), root_crl=root_check.crl)

    def _platform(self, pem: bytes) -> _Platform:
        key = hashlib.sha256(pem).digest()
        entry = self._platforms.get(key)
        if entry is not None:
            self._chain_hits += 1
            return entry
        certs = parse_pem_chain(pem)
        if len(certs) < 2:
            raise ChainUntrusted("PCK chain must be leaf, intermediate [, root]",
                                 expected="2 or 3 certificates", actual=str(len(certs)))
        issuer = certs[1].cert.issuer.public_bytes()
        first: KeybrokerError | None = None
        for anchor in self._anchors:
            if not anchor.issued(issuer):
                continue
            try:
                chain = anchor.chains.static_chain(certs)
            except KeybrokerError as exc:
                first = first or exc
                continue
            entry = _Platform(anchor=anchor, chain=chain,
                              platform=PlatformTcb.from_extensions(chain.extensions))
            break
        if entry is None:
            if first is not None:
                raise first
            raise ChainUntrusted("PCK chain is not issued under a configured Intel root",
                                 rule="root", expected=" | ".join(
                                     a.trust.root.cert.subject.rfc4514_string()
                                     for a in self._anchors),
                                 actual=certs[1].cert.issuer.rfc4514_string())
        self._chain_misses += 1
        self._remember(self._platforms, key, entry)
        return entry

    def _qe(self, checked: _Checked, identity_id: Literal["QE", "TD_QE"],
            at: datetime) -> QeResult:
        identity = checked.anchor.qe_identity(identity_id, at, checked.root_crl)
        key = (identity.source.digest, checked.qe)
        result = self._qe_results.get(key)
        if result is None:
            result = evaluate_qe(identity.parsed, checked.qe, expected_id=identity_id)
            self._remember(self._qe_results, key, result)
        return result

    def _remember(self, cache: dict[_K, _V], key: _K, value: _V) -> None:
        if len(cache) >= self._cache_limit:
            cache.clear()
        cache[key] = value



def _check_time(at: datetime) -> None:
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")


def _der_signature(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _check_signatures(quote: DcapQuote, sig: EcdsaSignatureData,
                      pck_key: ec.EllipticCurvePublicKey) -> None:
    """QE report signature (PCK key), QE report-data binding, quote signature (attestation
    key): the two public-key operations every quote costs."""
    try:
        pck_key.verify(_der_signature(sig.qe_report_signature), sig.qe_report_raw,
                       _ECDSA_SHA256)
    except InvalidSignature as exc:
        raise SignatureInvalid("QE report signature does not verify under the PCK key",
                               rule="qe-report-signature") from exc
    expected = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest() + _ZERO32
    if sig.qe_report.report_data != expected:
        raise SignatureInvalid("QE report data does not bind the attestation key",
                               rule="qe-binding", expected=expected.hex(),
                               actual=sig.qe_report.report_data.hex())
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                           b"\x04" + sig.attestation_key)
    except ValueError as exc:
        raise SignatureInvalid("attestation key is not a P-256 point",
                               rule="attestation-key") from exc
    try:
        key.verify(_der_signature(sig.signature), quote.signed_bytes, _ECDSA_SHA256)
    except InvalidSignature as exc:
        raise SignatureInvalid("quote signature does not verify under the attestation key",
                               rule="quote-signature") from exc


def _tcb_claims(result: TcbResult, qe: QeResult, checked: _Checked) -> DcapTcbClaims:
    return DcapTcbClaims(
        status=result.status.value, advisory_ids=result.advisory_ids,
        tcb_date=result.tcb_date, fmspc=result.fmspc, pce_id=checked.platform.pce_id,
        tcb_evaluation_data_number=result.tcb_evaluation_data_number,
        sgx_status=result.sgx_status.value,
        tdx_status=result.tdx_status.value if result.tdx_status is not None else None,
        module_status=result.module_status.value if result.module_status is not None else None,
        qe_status=qe.status.value, collateral_warnings=checked.warnings)

