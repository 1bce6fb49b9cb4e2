"""Appraisal of verified SEV-SNP claims against one compiled appraisal policy.

Invariants:
- Input is ``SnpClaims`` (a report whose signature and chain already verified); output is an
  ``Appraisal`` or a typed error. There is no boolean result and no partial pass: the first
  violated rule raises, with its rule name and the expected and actual values.
- Checks and categories (evidence-formats.md section 1.12 steps 8-11):
  simulator root without the insecure switch -> CHAIN_UNTRUSTED;
  debug, VMPL, migration agent, SMT (guest policy bit or platform SMT_EN) -> PLATFORM_POLICY;
  reported/committed TCB below the floor, committed != current (or > current when provisional
  firmware is allowed) -> TCB_POLICY;
  MEASUREMENT not accepted (an empty list accepts nothing), HOST_DATA not allowed, init-data
  required but absent or HOST_DATA != SHA-256(init-data) -> MEASUREMENT.
- Init-data presented by the agent is always checked against HOST_DATA, even when the policy
  does not require it: an unbound document is never passed on as if it were attested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from keybroker.errors import (
    ChainUntrusted,
    MeasurementMismatch,
    PlatformPolicyViolation,
    TcbPolicyViolation,
)
from verifier.init_data import HOST_DATA, check_init_data
from verifier.policy import AppraisalPolicy, SnpPolicy
from verifier.snp.claims import FirmwareVersion, SnpClaims
from verifier.snp.tcb import TcbVersion

AFFIRMING = "affirming"
WARNING = "warning"
TRUST_VECTOR_AFFIRMING: Mapping[str, int] = MappingProxyType({
    "instance-identity": 2,
    "configuration": 2,
    "executables": 2,
    "hardware": 2,
    "runtime-opaque": 2,
})


@dataclass(frozen=True)
class Appraisal:
    """The outcome of a passed appraisal (an EAR submod)."""

    status: str
    trust_vector: Mapping[str, int]
    policy_id: str
    policy_digest: str
    policy_name: str


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


def _check_measurement(claims: SnpClaims, snp: SnpPolicy, init_data: bytes) -> None:
    if claims.measurement not in snp.measurements:
        raise MeasurementMismatch(
            "launch MEASUREMENT is not in the accepted list", rule="snp.measurements",
            expected=f"one of {len(snp.measurements)} accepted measurements",
            actual=claims.measurement.hex())
    if snp.host_data and claims.host_data not in snp.host_data:
        raise MeasurementMismatch("HOST_DATA is not in the accepted list", rule="snp.host_data",
                                  expected=f"one of {len(snp.host_data)} accepted values",
                                  actual=claims.host_data.hex())
    check_init_data(HOST_DATA, claims.host_data, init_data, required=snp.require_init_data,
                    rule="snp.require_init_data")


def appraise_snp(
    claims: SnpClaims,
    policy: AppraisalPolicy,
    *,
    init_data: bytes = b"",
    allow_insecure_root: bool = False,
) -> Appraisal:
    """Appraise verified SNP claims against ``policy``; raise the first violated rule."""
    _check_root(claims, allow_insecure_root)
    _check_platform(claims, policy.snp)
    _check_tcb(claims, policy.snp)
    _check_measurement(claims, policy.snp, init_data)
    return Appraisal(
        status=AFFIRMING,
        trust_vector=TRUST_VECTOR_AFFIRMING,
        policy_id=policy.policy_id,
        policy_digest=policy.digest,
        policy_name=policy.name,
    )
