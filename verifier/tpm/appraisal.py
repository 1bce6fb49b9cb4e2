"""Typed appraisal of verified TPM claims against the ``tpm:`` section of one compiled
appraisal policy.

Invariants:
- Input is ``TpmClaims`` (a quote whose AK trust, signature, nonce and logs already verified);
  output is an ``Appraisal`` or the first violated rule's typed error.
- Checks and categories: a simulator root without the insecure switch, or an AK trust mode
  the policy does not accept -> CHAIN_UNTRUSTED; a required PCR the quote does not select ->
  MEASUREMENT (rule tpm.pcr-selection); a value not accepted -> MEASUREMENT (tpm.pcrs); a
  required event log absent -> EVENT_LOG; secure boot required but not proven enabled by a
  replayed PCR 7 log -> PLATFORM_POLICY; an IMA policy without an IMA log, or a measured file
  no allow rule accepts -> MEASUREMENT (tpm.ima).
- ``pcrs`` None means reference-value bindings cover the PCRs: the decision engine checks
  them, this module does not. TPM claims carry no TCB: ``tcb_debt`` is always empty.
"""

from __future__ import annotations

import fnmatch

from keybroker.errors import (
    ChainUntrusted,
    EventLogMismatch,
    MeasurementMismatch,
    PlatformPolicyViolation,
)
from verifier.tpm.claims import TpmClaims
from verifier.tpm.policy import ImaPolicy, TpmPolicy, tpm_section
from verifier.verdict import TRUST_VECTOR_AFFIRMING, Appraisal, PolicyRef, passed


def _check_trust(claims: TpmClaims, tpm: TpmPolicy, allow_insecure_root: bool) -> None:
    if claims.insecure and not allow_insecure_root:
        raise ChainUntrusted("the AK's trust ends at a simulator (insecure test) root",
                             rule="tpm.insecure_root", expected="a configured EK/AK root",
                             actual="simulator root")
    if claims.ak_trust not in tpm.ak_trust:
        raise ChainUntrusted("the AK is trusted in a way the policy does not accept",
                             rule="tpm.ak_trust", expected=" | ".join(sorted(tpm.ak_trust)),
                             actual=claims.ak_trust)


def _check_pcrs(claims: TpmClaims, tpm: TpmPolicy) -> None:
    for bank, required in (tpm.pcrs or {}).items():
        quoted = claims.pcrs.get(bank, {})
        for pcr, accepted in sorted(required.items()):
            value = quoted.get(pcr)
            if value is None:
                raise MeasurementMismatch(f"the quote does not cover {bank} PCR {pcr}, which "
                                          "the policy requires", rule="tpm.pcr-selection",
                                          expected=f"{bank} PCR {pcr} quoted",
                                          actual="not selected")
            if value not in accepted:
                raise MeasurementMismatch(f"{bank} PCR {pcr} is not an accepted value",
                                          rule="tpm.pcrs",
                                          expected=f"one of {len(accepted)} accepted values",
                                          actual=value.hex())


def _check_logs(claims: TpmClaims, tpm: TpmPolicy) -> None:
    if tpm.require_event_log and not claims.eventlog_pcrs:
        raise EventLogMismatch("the policy requires a boot event log replayed to the quote",
                               rule="tpm.require_event_log", expected="a replayed event log",
                               actual="none")
    if tpm.secure_boot and (claims.secure_boot is None or not claims.secure_boot.enabled):
        raise PlatformPolicyViolation(
            "secure boot is not proven enabled", rule="tpm.secure_boot",
            expected="SecureBoot=1 measured in a replayed PCR 7 log",
            actual="no SecureBoot measurement" if claims.secure_boot is None else "disabled")


def _check_ima(claims: TpmClaims, ima: ImaPolicy) -> None:
    if claims.ima_files is None:
        raise MeasurementMismatch("the policy has an IMA runtime policy but no IMA log was "
                                  "replayed", rule="tpm.ima", expected="an IMA log",
                                  actual="none")
    for path, digest in sorted(claims.ima_files.items()):
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in ima.exclude):
            continue
        if not any(fnmatch.fnmatchcase(path, rule.path) and digest in rule.digests
                   for rule in ima.allow):
            raise MeasurementMismatch("a measured file is not allowed by the IMA policy",
                                      rule="tpm.ima",
                                      expected="a matching allow rule (path and digest)",
                                      actual=f"{path[:200]} {digest}")


def appraise_tpm(claims: TpmClaims, policy: PolicyRef, *,
                 allow_insecure_root: bool = False) -> Appraisal:
    """Appraise verified TPM claims against ``policy``'s ``tpm`` rules (module invariants)."""
    tpm = tpm_section(policy)
    _check_trust(claims, tpm, allow_insecure_root)
    _check_pcrs(claims, tpm)
    _check_logs(claims, tpm)
    if tpm.ima is not None:
        _check_ima(claims, tpm.ima)
    return passed(policy, TRUST_VECTOR_AFFIRMING)
