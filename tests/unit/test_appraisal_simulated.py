"""Hostile-evidence rows 34-37, 44, 45 end to end: simulator report -> SnpVerifier -> the decision
engine (``verifier.policy.decision.appraise``).

Each hostile report is built by the SNP simulator (or mutated and re-signed with the test VCEK),
so the signature and chain verify and the named appraisal rule must be what rejects it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.policy_docs import compiled, snp_policy_yaml

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_report import POLICY_DEBUG, POLICY_MIGRATE_MA, SnpReport
from verifier.collateral.cache import CollateralStore
from verifier.policy.decision import appraise
from verifier.policy.model import AppraisalPolicy
from verifier.reference.values import ReferenceSnapshot
from verifier.snp.claims import SnpClaims
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier
from verifier.verdict import Appraisal

MEASUREMENT = hashlib.sha384(b"simulated guest firmware").digest()
INIT_DATA = b'[workload]\nname = "demo"\nimages = ["sha256:' + b"a" * 64 + b'"]\n'
HOST_DATA = hashlib.sha256(INIT_DATA).digest()
REPORT_DATA = hashlib.sha512(b"report data").digest()
NOW = datetime(2025, 6, 1, tzinfo=UTC)
# Milan simulator default TCB: bootloader 3, tee 0, snp 8, microcode 115 (0x73).
FLOOR = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def policy(*, workload: dict[str, Any] | None = None, **snp: Any) -> AppraisalPolicy:
    values: dict[str, Any] = {"measurements": [MEASUREMENT], "min_tcb": FLOOR, "allow_smt": True}
    values.update(snp)
    return compiled(snp_policy_yaml("sim", workload=workload, **values), version=1,
                    source="sim-policy.yaml")


def appraise_snp(claims: SnpClaims, pol: AppraisalPolicy, *, init_data: bytes = b"",
                 allow_insecure_root: bool = False) -> Appraisal:
    """The decision engine's appraisal (no reference values loaded)."""
    return appraise(pol, claims, init_data=init_data, at=NOW, references=ReferenceSnapshot(()),
                    allow_insecure_root=allow_insecure_root)[0]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnpTestCa, Path]:
    directory = tmp_path_factory.mktemp("simca")
    test_ca = SnpTestCa.generate("Milan")
    test_ca.save(directory)
    test_ca.write_collateral(directory / "collateral", now=NOW)
    return test_ca, directory / "ark.pem"


@pytest.fixture(scope="module")
def verifier(ca: tuple[SnpTestCa, Path]) -> SnpVerifier:
    trust = AmdTrustStore.pinned().with_simulator_roots([ca[1]])
    return SnpVerifier(trust, CollateralStore.load([ca[1].parent / "collateral"]))


@pytest.fixture(scope="module")
def sim(ca: tuple[SnpTestCa, Path]) -> SnpSimulator:
    return SnpSimulator(ca[0], measurement=MEASUREMENT, host_data=HOST_DATA)


def verified(verifier: SnpVerifier, sim: SnpSimulator, report: SnpReport | None = None
             ) -> SnpClaims:
    """Sign (or re-sign) ``report`` with the test VCEK and verify it for real."""
    raw = sim.sign(report if report is not None else sim.report(REPORT_DATA))
    return verifier.verify(raw, sim.cert_table(), at=NOW)


def rejected(claims: SnpClaims, pol: AppraisalPolicy, init_data: bytes = b"") -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        appraise_snp(claims, pol, init_data=init_data, allow_insecure_root=True)
    return exc.value


