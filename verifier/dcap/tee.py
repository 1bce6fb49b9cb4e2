"""The Intel DCAP entry of the verifier's registry: two platforms, ``tdx`` (a TD quote, with
the CCEL and the runtime log) and ``sgx`` (an enclave quote), verified by one
``DcapVerifier`` so both share the PCK chain and collateral caches.

Invariants:
- Trust anchors are the pinned Intel SGX Root CA, plus the configured
  ``simulator_intel_roots`` (insecure) only when the configuration names them.
- Quotes are verified with missing CRLs reported as claims; each policy's
  ``allow_missing_crl`` decides (COLLATERAL_STALE otherwise).
- TDX: the binding is checked before the event logs are read, and the claims carry ``events``
  only after the CCEL and the runtime log replayed to the quoted RTMRs (EVENT_LOG otherwise).
  Init-data is bound by MRCONFIGID (SHA-384); runtime images are those replayed into RTMR3.
- SGX: an enclave has no register for init-data; presented init-data is refused by the
  decision engine, and a policy's ``workload:`` rules are refused at compile time.
- The platform identity is the FMSPC of the TCB evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime

from keybroker.document_reader import DocumentReader
from keybroker.v1 import evidence_pb2
from verifier.dcap.appraisal import appraise_sgx, appraise_tdx, tcb_debt
from verifier.dcap.claims import PLATFORM_SGX, PLATFORM_TDX, SgxClaims, TdxClaims
from verifier.dcap.policy import (
    EARLY_WARNING_KEY,
    SGX_IDENTITY_CLAIMS,
    TDX_IDENTITY_CLAIMS,
    compile_early_warning,
    compile_sgx,
    compile_tdx,
)
from verifier.dcap.trust import load_simulator_roots
from verifier.dcap.verify import DcapVerifier
from verifier.dcap.view import (
    sample_sgx_claims,
    sample_tdx_claims,
    sgx_claims_from_dict,
    tdx_claims_from_dict,
)
from verifier.eventlog.measured import CcelCache, td_event_claims
from verifier.init_data import MRCONFIGID
from verifier.tee import (
    Claims,
    EvidenceFamily,
    EvidenceVerifier,
    TcbEarlyWarning,
    Tee,
    VerifierSetup,
    check_binding,
    no_runtime_log,
    own_claims,
)
from verifier.verdict import Appraisal, PolicyRef

RUNTIME_REGISTER = "RTMR3"


def _tdx(claims: Claims) -> TdxClaims:
    return own_claims(claims, TdxClaims, PLATFORM_TDX)


def _sgx(claims: Claims) -> SgxClaims:
    return own_claims(claims, SgxClaims, PLATFORM_SGX)


def _appraise_tdx(claims: Claims, policy: PolicyRef, at: datetime,
                  allow_insecure_root: bool) -> Appraisal:
    return appraise_tdx(_tdx(claims), policy, at=at, allow_insecure_root=allow_insecure_root)


def _appraise_sgx(claims: Claims, policy: PolicyRef, at: datetime,
                  allow_insecure_root: bool) -> Appraisal:
    return appraise_sgx(_sgx(claims), policy, at=at, allow_insecure_root=allow_insecure_root)


def _compile_tdx(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_tdx(section, identity_referenced)


def _compile_sgx(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_sgx(section, identity_referenced)


def _tdx_debt(claims: Claims, warning: TcbEarlyWarning) -> tuple[str, ...]:
    return tcb_debt(_tdx(claims).tcb, warning)


def _sgx_debt(claims: Claims, warning: TcbEarlyWarning) -> tuple[str, ...]:
    return tcb_debt(_sgx(claims).tcb, warning)


def _mr_config_id(claims: Claims) -> bytes:
    return _tdx(claims).mr_config_id


def _no_register(claims: Claims) -> bytes:
    del claims
    return b""


def _rtmr3_images(claims: Claims) -> tuple[str | None, tuple[str, ...]]:
    events = _tdx(claims).events
    return (RUNTIME_REGISTER, events.images) if events is not None else (None, ())


def platform_identity(evidence: Mapping[str, object]) -> str:
    """``fmspc:<hex>`` from TDX / SGX claims' ``as_dict``."""
    tcb = evidence.get("tcb")
    fmspc = tcb.get("fmspc") if isinstance(tcb, Mapping) else None
    return f"fmspc:{fmspc}"


class DcapEvidence:
    """The ``tdx`` and ``sgx`` arms, verified by one ``DcapVerifier``; TDX event logs are
    replayed with one parsed-CCEL cache."""

    def __init__(self, verifier: DcapVerifier) -> None:
        self._verifier = verifier
        self._ccel_cache = CcelCache()

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        if evidence.WhichOneof("kind") == "sgx":
            return self._verifier.verify_sgx(evidence.sgx.quote, at=at, allow_missing_crl=True)
        quote = evidence.tdx
        # Missing CRLs are reported as claims; each policy's allow_missing_crl decides.
        tdx = self._verifier.verify_tdx(quote.quote, at=at, allow_missing_crl=True)
        check_binding(tdx.report_data, expected_report_data)
        if quote.ccel_data or quote.ccel_table or quote.runtime_log:
            events = td_event_claims(tdx.rtmrs, ccel_table=quote.ccel_table or None,
                                     ccel_data=quote.ccel_data or None,
                                     runtime_log=quote.runtime_log or None,
                                     cache=self._ccel_cache)
            tdx = dataclasses.replace(tdx, events=events)
        return tdx


def open_verifier(setup: VerifierSetup) -> EvidenceVerifier:
    """The pinned Intel root (plus configured simulator roots) over the collateral cache."""
    return DcapEvidence(DcapVerifier(setup.collateral,
                                      simulator_roots=load_simulator_roots(setup.config)))


TDX = Tee(
    platform=PLATFORM_TDX,
    section="tdx",
    evidence_kind="tdx",
    display_name="TDX",
    claims_type=TdxClaims,
    identity_claims=TDX_IDENTITY_CLAIMS,
    runtime_claims=frozenset({"evidence.rtmr3", "evidence.events.images"}),
    compile_section=_compile_tdx,
    appraise=_appraise_tdx,
    claims_from_dict=tdx_claims_from_dict,
    sample_claims=sample_tdx_claims,
    init_data_register=MRCONFIGID,
    init_data_value=_mr_config_id,
    measured_images=_rtmr3_images,
    early_warning_keys=frozenset({EARLY_WARNING_KEY}),
    compile_early_warning=compile_early_warning,
    tcb_debt=_tdx_debt,
    platform_identity=platform_identity,
)

SGX = Tee(
    platform=PLATFORM_SGX,
    section="sgx",
    evidence_kind="sgx",
    display_name="SGX",
    claims_type=SgxClaims,
    identity_claims=SGX_IDENTITY_CLAIMS,
    runtime_claims=frozenset(),
    compile_section=_compile_sgx,
    appraise=_appraise_sgx,
    claims_from_dict=sgx_claims_from_dict,
    sample_claims=sample_sgx_claims,
    init_data_register=None,
    init_data_value=_no_register,
    measured_images=no_runtime_log,
    early_warning_keys=frozenset({EARLY_WARNING_KEY}),
    compile_early_warning=compile_early_warning,
    tcb_debt=_sgx_debt,
    platform_identity=platform_identity,
)

FAMILY = EvidenceFamily(name="dcap", tees=(TDX, SGX), open_verifier=open_verifier)
