"""Typed appraisal of verified MAA claims against the ``maa:`` section of one policy.

Invariants:
- Input is ``MaaClaims`` of a token that verified (keys, algorithm, times, issuer); output is
  an ``Appraisal`` or the first violated rule's typed error.
- Categories: an issuer or attestation type the policy does not accept, a debuggable enclave,
  secure boot not reported on -> PLATFORM_POLICY; an enclave or launch measurement not listed
  (or absent when the policy names one) -> MEASUREMENT; an SVN below the floor -> TCB_POLICY.
  MAA tokens carry no TCB collateral of ours: the TCB debt is always empty.
"""

from __future__ import annotations

from keybroker.errors import MeasurementMismatch, PlatformPolicyViolation, TcbPolicyViolation
from verifier.maa.claims import MaaClaims
from verifier.maa.policy import MaaPolicy, MaaSgxPolicy, maa_section
from verifier.verdict import TRUST_VECTOR_AFFIRMING, Appraisal, PolicyRef, passed


def _check_instance(claims: MaaClaims, maa: MaaPolicy) -> None:
    if claims.issuer.rstrip("/") not in maa.issuers:
        raise PlatformPolicyViolation("token from an MAA instance the policy does not accept",
                                      rule="maa.issuers", expected=", ".join(sorted(maa.issuers)),
                                      actual=claims.issuer[:200])
    if claims.attestation_type not in maa.attestation_types:
        raise PlatformPolicyViolation(
            "attestation type not accepted", rule="maa.attestation_types",
            expected=", ".join(sorted(maa.attestation_types)),
            actual=claims.attestation_type or "(none)")


def _check_sgx(claims: MaaClaims, sgx: MaaSgxPolicy) -> None:
    if claims.sgx_debuggable is not False:
        raise PlatformPolicyViolation("the enclave is debuggable (or does not say)",
                                      rule="maa.sgx.debug", expected="x-ms-sgx-is-debuggable false",
                                      actual=str(claims.sgx_debuggable))
    for name, accepted, value in (("mrenclave", sgx.mrenclave, claims.sgx_mrenclave),
                                  ("mrsigner", sgx.mrsigner, claims.sgx_mrsigner)):
        if accepted is not None and value not in accepted:
            raise MeasurementMismatch(f"enclave {name.upper()} is not accepted",
                                      rule=f"maa.sgx.{name}",
                                      expected=f"one of {len(accepted)} accepted values",
                                      actual=value.hex() if value is not None else "absent")
    if sgx.product_id is not None and claims.sgx_product_id != sgx.product_id:
        raise MeasurementMismatch("enclave product id is not the policy's",
                                  rule="maa.sgx.product_id", expected=str(sgx.product_id),
                                  actual=str(claims.sgx_product_id))
    if (claims.sgx_svn or 0) < sgx.min_svn:
        raise TcbPolicyViolation("enclave SVN below the policy floor", rule="maa.sgx.min_svn",
                                 expected=f">= {sgx.min_svn}", actual=str(claims.sgx_svn))


def _check_cvm(claims: MaaClaims, maa: MaaPolicy) -> None:
    if maa.secure_boot and claims.secure_boot is not True:
        raise PlatformPolicyViolation("the VM does not report secure boot on",
                                      rule="maa.secure_boot", expected="secureboot true",
                                      actual=str(claims.secure_boot))
    if maa.launch_measurements is not None:
        tee = claims.isolation_tee or {}
        value = tee.get("x-ms-sevsnpvm-launchmeasurement")
        raw = bytes.fromhex(value) if isinstance(value, str) and len(value) == 96 else None
        if raw not in maa.launch_measurements:
            raise MeasurementMismatch("launch measurement is not accepted",
                                      rule="maa.launch_measurements",
                                      expected=f"one of {len(maa.launch_measurements)} values",
                                      actual=str(value)[:96] if value else "absent")


def appraise_maa(claims: MaaClaims, policy: PolicyRef) -> Appraisal:
    """Appraise verified MAA claims against ``policy``'s ``maa`` rules (module invariants)."""
    maa = maa_section(policy)
    _check_instance(claims, maa)
    if claims.sgx_mrenclave is not None or claims.attestation_type == "sgx":
        if maa.sgx is None:
            raise MeasurementMismatch("the token attests an enclave but the policy pins none",
                                      rule="maa.sgx", expected="an sgx section",
                                      actual="SGX claims")
        _check_sgx(claims, maa.sgx)
    _check_cvm(claims, maa)
    return passed(policy, TRUST_VECTOR_AFFIRMING)
