"""Appraisal of verified TDX and SGX claims against one compiled appraisal policy.

Invariants:
- Input is ``TdxClaims`` / ``SgxClaims`` (a quote whose signatures, chain and TCB evaluation
  already verified; for TDX, ``events`` only after the logs replayed to the quoted RTMRs);
  output is an ``Appraisal`` or a typed error naming the rule, the expected and the actual
  value. The first violated rule raises; there is no partial pass.
- A policy for another platform is ``Malformed`` (``tdx_section`` / ``sgx_section``).
- Checks and categories (hostile-evidence rows in brackets):
  simulator root without the insecure switch -> CHAIN_UNTRUSTED;
  TDX: DEBUG (always), reserved/unknown TD attribute bits, profiling (bits 4-6), MIGRATABLE,
  PERFMON, SEPT_VE_DISABLE cleared when required, XFAM not allowed -> PLATFORM_POLICY [38];
  SGX: ATTRIBUTES.DEBUG (always), MRSIGNER / ISVPRODID not accepted, ISVSVN below the floor
  -> PLATFORM_POLICY [41];
  TCB status not accepted (OutOfDate after the grace date), advisory not allow-listed, MRSEAM /
  MRSIGNERSEAM not in the policy's module sets -> TCB_POLICY [39, 40]; missing revocation lists
  without ``allow_missing_crl`` -> COLLATERAL_STALE;
  MRTD, RTMRs, MROWNER, MROWNERCONFIG, MRENCLAVE not accepted; a required image not replayed
  into RTMR3; a measured image not allow-listed -> MEASUREMENT [44, 46, 48]. ``mrtd`` None
  (TDX) or ``mrenclave`` None (SGX) means a reference-value binding or the signer rule covers
  it: the decision engine checks bindings, this module does not.
- Init-data (MRCONFIGID for TDX; refused with SGX evidence, which cannot bind it) and the
  workload rules are the decision engine's steps (``verifier.policy.decision``) [45].
- ``warnings`` name every reason for a warning-tier trust vector (accepted non-UpToDate
  status, a status accepted under its grace date, allowed missing revocation lists).
- Trust vector (AR4SI, evidence-formats.md section 7.3): hardware 2 (genuine) for UpToDate with
  complete collateral, 32 (warning tier) for an accepted non-UpToDate status, a status accepted
  under the grace date, or allowed missing CRLs; configuration 32 when the status asks for a
  configuration change, else 2; executables 2 when the runtime was appraised (TDX: RTMR3 or
  images; SGX: the enclave), 3 (approved boot) when only boot measurements were; status is
  "warning" exactly when some value is in the warning tier.
"""

from __future__ import annotations

from datetime import UTC, datetime

from keybroker.errors import (
    ChainUntrusted,
    CollateralStale,
    Malformed,
    MeasurementMismatch,
    PlatformPolicyViolation,
    TcbPolicyViolation,
)
from verifier.dcap.claims import TD_ATTRIBUTE_BITS, DcapTcbClaims, SgxClaims, TdxClaims, rfc3339
from verifier.dcap.policy import (
    GRACE_STATUSES,
    DcapTcbPolicy,
    SgxPolicy,
    TdxPolicy,
    sgx_section,
    tdx_section,
)
from verifier.dcap.schema import TcbStatus
from verifier.tee import TcbEarlyWarning
from verifier.verdict import (
    APPROVED,
    APPROVED_BOOT_ONLY,
    GENUINE,
    UNSAFE,
    Appraisal,
    PolicyRef,
    passed,
)

_PROFILING_BITS = (4, 5, 6)
_BIT_DEBUG, _BIT_SEPT_VE_DISABLE, _BIT_MIGRATABLE, _BIT_PERFMON = 0, 28, 29, 63


def _check_root(insecure_root: bool, allow_insecure_root: bool, platform: str) -> None:
    if insecure_root and not allow_insecure_root:
        raise ChainUntrusted("quote chains to a simulator (insecure test) root",
                             rule=f"{platform}.insecure_root", expected="the pinned Intel root",
                             actual="simulator root")


