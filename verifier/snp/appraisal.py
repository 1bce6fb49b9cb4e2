"""Typed appraisal of verified SEV-SNP claims against the ``snp:`` section of one compiled
appraisal policy, and the SEV-SNP TCB debt.

Invariants:
- Input is ``SnpClaims`` (a report whose signature and chain already verified); output is an
  ``Appraisal`` or a typed error. There is no boolean result and no partial pass: the first
  violated rule raises, with its rule name and the expected and actual values.
- A policy of another platform is ``Malformed`` (``snp_section``).
- Checks and categories (evidence-formats.md section 1.12 steps 8-11):
  simulator root without the insecure switch -> CHAIN_UNTRUSTED;
  debug, VMPL, migration agent, SMT (guest policy bit or platform SMT_EN) -> PLATFORM_POLICY;
  reported/committed TCB below the floor, committed != current (or > current when provisional
  firmware is allowed) -> TCB_POLICY;
  MEASUREMENT not accepted (an empty set accepts nothing), HOST_DATA not allowed ->
  MEASUREMENT; a revocation list the verification went without (``collateral_warnings``) ->
  COLLATERAL_STALE unless ``allow_missing_crl``, then a warning and hardware "unsafe".
  ``measurements`` None means a reference-value binding covers MEASUREMENT: the
  decision engine (``verifier.policy.decision``) checks it, this module does not.
- Init-data, workload rules, reference values, conditions and the TCB early warning are the
  decision engine's steps; this module is the typed, per-platform step only. ``tcb_debt``
  never changes a decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from keybroker.errors import (
    ChainUntrusted,
    CollateralStale,
    MeasurementMismatch,
    PlatformPolicyViolation,
    TcbPolicyViolation,
)
from verifier.snp.claims import FirmwareVersion, SnpClaims
from verifier.snp.policy import SnpPolicy, snp_section
from verifier.snp.tcb import TcbVersion
from verifier.tee import TcbEarlyWarning
from verifier.verdict import TRUST_VECTOR_AFFIRMING, UNSAFE, Appraisal, PolicyRef, passed


def _check_root(claims: SnpClaims, allow_insecure_root: bool) -> None:
    if claims.insecure_root and not allow_insecure_root:
        raise ChainUntrusted("evidence chains to a simulator (insecure test) root",
                             rule="snp.insecure_root", expected="a pinned AMD root",
                             actual="simulator root")


def _check_platform(claims: SnpClaims, snp: SnpPolicy) -> None:
    if claims.policy.debug and not snp.allow_debug:
        raise PlatformPolicyViolation("guest policy allows debugging", rule="snp.allow_debug",
                                      expected="DEBUG=0", actual="DEBUG=1")
    if claims.vmpl not in snp.allowed_vmpls:
        raise PlatformPolicyViolation(
            "report requested from a VMPL the policy does not allow", rule="snp.allowed_vmpls",
            expected="VMPL in " + str(sorted(snp.allowed_vmpls)), actual=f"VMPL={claims.vmpl}")
    if claims.policy.migrate_ma and not snp.allow_migration_agent:
        raise PlatformPolicyViolation("guest policy allows a migration agent",
                                      rule="snp.allow_migration_agent", expected="MIGRATE_MA=0",
                                      actual="MIGRATE_MA=1")
    if not snp.allow_smt:
        if claims.policy.smt:
            raise PlatformPolicyViolation("guest policy allows SMT", rule="snp.allow_smt",
                                          expected="policy SMT=0", actual="policy SMT=1")
        if claims.platform_info.smt_enabled:
            raise PlatformPolicyViolation("platform has SMT enabled", rule="snp.allow_smt",
                                          expected="SMT_EN=0", actual="SMT_EN=1")


def _check_floor(tcb: TcbVersion, floor: Mapping[str, int], which: str) -> None:
    below = tcb.below(floor)
    if below:
        name = below[0]
        raise TcbPolicyViolation(
            f"{which} TCB component {name} is below the policy floor",
            rule=f"snp.min_tcb.{name}", expected=f"{which} {name} >= {floor[name]}",
            actual=f"{which} {name} = {tcb.components().get(name, 0)}")


def _fw_tuple(fw: FirmwareVersion) -> tuple[int, int, int]:
    return (fw.major, fw.minor, fw.build)


def _check_tcb(claims: SnpClaims, snp: SnpPolicy) -> None:
    _check_floor(claims.reported_tcb, snp.min_tcb, "reported")
    _check_floor(claims.committed_tcb, snp.min_tcb, "committed")
    committed, current = claims.committed_tcb, claims.current_tcb
    if snp.allow_provisional_firmware:
        if not committed.le(current) or (
            _fw_tuple(claims.committed_firmware) > _fw_tuple(claims.current_firmware)
        ):
            raise TcbPolicyViolation(
                "committed TCB is above the current TCB", rule="snp.allow_provisional_firmware",
                expected=f"committed <= current ({current}; fw {claims.current_firmware})",
                actual=f"committed {committed}; fw {claims.committed_firmware}")
        return
    if committed.components() != current.components() or (
        claims.committed_firmware != claims.current_firmware
    ):
        raise TcbPolicyViolation(
            "committed TCB differs from the current TCB (provisional firmware not allowed)",
            rule="snp.allow_provisional_firmware",
            expected=f"committed == current ({current}; fw {claims.current_firmware})",
            actual=f"committed {committed}; fw {claims.committed_firmware}")


def _check_measurement(claims: SnpClaims, snp: SnpPolicy) -> None:
    if snp.measurements is not None and claims.measurement not in snp.measurements:
        raise MeasurementMismatch(
            "launch MEASUREMENT is not in the accepted list", rule="snp.measurements",
            expected=f"one of {len(snp.measurements)} accepted measurements",
            actual=claims.measurement.hex())
    if snp.host_data is not None and claims.host_data not in snp.host_data:
        raise MeasurementMismatch("HOST_DATA is not in the accepted list", rule="snp.host_data",
                                  expected=f"one of {len(snp.host_data)} accepted values",
                                  actual=claims.host_data.hex())


def appraise_snp(
    claims: SnpClaims,
    policy: PolicyRef,
    *,
    allow_insecure_root: bool = False,
) -> Appraisal:
    """Appraise verified SNP claims against ``policy``'s typed ``snp`` rules; raise the first
    violated rule (init-data and workload rules: ``verifier.policy.decision.appraise``)."""
    _check_root(claims, allow_insecure_root)
    snp = snp_section(policy)
    _check_platform(claims, snp)
    _check_tcb(claims, snp)
    _check_measurement(claims, snp)
    if not claims.collateral_warnings:
        return passed(policy, TRUST_VECTOR_AFFIRMING)
    if not snp.allow_missing_crl:
        raise CollateralStale("revocation list missing and the policy does not allow that",
                              rule="snp.allow_missing_crl", expected="the ARK CRL present",
                              actual=", ".join(claims.collateral_warnings))
    return passed(policy, {**TRUST_VECTOR_AFFIRMING, "hardware": UNSAFE},
                  ("collateral incomplete (allowed by the policy): "
                   + ", ".join(claims.collateral_warnings),))


def tcb_debt(claims: SnpClaims, warning: TcbEarlyWarning) -> tuple[str, ...]:
    """Reported / committed TCB components below the policy's next floor, as
    "reported_tcb.microcode 209 < next floor 220"."""
    floor = warning.snp_min_tcb
    out: list[str] = []
    if floor:
        for which, tcb in (("reported_tcb", claims.reported_tcb),
                           ("committed_tcb", claims.committed_tcb)):
            mine = tcb.components()
            for name in tcb.below(floor):
                out.append(f"{which}.{name} {mine.get(name, 0)} < next floor {floor[name]}")
    return tuple(out)
