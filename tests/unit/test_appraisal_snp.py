"""appraise_snp on typed claims: hostile-evidence rows 34-37, 44 and the affirming path; row 45
(init-data bound by HOST_DATA) through the decision engine's workload step."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from support.paths import ROOT
from support.policy_docs import compiled, snp_policy_yaml, with_rules

from keybroker.errors import (
    Category,
    ChainUntrusted,
    KeybrokerError,
    MeasurementMismatch,
    PlatformPolicyViolation,
    TcbPolicyViolation,
)
from verifier.policy.compile import load_policy
from verifier.policy.decision import appraise
from verifier.policy.model import AppraisalPolicy
from verifier.reference.values import ReferenceSnapshot
from verifier.snp.appraisal import appraise_snp
from verifier.snp.claims import FirmwareVersion, GuestPolicy, PlatformInfo, SnpClaims
from verifier.snp.tcb import TcbVersion
from verifier.verdict import TRUST_VECTOR_AFFIRMING

MEASUREMENT = bytes.fromhex("5a" * 48)
INIT_DATA = b'[workload]\nname = "demo"\nimages = ["sha256:' + b"0" * 64 + b'"]\n'
AT = datetime(2026, 3, 1, tzinfo=UTC)
HOST_DATA = hashlib.sha256(INIT_DATA).digest()


def milan_tcb(bootloader: int = 4, tee: int = 0, snp: int = 22, microcode: int = 213) -> TcbVersion:
    return TcbVersion.decode(bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode]), "Milan")


def make_claims(**changes: object) -> SnpClaims:
    tcb = milan_tcb()
    claims = SnpClaims(
        version=3, product="Milan", signing_key="vcek", measurement=MEASUREMENT,
        host_data=HOST_DATA, report_data=b"\x11" * 64, family_id=b"\0" * 16,
        image_id=b"\0" * 16, guest_svn=0, policy=GuestPolicy(0x30000), vmpl=0,
        platform_info=PlatformInfo(0x1), reported_tcb=tcb, committed_tcb=tcb, current_tcb=tcb,
        launch_tcb=tcb, chip_id=b"\x42" * 64, id_key_digest=b"\0" * 48,
        author_key_digest=b"\0" * 48, author_key_en=False, report_id=b"\1" * 32,
        report_id_ma=b"\xff" * 32, current_firmware=FirmwareVersion(1, 55, 21),
        committed_firmware=FirmwareVersion(1, 55, 21), launch_mit_vector=None,
        current_mit_vector=None, cpuid=(0x19, 0x01, 0x01), csp_id=None,
        signer_fingerprint="00" * 32, insecure_root=False,
    )
    return dataclasses.replace(claims, **changes)  # type: ignore[arg-type]


def make_policy(*, workload: dict[str, Any] | None = None, **snp: Any) -> AppraisalPolicy:
    values: dict[str, Any] = {
        "measurements": [MEASUREMENT.hex()],
        "min_tcb": {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213},
        "allow_smt": True,
    }
    values.update(snp)
    return compiled(snp_policy_yaml("t", workload=workload, **values), version=7)


def reject(claims: SnpClaims, policy: AppraisalPolicy) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        appraise_snp(claims, policy)
    return exc.value


def reject_workload(claims: SnpClaims, policy: AppraisalPolicy,
                    init_data: bytes = b"") -> KeybrokerError:
    """The decision engine's verdict (typed step, then the init-data workload step)."""
    with pytest.raises(KeybrokerError) as exc:
        appraise(policy, claims, init_data=init_data, at=AT, references=ReferenceSnapshot(()),
                 allow_insecure_root=False)
    return exc.value


def test_affirming_appraisal() -> None:
    """Claims that satisfy every rule give an affirming appraisal naming the policy."""
    policy = make_policy()
    result = appraise_snp(make_claims(), policy)
    assert result.status == "affirming"
    assert dict(result.trust_vector) == dict(TRUST_VECTOR_AFFIRMING)
    assert result.policy_id == "t@7"
    assert result.policy_name == "t"
    assert result.policy_digest == policy.digest