def _check_tcb(tcb: DcapTcbClaims, policy: DcapTcbPolicy, at: datetime,
               platform: str) -> tuple[int, int, tuple[str, ...]]:
    """Status, grace, advisories, collateral; returns (hardware, configuration, warnings)."""
    status = tcb.status
    hardware = GENUINE
    warnings: list[str] = []
    if status == TcbStatus.REVOKED.value:
        raise TcbPolicyViolation("the platform TCB is revoked", rule=f"{platform}.tcb_status",
                                 expected="not Revoked", actual=status)
    if status not in policy.accepted_statuses:
        grace = policy.out_of_date_grace_until
        if status not in GRACE_STATUSES or grace is None:
            raise TcbPolicyViolation(
                "TCB status is not accepted by the policy",
                rule=f"{platform}.accepted_tcb_statuses",
                expected="one of " + ", ".join(sorted(policy.accepted_statuses)), actual=status)
        if at >= grace:
            raise TcbPolicyViolation(
                f"TCB status {status} is past the policy's grace date {rfc3339(grace)}",
                rule=f"{platform}.out_of_date_grace_until",
                expected=f"verification time before {rfc3339(grace)}",
                actual=f"{status} at {rfc3339(at)}")
        warnings.append(f"TCB status {status} accepted until {rfc3339(grace)}")
    elif status != TcbStatus.UP_TO_DATE.value:
        warnings.append(f"TCB status {status} accepted by the policy")
    if status != TcbStatus.UP_TO_DATE.value:
        hardware = UNSAFE
    refused = [a for a in tcb.advisory_ids if a not in policy.allowed_advisories]
    if refused:
        raise TcbPolicyViolation(
            "TCB advisory not allow-listed by the policy", rule=f"{platform}.allowed_advisories",
            expected="advisories in [" + ", ".join(sorted(policy.allowed_advisories)) + "]",
            actual=", ".join(refused))
    if tcb.collateral_warnings:
        if not policy.allow_missing_crl:
            raise CollateralStale(
                "revocation lists missing and the policy does not allow that",
                rule=f"{platform}.allow_missing_crl", expected="PCK and root CA CRLs present",
                actual=", ".join(tcb.collateral_warnings))
        hardware = UNSAFE
        warnings.append("collateral incomplete (allowed by the policy): "
                        + ", ".join(tcb.collateral_warnings))
    configuration = UNSAFE if "Configuration" in status else APPROVED
    return hardware, configuration, tuple(warnings)


def _appraisal(policy: PolicyRef, *, hardware: int, configuration: int,
               executables: int, warnings: tuple[str, ...]) -> Appraisal:
    return passed(policy, {
        "instance-identity": GENUINE,
        "configuration": configuration,
        "executables": executables,
        "hardware": hardware,
        "runtime-opaque": APPROVED,
    }, warnings)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise Malformed("appraisal time must be timezone-aware", rule="appraisal.at",
                        expected="aware datetime", actual=at.isoformat())
    return at.astimezone(UTC)


def _td_bit(raw: int, bit: int) -> bool:
    return bool(raw >> bit & 1)