def test_genuine_simulated_report_affirms(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """The untouched simulator report passes the strict-ish policy with init-data."""
    claims = verified(verifier, sim)
    assert claims.insecure_root
    result = appraise_snp(claims, policy(workload={"require_init_data": True}),
                          init_data=INIT_DATA, allow_insecure_root=True)
    assert result.status == "affirming"


def test_simulated_report_needs_insecure_switch(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """A simulator-rooted report is CHAIN_UNTRUSTED when the service is not insecure."""
    with pytest.raises(KeybrokerError) as exc:
        appraise_snp(verified(verifier, sim), policy())
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_row34_debug_resigned(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """Row 34: policy bit 19 set and re-signed is PLATFORM_POLICY."""
    report = sim.report(REPORT_DATA)
    claims = verified(verifier, sim, report.with_changes(policy=report.policy | POLICY_DEBUG))
    assert rejected(claims, policy()).category is Category.PLATFORM_POLICY


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_row35_vmpl(verifier: SnpVerifier, sim: SnpSimulator, vmpl: int) -> None:
    """Row 35: a report from VMPL 1-3 is PLATFORM_POLICY."""
    claims = verified(verifier, sim, sim.report(REPORT_DATA).with_changes(vmpl=vmpl))
    err = rejected(claims, policy())
    assert err.category is Category.PLATFORM_POLICY
    assert err.actual == f"VMPL={vmpl}"


def test_row36_migration_agent(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """Row 36: MIGRATE_MA (bit 18) set is PLATFORM_POLICY."""
    report = sim.report(REPORT_DATA)
    claims = verified(verifier, sim, report.with_changes(policy=report.policy | POLICY_MIGRATE_MA))
    assert rejected(claims, policy()).category is Category.PLATFORM_POLICY


def test_row36_smt_forbidden(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """Row 36: SMT allowed by the guest policy / enabled on the platform, policy forbids SMT."""
    claims = verified(verifier, sim)
    assert claims.policy.smt and claims.platform_info.smt_enabled
    err = rejected(claims, policy(allow_smt=False))
    assert err.category is Category.PLATFORM_POLICY and err.rule == "snp.allow_smt"


def test_row37_reported_tcb_below_floor(ca: tuple[SnpTestCa, Path],
                                        verifier: SnpVerifier) -> None:
    """Row 37: REPORTED_TCB microcode below the floor (VCEK issued for that TCB) is TCB_POLICY."""
    old = SnpSimulator(ca[0], measurement=MEASUREMENT, host_data=HOST_DATA,
                       reported_tcb=bytes.fromhex("0300000000000870"))
    err = rejected(verified(verifier, old), policy())
    assert err.category is Category.TCB_POLICY
    assert err.rule == "snp.min_tcb.microcode"
    assert err.expected == "reported microcode >= 115" and err.actual == "reported microcode = 112"


def test_row37_committed_below_current(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """Row 37: COMMITTED_TCB < CURRENT_TCB without provisional firmware allowed is TCB_POLICY."""
    report = sim.report(REPORT_DATA).with_changes(
        current_tcb=bytes.fromhex("0300000000000973"))
    claims = verified(verifier, sim, report)
    err = rejected(claims, policy())
    assert err.category is Category.TCB_POLICY
    assert err.rule == "snp.allow_provisional_firmware"
    assert appraise_snp(claims, policy(allow_provisional_firmware=True),
                        allow_insecure_root=True).status == "affirming"


def test_row44_measurement_one_bit(verifier: SnpVerifier, sim: SnpSimulator) -> None:
    """Row 44: one bit changed in MEASUREMENT and re-signed is MEASUREMENT."""
    flipped = bytes([MEASUREMENT[0] ^ 0x80]) + MEASUREMENT[1:]
    claims = verified(verifier, sim, sim.report(REPORT_DATA).with_changes(measurement=flipped))
    err = rejected(claims, policy())
    assert err.category is Category.MEASUREMENT and err.actual == flipped.hex()


@pytest.mark.parametrize("host_data", [bytes(32), hashlib.sha256(b"other policy").digest()])
def test_row45_host_data_zero_or_different(verifier: SnpVerifier, sim: SnpSimulator,
                                          host_data: bytes) -> None:
    """Row 45: HOST_DATA zero or of a different init-data document is MEASUREMENT."""
    claims = verified(verifier, sim, sim.report(REPORT_DATA).with_changes(host_data=host_data))
    err = rejected(claims, policy(workload={"require_init_data": True}), init_data=INIT_DATA)
    assert err.category is Category.MEASUREMENT and err.rule == "workload.require_init_data"
    assert err.actual == f"HOST_DATA = {host_data.hex()}"


def test_missing_crl_is_refused_unless_the_policy_allows_it(
        ca: tuple[SnpTestCa, Path], sim: SnpSimulator) -> None:
    """Verified the way the service does (missing CRL reported, not raised), a report without
    the ARK CRL is COLLATERAL_STALE under a default policy and "warning" (hardware unsafe,
    the CRL named) under one with ``allow_missing_crl: true``."""
    bare = SnpVerifier(AmdTrustStore.pinned().with_simulator_roots([ca[1]]),
                       CollateralStore.empty())
    claims = bare.verify(sim.sign(sim.report(REPORT_DATA)), sim.cert_table(), at=NOW,
                         allow_missing_crl=True)
    assert claims.collateral_warnings == ("ARK-Milan CRL missing",)
    err = rejected(claims, policy())
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "snp.allow_missing_crl")
    result = appraise_snp(claims, policy(allow_missing_crl=True), allow_insecure_root=True)
    assert result.status == "warning" and result.trust_vector["hardware"] == 32
    assert any("ARK-Milan CRL missing" in w for w in result.warnings)