def test_row34_debug_policy_is_platform_policy() -> None:
    """Row 34: guest policy DEBUG (bit 19) set is PLATFORM_POLICY unless allowed."""
    claims = make_claims(policy=GuestPolicy(0x30000 | 1 << 19))
    err = reject(claims, make_policy())
    assert err.category is Category.PLATFORM_POLICY
    assert (err.rule, err.expected, err.actual) == ("snp.allow_debug", "DEBUG=0", "DEBUG=1")
    assert appraise_snp(claims, make_policy(allow_debug=True)).status == "affirming"


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_row35_vmpl_not_allowed_is_platform_policy(vmpl: int) -> None:
    """Row 35: a report from VMPL 1-3 is PLATFORM_POLICY when the policy allows only VMPL 0."""
    err = reject(make_claims(vmpl=vmpl), make_policy())
    assert isinstance(err, PlatformPolicyViolation)
    assert err.category is Category.PLATFORM_POLICY
    assert err.actual == f"VMPL={vmpl}" and "[0]" in err.expected


def test_row35_vmpl_explicitly_allowed() -> None:
    """Row 35 control: a VMPL listed in allowed_vmpls passes."""
    assert appraise_snp(make_claims(vmpl=2), make_policy(allowed_vmpls=[0, 2])).status == \
        "affirming"


def test_row36_migration_agent_is_platform_policy() -> None:
    """Row 36: MIGRATE_MA (bit 18) set is PLATFORM_POLICY unless the policy allows it."""
    claims = make_claims(policy=GuestPolicy(0x30000 | 1 << 18))
    err = reject(claims, make_policy())
    assert err.category is Category.PLATFORM_POLICY
    assert err.rule == "snp.allow_migration_agent"
    assert appraise_snp(claims, make_policy(allow_migration_agent=True)).status == "affirming"


def test_row36_smt_policy_bit_forbidden() -> None:
    """Row 36: guest policy SMT bit set is PLATFORM_POLICY when allow_smt = false."""
    claims = make_claims(platform_info=PlatformInfo(0))
    err = reject(claims, make_policy(allow_smt=False))
    assert err.category is Category.PLATFORM_POLICY
    assert err.actual == "policy SMT=1"


def test_row36_platform_smt_enabled_forbidden() -> None:
    """Row 36: platform SMT_EN set is PLATFORM_POLICY when allow_smt = false."""
    claims = make_claims(policy=GuestPolicy(0x20000), platform_info=PlatformInfo(0x1))
    err = reject(claims, make_policy(allow_smt=False))
    assert err.category is Category.PLATFORM_POLICY
    assert err.actual == "SMT_EN=1"
    no_smt = make_claims(policy=GuestPolicy(0x20000), platform_info=PlatformInfo(0))
    assert appraise_snp(no_smt, make_policy(allow_smt=False)).status == "affirming"


@pytest.mark.parametrize(("component", "low"), [("microcode", 212), ("snp", 21),
                                                 ("bootloader", 3)])
def test_row37_reported_tcb_below_floor(component: str, low: int) -> None:
    """Row 37: a REPORTED_TCB component below the floor is TCB_POLICY naming the component."""
    tcb = milan_tcb(**{component: low})
    err = reject(make_claims(reported_tcb=tcb), make_policy())
    assert isinstance(err, TcbPolicyViolation)
    assert err.category is Category.TCB_POLICY
    assert err.rule == f"snp.min_tcb.{component}"
    assert component in err.expected and component in err.actual
    assert str(low) in err.actual


def test_row37_committed_tcb_below_floor() -> None:
    """Row 37: a COMMITTED_TCB below the floor is TCB_POLICY even if provisional is allowed."""
    claims = make_claims(committed_tcb=milan_tcb(snp=20))
    err = reject(claims, make_policy(allow_provisional_firmware=True))
    assert err.category is Category.TCB_POLICY
    assert "committed snp" in err.actual


def test_row37_committed_below_current_without_provisional() -> None:
    """Row 37: COMMITTED < CURRENT is TCB_POLICY unless provisional firmware is allowed."""
    claims = make_claims(committed_tcb=milan_tcb(snp=22), current_tcb=milan_tcb(snp=23))
    err = reject(claims, make_policy())
    assert err.category is Category.TCB_POLICY
    assert err.rule == "snp.allow_provisional_firmware"
    assert appraise_snp(claims, make_policy(allow_provisional_firmware=True)).status == \
        "affirming"


def test_row37_committed_firmware_differs_without_provisional() -> None:
    """Row 37: COMMITTED firmware version != CURRENT is TCB_POLICY without provisional."""
    claims = make_claims(committed_firmware=FirmwareVersion(1, 55, 20))
    assert reject(claims, make_policy()).category is Category.TCB_POLICY