def _check_td_platform(claims: TdxClaims, tdx: TdxPolicy) -> None:
    raw = claims.td_attributes.raw
    attrs = f"TDATTRIBUTES={raw:016x}"

    def deny(reason: str, rule: str, expected: str) -> PlatformPolicyViolation:
        return PlatformPolicyViolation(reason, rule=f"tdx.{rule}", expected=expected,
                                       actual=attrs)

    if _td_bit(raw, _BIT_DEBUG):
        raise deny("debug TD: the host can read and modify TD state", "debug",
                   "DEBUG (bit 0) = 0")
    if claims.td_attributes.unknown_bits:
        raise deny("reserved or unknown TD attribute bits are set", "td_attributes",
                   "only bits " + ", ".join(str(b) for b in sorted(TD_ATTRIBUTE_BITS)))
    if not tdx.allow_profiling and any(_td_bit(raw, b) for b in _PROFILING_BITS):
        raise deny("TD allows profiling", "allow_profiling", "bits 4-6 = 0")
    if not tdx.allow_migratable and _td_bit(raw, _BIT_MIGRATABLE):
        raise deny("TD is migratable", "allow_migratable", "MIGRATABLE (bit 29) = 0")
    if not tdx.allow_perfmon and _td_bit(raw, _BIT_PERFMON):
        raise deny("TD allows host performance monitoring", "allow_perfmon",
                   "PERFMON (bit 63) = 0")
    if tdx.require_sept_ve_disable and not _td_bit(raw, _BIT_SEPT_VE_DISABLE):
        raise deny("SEPT_VE_DISABLE is cleared", "require_sept_ve_disable",
                   "SEPT_VE_DISABLE (bit 28) = 1")
    if tdx.allowed_xfam is not None and claims.xfam not in tdx.allowed_xfam:
        raise PlatformPolicyViolation(
            "XFAM is not in the accepted list", rule="tdx.allowed_xfam",
            expected="one of " + ", ".join(f"{x:016x}" for x in sorted(tdx.allowed_xfam)),
            actual=f"XFAM={claims.xfam:016x}")


def _in_set(value: bytes, accepted: frozenset[bytes] | None, name: str, key: str) -> None:
    if accepted is not None and value not in accepted:
        raise MeasurementMismatch(f"{name} is not in the accepted list", rule=f"tdx.{key}",
                                  expected=f"one of {len(accepted)} accepted values",
                                  actual=value.hex())


def _check_td_module(claims: TdxClaims, tdx: TdxPolicy) -> None:
    for name, value, accepted in (("MRSEAM", claims.mr_seam, tdx.mrseam),
                                  ("MRSIGNERSEAM", claims.mr_signer_seam, tdx.mrsignerseam)):
        if accepted is not None and value not in accepted:
            raise TcbPolicyViolation(f"TDX module {name} is not in the accepted list",
                                     rule=f"tdx.{name.lower()}",
                                     expected=f"one of {len(accepted)} accepted values",
                                     actual=value.hex())


def _check_td_measurements(claims: TdxClaims, tdx: TdxPolicy) -> None:
    _in_set(claims.mr_td, tdx.mrtd, "MRTD", "mrtd")
    for i, accepted in enumerate(tdx.rtmrs):
        _in_set(claims.rtmrs[i], accepted, f"RTMR{i}", f"rtmr{i}")
    _in_set(claims.mr_owner, tdx.mrowner, "MROWNER", "mrowner")
    _in_set(claims.mr_owner_config, tdx.mrownerconfig, "MROWNERCONFIG", "mrownerconfig")
    images = claims.events.images if claims.events is not None else ()
    if tdx.required_images and claims.events is None:
        raise MeasurementMismatch("policy requires measured images but no event log replayed "
                                  "into RTMR3", rule="tdx.required_images",
                                  expected=", ".join(tdx.required_images),
                                  actual=f"no events (RTMR3 = {claims.rtmrs[3].hex()})")
    missing = [i for i in tdx.required_images if i not in images]
    if missing:
        raise MeasurementMismatch("a required image was not measured into RTMR3",
                                  rule="tdx.required_images", expected=", ".join(missing),
                                  actual="measured: " + (", ".join(images) or "none"))
    if tdx.allowed_images is not None:
        extra = [i for i in images if i not in tdx.allowed_images]
        if extra:
            raise MeasurementMismatch("a measured image is not allow-listed",
                                      rule="tdx.allowed_images",
                                      expected=f"one of {len(tdx.allowed_images)} allowed images",
                                      actual=", ".join(extra))


