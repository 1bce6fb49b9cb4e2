"""Typed appraisal of verified Azure CVM claims against the ``az_snp_vtpm:`` or ``az_tdx_vtpm:``
section of one policy.

Invariants:
- Input is ``AzureVmClaims`` (hardware report verified by its family, runtime claims bound,
  vTPM quote verified under the HCL's AK); output is an ``Appraisal`` or the first violated
  rule's typed error.
- Categories: a simulator root without the insecure switch -> CHAIN_UNTRUSTED; a debug guest,
  a vm-configuration switch not as required -> PLATFORM_POLICY; a TDX TCB status not accepted
  or an SEV-SNP reported/committed TCB component below ``snp_min_tcb`` -> TCB_POLICY; a
  measurement or PCR value not accepted -> MEASUREMENT; a revocation list the hardware
  verification went without -> COLLATERAL_STALE unless ``allow_missing_crl`` (then
  a warning and hardware "unsafe").
"""

from __future__ import annotations

from keybroker.errors import (
    ChainUntrusted,
    CollateralStale,
    MeasurementMismatch,
    PlatformPolicyViolation,
    TcbPolicyViolation,
)
from verifier.azure.claims import AzureVmClaims
from verifier.azure.policy import azure_section
from verifier.verdict import TRUST_VECTOR_AFFIRMING, UNSAFE, Appraisal, PolicyRef, passed


def appraise_azure(claims: AzureVmClaims, policy: PolicyRef, *,
                   allow_insecure_root: bool = False) -> Appraisal:
    """Appraise verified Azure CVM claims against ``policy`` (module invariants)."""
    azure = azure_section(policy, claims.platform)
    if claims.insecure and not allow_insecure_root:
        raise ChainUntrusted("the hardware report chains to a simulator (insecure test) root",
                             rule="azure.insecure_root", expected="a pinned vendor root",
                             actual="simulator root")
    if claims.debug:
        raise PlatformPolicyViolation("the guest allows debugging", rule="azure.debug",
                                      expected="debug off", actual="debug on")
    for name, wanted in sorted(azure.vm_configuration.items()):
        actual = claims.vm_configuration.get(name)
        if actual is not wanted:
            raise PlatformPolicyViolation(f"vm-configuration {name} is not as required",
                                          rule=f"azure.vm_configuration.{name}",
                                          expected=str(wanted).lower(),
                                          actual="absent" if actual is None else str(actual))
    for which in ("reported_tcb", "committed_tcb"):
        tcb = claims.hardware.get(which)
        components = tcb if isinstance(tcb, dict) else {}
        for name, floor in sorted(azure.snp_min_tcb.items()):
            value = components.get(name, 0)
            if not isinstance(value, int) or value < floor:
                raise TcbPolicyViolation(f"SEV-SNP {which} component {name} is below the floor",
                                         rule=f"azure.snp_min_tcb.{name}",
                                         expected=f">= {floor}", actual=str(value))
    if claims.tcb_status is not None and claims.tcb_status not in azure.accepted_tcb_statuses:
        raise TcbPolicyViolation("TDX TCB status not accepted", rule="azure.tcb_status",
                                 expected=", ".join(sorted(azure.accepted_tcb_statuses)),
                                 actual=claims.tcb_status)
    if azure.measurements is not None and claims.measurement not in azure.measurements:
        raise MeasurementMismatch("launch measurement is not accepted", rule="azure.measurements",
                                  expected=f"one of {len(azure.measurements)} values",
                                  actual=claims.measurement.hex())
    for pcr, accepted in sorted(azure.pcrs.items()):
        if claims.pcrs.get(pcr) not in accepted:
            raise MeasurementMismatch(f"vTPM PCR {pcr} is not an accepted value",
                                      rule="azure.pcrs", expected=f"one of {len(accepted)}",
                                      actual=claims.pcrs.get(pcr, b"").hex() or "absent")
    if not claims.collateral_warnings:
        return passed(policy, TRUST_VECTOR_AFFIRMING)
    if not azure.allow_missing_crl:
        raise CollateralStale("revocation list missing and the policy does not allow that",
                              rule="azure.allow_missing_crl", expected="every CRL present",
                              actual=", ".join(claims.collateral_warnings))
    return passed(policy, {**TRUST_VECTOR_AFFIRMING, "hardware": UNSAFE},
                  ("collateral incomplete (allowed by the policy): "
                   + ", ".join(claims.collateral_warnings),))