def test_row37_committed_above_current_with_provisional() -> None:
    """Row 37: with provisional allowed, COMMITTED > CURRENT is still TCB_POLICY."""
    claims = make_claims(committed_tcb=milan_tcb(snp=24), current_tcb=milan_tcb(snp=23))
    err = reject(claims, make_policy(allow_provisional_firmware=True))
    assert err.category is Category.TCB_POLICY


@pytest.mark.parametrize("bit", [0, 100, 383])
def test_row44_measurement_one_bit_off(bit: int) -> None:
    """Row 44: MEASUREMENT with one bit flipped is MEASUREMENT with the actual value."""
    flipped = bytearray(MEASUREMENT)
    flipped[bit // 8] ^= 1 << (bit % 8)
    err = reject(make_claims(measurement=bytes(flipped)), make_policy())
    assert isinstance(err, MeasurementMismatch)
    assert err.category is Category.MEASUREMENT
    assert err.actual == bytes(flipped).hex()


def test_empty_measurement_list_matches_nothing() -> None:
    """A compiled empty measurement set rejects every report (MEASUREMENT); so does an empty
    HOST_DATA set, while an absent one (None) is not checked."""
    policy = make_policy()
    empty = with_rules(policy, measurements=frozenset())
    assert reject(make_claims(), empty).category is Category.MEASUREMENT
    err = reject(make_claims(), with_rules(policy, host_data=frozenset()))
    assert (err.category, err.rule) == (Category.MEASUREMENT, "snp.host_data")


REQUIRED = {"require_init_data": True}


def test_row45_zero_host_data_with_required_init_data() -> None:
    """Row 45: HOST_DATA all zero while init-data is required is MEASUREMENT."""
    claims = make_claims(host_data=b"\0" * 32)
    err = reject_workload(claims, make_policy(workload=REQUIRED), init_data=INIT_DATA)
    assert err.category is Category.MEASUREMENT
    assert err.rule == "workload.require_init_data"
    assert err.expected == f"HOST_DATA = {HOST_DATA.hex()}"
    assert err.actual == f"HOST_DATA = {'00' * 32}"


def test_row45_different_init_data() -> None:
    """Row 45: init-data whose SHA-256 differs from HOST_DATA is MEASUREMENT."""
    err = reject_workload(make_claims(), make_policy(workload=REQUIRED),
                          init_data=INIT_DATA.replace(b"0", b"1", 1))
    assert err.category is Category.MEASUREMENT


def test_row45_required_init_data_missing() -> None:
    """Row 45: require_init_data without init-data presented is MEASUREMENT."""
    err = reject_workload(make_claims(), make_policy(workload=REQUIRED))
    assert err.category is Category.MEASUREMENT
    assert err.actual == "no init-data"


def test_row45_matching_init_data_affirms() -> None:
    """Row 45 control: HOST_DATA == SHA-256(init-data) passes a policy requiring it."""
    result, workload = appraise(make_policy(workload=REQUIRED), make_claims(),
                                init_data=INIT_DATA, at=AT, references=ReferenceSnapshot(()),
                                allow_insecure_root=False)
    assert result.status == "affirming"
    assert workload.name == "demo" and workload.init_data_register == "HOST_DATA"


def test_presented_init_data_checked_even_if_not_required() -> None:
    """Init-data that HOST_DATA does not commit to is MEASUREMENT even without the requirement."""
    err = reject_workload(make_claims(host_data=b"\0" * 32), make_policy(), init_data=INIT_DATA)
    assert err.category is Category.MEASUREMENT


def test_host_data_allow_list() -> None:
    """HOST_DATA outside a non-empty allow-list is MEASUREMENT; inside passes."""
    policy = make_policy(host_data=["ee" * 32])
    assert reject(make_claims(), policy).category is Category.MEASUREMENT
    assert appraise_snp(make_claims(host_data=b"\xee" * 32), policy).status == "affirming"


def test_simulator_root_needs_insecure_switch() -> None:
    """Claims from a simulator root are CHAIN_UNTRUSTED unless the insecure switch is given."""
    claims = make_claims(insecure_root=True)
    with pytest.raises(ChainUntrusted) as exc:
        appraise_snp(claims, make_policy())
    assert exc.value.category is Category.CHAIN_UNTRUSTED
    assert appraise_snp(claims, make_policy(), allow_insecure_root=True).status == "affirming"


def test_example_policy_rejects_unknown_measurement() -> None:
    """The shipped demo policy does not accept an arbitrary measurement."""
    demo = load_policy(ROOT / "config/policies/snp-demo.yaml")
    assert reject(make_claims(), demo).category is Category.MEASUREMENT