def appraise_tdx(
    claims: TdxClaims,
    policy: PolicyRef,
    *,
    at: datetime,
    allow_insecure_root: bool = False,
) -> Appraisal:
    """Appraise verified TDX claims against ``policy``'s typed ``tdx`` rules at time ``at``;
    raise the first violated rule (init-data, workload: ``verifier.policy.decision.appraise``)."""
    tdx = tdx_section(policy)
    at = _utc(at)
    _check_root(claims.insecure_root, allow_insecure_root, "tdx")
    _check_td_platform(claims, tdx)
    hardware, configuration, warnings = _check_tcb(claims.tcb, tdx.tcb, at, "tdx")
    _check_td_module(claims, tdx)
    _check_td_measurements(claims, tdx)
    images_checked = bool(tdx.required_images) or tdx.allowed_images is not None
    runtime = (claims.events is not None and images_checked) or tdx.rtmrs[3] is not None
    return _appraisal(policy, hardware=hardware, configuration=configuration,
                      executables=APPROVED if runtime else APPROVED_BOOT_ONLY,
                      warnings=warnings)


def _check_enclave(claims: SgxClaims, sgx: SgxPolicy) -> None:
    if claims.debug:
        raise PlatformPolicyViolation("debug enclave: ATTRIBUTES.DEBUG is set", rule="sgx.debug",
                                      expected="DEBUG (FLAGS bit 1) = 0",
                                      actual=f"FLAGS={claims.flags:016x}")
    signer = sgx.signer
    if signer is None:
        return
    if claims.mr_signer not in signer.mrsigner:
        raise PlatformPolicyViolation("MRSIGNER is not in the accepted list",
                                      rule="sgx.mrsigner",
                                      expected=f"one of {len(signer.mrsigner)} accepted signers",
                                      actual=claims.mr_signer.hex())
    if claims.isv_prod_id != signer.isv_prod_id:
        raise PlatformPolicyViolation("ISVPRODID differs from the policy", rule="sgx.isv_prod_id",
                                      expected=str(signer.isv_prod_id),
                                      actual=str(claims.isv_prod_id))
    if claims.isv_svn < signer.min_isv_svn:
        raise PlatformPolicyViolation("ISVSVN is below the policy floor", rule="sgx.min_isv_svn",
                                      expected=f">= {signer.min_isv_svn}",
                                      actual=str(claims.isv_svn))


def appraise_sgx(
    claims: SgxClaims,
    policy: PolicyRef,
    *,
    at: datetime,
    allow_insecure_root: bool = False,
) -> Appraisal:
    """Appraise verified SGX claims against ``policy``'s typed ``sgx`` rules at time ``at``;
    raise the first violated rule (init-data: ``verifier.policy.decision.appraise``)."""
    sgx = sgx_section(policy)
    at = _utc(at)
    _check_root(claims.insecure_root, allow_insecure_root, "sgx")
    _check_enclave(claims, sgx)
    hardware, configuration, warnings = _check_tcb(claims.tcb, sgx.tcb, at, "sgx")
    if sgx.mrenclave is not None and claims.mr_enclave not in sgx.mrenclave:
        raise MeasurementMismatch("MRENCLAVE is not in the accepted list", rule="sgx.mrenclave",
                                  expected=f"one of {len(sgx.mrenclave)} accepted values",
                                  actual=claims.mr_enclave.hex())
    return _appraisal(policy, hardware=hardware, configuration=configuration,
                      executables=APPROVED, warnings=warnings)


def tcb_debt(tcb: DcapTcbClaims, warning: TcbEarlyWarning) -> tuple[str, ...]:
    """The TCB date below the policy's next floor, as "tcb_date <date> < next floor <date>"."""
    floor = warning.min_tcb_date
    if floor is not None and tcb.tcb_date < floor:
        return (f"tcb_date {rfc3339(tcb.tcb_date.astimezone(UTC))} < next floor "
                f"{rfc3339(floor.astimezone(UTC))}",)
    return ()
