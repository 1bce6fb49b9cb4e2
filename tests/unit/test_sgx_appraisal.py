"""SGX appraisal on typed claims: debug enclave and signer rules (row 41), TCB status, grace,
advisories and missing CRLs (row 39), MRENCLAVE (MEASUREMENT), trust vector and status;
init-data with SGX evidence through the decision engine."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from support.policy_docs import compiled, sgx_policy_yaml, tdx_policy_yaml, with_rules

from keybroker.errors import Category, KeybrokerError, Malformed
from verifier.dcap.appraisal import appraise_sgx
from verifier.dcap.claims import DcapTcbClaims, SgxClaims
from verifier.policy.decision import appraise
from verifier.policy.model import AppraisalPolicy
from verifier.reference.values import ReferenceSnapshot

MRENCLAVE = bytes.fromhex("5a" * 32)
MRSIGNER = bytes.fromhex("c3" * 32)
FLAGS_PRODUCTION = 0x05  # INIT | MODE64BIT
FLAGS_DEBUG = 0x07  # INIT | DEBUG | MODE64BIT
AT = datetime(2026, 3, 1, tzinfo=UTC)


def attributes(flags: int) -> bytes:
    return flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little")


def tcb(**changes: object) -> DcapTcbClaims:
    base = DcapTcbClaims(
        status="UpToDate", advisory_ids=(), tcb_date=datetime(2024, 3, 13, tzinfo=UTC),
        fmspc=bytes.fromhex("00906ed50000"), pce_id=b"\0\0", tcb_evaluation_data_number=17,
        sgx_status="UpToDate", tdx_status=None, module_status=None, qe_status="UpToDate")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def claims(**changes: object) -> SgxClaims:
    base = SgxClaims(
        version=3, cpu_svn=bytes(16), misc_select=0, attributes=attributes(FLAGS_PRODUCTION),
        mr_enclave=MRENCLAVE, mr_signer=MRSIGNER, isv_prod_id=7, isv_svn=4,
        config_id=bytes(64), config_svn=0, isv_family_id=bytes(16), isv_ext_prod_id=bytes(16),
        report_data=b"\x42" * 64, tcb=tcb(), insecure_root=False)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def policy(*, enclave: bool = True, signer: bool = True, **extra: Any) -> AppraisalPolicy:
    values: dict[str, Any] = {"mrenclave": [MRENCLAVE] if enclave else None}
    if signer:
        values.update(mrsigner=[MRSIGNER], isv_prod_id=7, min_isv_svn=4)
    values.update(extra)
    return compiled(sgx_policy_yaml("enclave", **values), version=2, source="sgx-test.yaml")


def reject(c: SgxClaims, p: AppraisalPolicy, *, at: datetime = AT) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        appraise_sgx(c, p, at=at)
    return exc.value


def test_affirming_appraisal() -> None:
    """An UpToDate production enclave matching MRENCLAVE and the signer rule is affirming."""
    result = appraise_sgx(claims(), policy(), at=AT)
    assert result.status == "affirming" and result.policy_id == "enclave@2"
    assert dict(result.trust_vector) == {"instance-identity": 2, "configuration": 2,
                                         "executables": 2, "hardware": 2,
                                         "runtime-opaque": 2}


@pytest.mark.parametrize(("enclave", "signer"), [(True, True), (True, False), (False, True)])
def test_row41_debug_enclave_always_platform_policy(enclave: bool, signer: bool) -> None:
    """ATTRIBUTES.DEBUG is PLATFORM_POLICY under every policy shape."""
    err = reject(claims(attributes=attributes(FLAGS_DEBUG)), policy(enclave=enclave,
                                                                     signer=signer))
    assert err.category is Category.PLATFORM_POLICY and err.rule == "sgx.debug"


def test_row41_wrong_signer_product_or_svn() -> None:
    """Wrong MRSIGNER, wrong ISVPRODID or ISVSVN below the floor is PLATFORM_POLICY."""
    cases = [
        (claims(mr_signer=b"\x01" * 32), "sgx.mrsigner"),
        (claims(isv_prod_id=8), "sgx.isv_prod_id"),
        (claims(isv_svn=3), "sgx.min_isv_svn"),
    ]
    for c, rule in cases:
        err = reject(c, policy(enclave=False))
        assert err.category is Category.PLATFORM_POLICY and err.rule == rule
    assert appraise_sgx(claims(isv_svn=9), policy(enclave=False), at=AT).status == "affirming"


def test_mrenclave_not_accepted_is_measurement() -> None:
    """An MRENCLAVE outside the list is MEASUREMENT; an empty list accepts nothing."""
    err = reject(claims(mr_enclave=b"\x5b" * 32), policy(signer=False))
    assert err.category is Category.MEASUREMENT and err.rule == "sgx.mrenclave"
    assert err.actual == "5b" * 32
    empty = with_rules(policy(signer=False), mrenclave=frozenset())
    assert reject(claims(), empty).category is Category.MEASUREMENT


def test_signer_rule_alone_accepts_any_enclave_of_the_product() -> None:
    """With only the signer triple, any MRENCLAVE of that signer and product passes."""
    assert appraise_sgx(claims(mr_enclave=b"\x99" * 32), policy(enclave=False), at=AT)


@pytest.mark.parametrize("status", ["OutOfDate", "SWHardeningNeeded", "ConfigurationNeeded",
                                    "Revoked"])
def test_row39_status_policy(status: str) -> None:
    """A status other than UpToDate is TCB_POLICY under the default policy."""
    err = reject(claims(tcb=tcb(status=status)), policy())
    assert err.category is Category.TCB_POLICY and err.actual == status


def test_row39_grace_and_advisories() -> None:
    """OutOfDate within the grace date is a warning; after it TCB_POLICY; advisories must
    still be allow-listed."""
    c = claims(tcb=tcb(status="OutOfDate", advisory_ids=("INTEL-SA-00615",)))
    grace = datetime(2026, 4, 1, tzinfo=UTC)
    p = policy(out_of_date_grace_until=grace, allowed_advisories=["INTEL-SA-00615"])
    result = appraise_sgx(c, p, at=AT)
    assert result.status == "warning" and result.trust_vector["hardware"] == 32
    late = reject(c, p, at=datetime(2026, 4, 1, tzinfo=UTC))
    assert late.category is Category.TCB_POLICY and late.rule == "sgx.out_of_date_grace_until"
    strict = policy(out_of_date_grace_until=grace)
    adv = reject(c, strict)
    assert adv.category is Category.TCB_POLICY and adv.rule == "sgx.allowed_advisories"


def test_missing_crl_both_ways() -> None:
    """Missing CRLs are COLLATERAL_STALE by default and a warning when the policy allows."""
    c = claims(tcb=tcb(collateral_warnings=("root-ca-crl missing",)))
    assert reject(c, policy()).category is Category.COLLATERAL_STALE
    assert appraise_sgx(c, policy(allow_missing_crl=True), at=AT).status == "warning"


def test_simulator_root_and_init_data() -> None:
    """A simulator root needs the insecure switch; init-data cannot be bound by SGX evidence."""
    assert reject(claims(insecure_root=True), policy()).category is Category.CHAIN_UNTRUSTED
    with pytest.raises(KeybrokerError) as exc:
        appraise(policy(), claims(), init_data=b"doc", at=AT, references=ReferenceSnapshot(()),
                 allow_insecure_root=False)
    err = exc.value
    assert err.category is Category.MEASUREMENT and err.rule == "sgx.init_data"


def test_policy_of_another_platform_is_malformed() -> None:
    """A TDX policy applied to SGX claims is MALFORMED naming both platforms."""
    tdx = compiled(tdx_policy_yaml("t", mrtd=["33" * 48]))
    err = reject(claims(), tdx)
    assert isinstance(err, Malformed) and (err.expected, err.actual) == ("sgx", "tdx")
