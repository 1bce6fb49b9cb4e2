"""TDX appraisal on typed claims: platform attributes (row 38), TCB status, grace and advisories
(row 39), module identity (row 40), MRTD (row 44), init-data in MRCONFIGID (row 45, through the
decision engine's workload step), runtime images (rows 46, 48), missing CRLs, trust vector and
status."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from support.policy_docs import (
    compiled,
    sgx_policy_yaml,
    snp_policy_yaml,
    tdx_policy_yaml,
    with_rules,
)

from keybroker.errors import Category, KeybrokerError, Malformed
from verifier.dcap.appraisal import appraise_tdx
from verifier.dcap.claims import DcapTcbClaims, TdAttributes, TdxClaims
from verifier.eventlog.measured import TdEventClaims
from verifier.policy.decision import appraise
from verifier.policy.model import AppraisalPolicy
from verifier.reference.values import ReferenceSnapshot

MRTD = bytes.fromhex("dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954db"
                     "a41394c7717cb2735396c1d04231f94a")
SEPT_VE_DISABLE = 1 << 28
INIT_DATA = b'[workload]\nname = "demo"\n[agent]\npolicy = "demo"\n'
IMAGE_A = "sha256:" + "a1" * 32
IMAGE_B = "sha256:" + "b2" * 32
AT = datetime(2026, 3, 1, tzinfo=UTC)


def tcb(**changes: object) -> DcapTcbClaims:
    base = DcapTcbClaims(
        status="UpToDate", advisory_ids=(), tcb_date=datetime(2024, 3, 13, tzinfo=UTC),
        fmspc=bytes.fromhex("00806f050000"), pce_id=b"\0\0", tcb_evaluation_data_number=17,
        sgx_status="UpToDate", tdx_status="UpToDate", module_status="UpToDate",
        qe_status="UpToDate")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def events(*images: str) -> TdEventClaims:
    return TdEventClaims(firmware=("00" * 48,), boot_applications=(), kernel=None, initrd=None,
                         kernel_cmdline=None, images=images, event_count=1 + len(images))


def claims(**changes: object) -> TdxClaims:
    base = TdxClaims(
        version=4, body_type=2, tee_tcb_svn=bytes.fromhex("04010700") + bytes(12),
        mr_seam=b"\x5e" * 48, mr_signer_seam=bytes(48), seam_attributes=bytes(8),
        td_attributes=TdAttributes(SEPT_VE_DISABLE), xfam=0xE7, mr_td=MRTD,
        mr_config_id=bytes(48), mr_owner=bytes(48), mr_owner_config=bytes(48),
        rtmrs=(b"\0" * 48, b"\1" * 48, b"\2" * 48, b"\3" * 48), report_data=b"\x42" * 64,
        tee_tcb_svn2=None, mr_service_td=None, tcb=tcb(), insecure_root=False, events=None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def policy(**tdx: Any) -> AppraisalPolicy:
    """A TDX policy; ``workload=`` is the workload section, the rest the ``tdx`` section."""
    workload = tdx.pop("workload", None)
    values: dict[str, Any] = {"mrtd": [MRTD.hex()]}
    values.update(tdx)
    if isinstance(values.get("out_of_date_grace_until"), str):
        values["out_of_date_grace_until"] = instant(values["out_of_date_grace_until"])
    return compiled(tdx_policy_yaml("td", workload=workload, **values), version=3,
                    source="tdx-test.yaml")


def reject(c: TdxClaims, p: AppraisalPolicy, *, at: datetime = AT) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        appraise_tdx(c, p, at=at)
    return exc.value


def reject_workload(c: TdxClaims, p: AppraisalPolicy, *, init_data: bytes = b"") -> KeybrokerError:
    """The decision engine's verdict (typed step, then the init-data workload step)."""
    with pytest.raises(KeybrokerError) as exc:
        appraise(p, c, init_data=init_data, at=AT, references=ReferenceSnapshot(()),
                 allow_insecure_root=False)
    return exc.value


def test_affirming_appraisal_names_policy_and_vector() -> None:
    """UpToDate claims matching every rule are affirming, hardware 2, approved boot only."""
    result = appraise_tdx(claims(), policy(), at=AT)
    assert result.status == "affirming"
    assert (result.policy_id, result.policy_name) == ("td@3", "td")
    assert result.policy_digest == policy().digest
    assert dict(result.trust_vector) == {"instance-identity": 2, "configuration": 2,
                                         "executables": 3, "hardware": 2,
                                         "runtime-opaque": 2}


# --- row 38: TD attributes -------------------------------------------------------------------

@pytest.mark.parametrize("switches", [{}, {"allow_perfmon": True, "allow_profiling": True,
                                           "allow_migratable": True,
                                           "require_sept_ve_disable": False}])
def test_row38_debug_td_always_platform_policy(switches: dict[str, object]) -> None:
    """A debug TD is PLATFORM_POLICY whatever the policy switches say."""
    err = reject(claims(td_attributes=TdAttributes(SEPT_VE_DISABLE | 1)), policy(**switches))
    assert err.category is Category.PLATFORM_POLICY
    assert err.rule == "tdx.debug" and err.actual == f"TDATTRIBUTES={SEPT_VE_DISABLE | 1:016x}"


@pytest.mark.parametrize("bit", [1, 2, 3, 7, 8, 15, 18, 26, 32, 40, 61])
def test_row38_reserved_attribute_bits_are_platform_policy(bit: int) -> None:
    """Any reserved or unknown TD attribute bit set is PLATFORM_POLICY."""
    err = reject(claims(td_attributes=TdAttributes(SEPT_VE_DISABLE | 1 << bit)), policy())
    assert err.category is Category.PLATFORM_POLICY and err.rule == "tdx.td_attributes"


@pytest.mark.parametrize(("bit", "switch"), [(4, "allow_profiling"), (5, "allow_profiling"),
                                             (6, "allow_profiling"), (29, "allow_migratable"),
                                             (63, "allow_perfmon")])
def test_row38_gated_attribute_bits(bit: int, switch: str) -> None:
    """Profiling, MIGRATABLE and PERFMON are refused by default and accepted when allowed."""
    c = claims(td_attributes=TdAttributes(SEPT_VE_DISABLE | 1 << bit))
    err = reject(c, policy())
    assert err.category is Category.PLATFORM_POLICY and err.rule == f"tdx.{switch}"
    assert appraise_tdx(c, policy(**{switch: True}), at=AT).status == "affirming"


def test_row38_sept_ve_disable_cleared() -> None:
    """SEPT_VE_DISABLE cleared is PLATFORM_POLICY unless the policy stops requiring it."""
    c = claims(td_attributes=TdAttributes(0))
    err = reject(c, policy())
    assert err.category is Category.PLATFORM_POLICY
    assert err.rule == "tdx.require_sept_ve_disable"
    assert appraise_tdx(c, policy(require_sept_ve_disable=False), at=AT).status == "affirming"


@pytest.mark.parametrize("bit", [16, 27, 30, 31])
def test_positive_security_features_are_accepted(bit: int) -> None:
    """ICSSD, LASS, PKS and KL are named security features, not violations."""
    c = claims(td_attributes=TdAttributes(SEPT_VE_DISABLE | 1 << bit))
    assert appraise_tdx(c, policy(), at=AT).status == "affirming"


def test_xfam_allow_list() -> None:
    """XFAM outside allowed_xfam is PLATFORM_POLICY; without the key XFAM is not checked."""
    err = reject(claims(xfam=0x602E7), policy(allowed_xfam=["e7"]))
    assert err.category is Category.PLATFORM_POLICY and err.rule == "tdx.allowed_xfam"
    assert err.actual == "XFAM=00000000000602e7"
    assert appraise_tdx(claims(xfam=0x602E7), policy(allowed_xfam=["e7", 0x602E7]), at=AT)
    assert appraise_tdx(claims(xfam=0x602E7), policy(), at=AT)


# --- row 39: TCB status, advisories, grace -----------------------------------------------------

@pytest.mark.parametrize("status", ["OutOfDate", "ConfigurationNeeded", "SWHardeningNeeded",
                                    "ConfigurationAndSWHardeningNeeded",
                                    "OutOfDateConfigurationNeeded", "Revoked"])
def test_row39_status_not_accepted_is_tcb_policy(status: str) -> None:
    """Any status other than UpToDate is TCB_POLICY under the default policy."""
    err = reject(claims(tcb=tcb(status=status)), policy())
    assert err.category is Category.TCB_POLICY
    assert err.actual == status


def test_row39_revoked_refused_even_if_listed_elsewhere() -> None:
    """Revoked is TCB_POLICY even with every other status accepted and a grace date."""
    p = policy(accepted_tcb_statuses=["UpToDate", "OutOfDate", "SWHardeningNeeded"],
               out_of_date_grace_until="2099-01-01T00:00:00Z")
    err = reject(claims(tcb=tcb(status="Revoked")), p)
    assert err.category is Category.TCB_POLICY and err.rule == "tdx.tcb_status"


def test_accepted_non_uptodate_status_is_a_warning() -> None:
    """An explicitly accepted SWHardeningNeeded passes with status warning and hardware 32."""
    p = policy(accepted_tcb_statuses=["UpToDate", "SWHardeningNeeded"])
    result = appraise_tdx(claims(tcb=tcb(status="SWHardeningNeeded")), p, at=AT)
    assert result.status == "warning"
    assert result.trust_vector["hardware"] == 32 and result.trust_vector["configuration"] == 2


def test_configuration_needed_marks_configuration() -> None:
    """An accepted ConfigurationNeeded status puts configuration in the warning tier."""
    p = policy(accepted_tcb_statuses=["ConfigurationNeeded"])
    result = appraise_tdx(claims(tcb=tcb(status="ConfigurationNeeded")), p, at=AT)
    assert result.status == "warning" and result.trust_vector["configuration"] == 32


@pytest.mark.parametrize("status", ["OutOfDate", "OutOfDateConfigurationNeeded"])
def test_row39_grace_date_both_sides(status: str) -> None:
    """OutOfDate passes (warning) strictly before the grace date and is TCB_POLICY from it on,
    naming the date."""
    p = policy(out_of_date_grace_until="2026-06-30T00:00:00Z")
    c = claims(tcb=tcb(status=status))
    before = appraise_tdx(c, p, at=datetime(2026, 6, 29, 23, 59, 59, tzinfo=UTC))
    assert before.status == "warning" and before.trust_vector["hardware"] == 32
    for at in (datetime(2026, 6, 30, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)):
        err = reject(c, p, at=at)
        assert err.category is Category.TCB_POLICY
        assert err.rule == "tdx.out_of_date_grace_until"
        assert "2026-06-30T00:00:00Z" in err.reason and "2026-06-30T00:00:00Z" in err.expected


def test_grace_does_not_cover_other_statuses() -> None:
    """The grace date applies to OutOfDate only, never to ConfigurationNeeded."""
    p = policy(out_of_date_grace_until="2099-01-01T00:00:00Z")
    err = reject(claims(tcb=tcb(status="ConfigurationNeeded")), p)
    assert err.category is Category.TCB_POLICY and err.rule == "tdx.accepted_tcb_statuses"


def test_grace_compares_instants_across_time_zones() -> None:
    """A grace date with an offset is compared as an instant with an aware time."""
    p = policy(out_of_date_grace_until="2026-06-30T02:00:00+02:00")
    c = claims(tcb=tcb(status="OutOfDate"))
    assert appraise_tdx(c, p, at=datetime(2026, 6, 29, 23, 59, tzinfo=UTC)).status == "warning"
    assert reject(c, p, at=datetime(2026, 6, 30, 0, 0, tzinfo=UTC)).category is \
        Category.TCB_POLICY


def test_row39_advisory_allow_list() -> None:
    """Advisory ids must all be allow-listed, also during the grace period."""
    c = claims(tcb=tcb(status="OutOfDate", advisory_ids=("INTEL-SA-00837", "INTEL-SA-00960")))
    p = policy(out_of_date_grace_until="2099-01-01T00:00:00Z",
               allowed_advisories=["INTEL-SA-00837"])
    err = reject(c, p)
    assert err.category is Category.TCB_POLICY and err.rule == "tdx.allowed_advisories"
    assert err.actual == "INTEL-SA-00960"
    ok = policy(out_of_date_grace_until="2099-01-01T00:00:00Z",
                allowed_advisories=["INTEL-SA-00837", "INTEL-SA-00960"])
    assert appraise_tdx(c, ok, at=AT).status == "warning"
    uptodate = claims(tcb=tcb(advisory_ids=("INTEL-SA-00837",)))
    assert reject(uptodate, policy()).category is Category.TCB_POLICY


def test_missing_crl_refused_unless_allowed() -> None:
    """Collateral warnings (missing CRLs) are COLLATERAL_STALE by default, a warning if allowed."""
    c = claims(tcb=tcb(collateral_warnings=("pck-crl missing",)))
    err = reject(c, policy())
    assert err.category is Category.COLLATERAL_STALE
    assert err.rule == "tdx.allow_missing_crl" and err.actual == "pck-crl missing"
    result = appraise_tdx(c, policy(allow_missing_crl=True), at=AT)
    assert result.status == "warning" and result.trust_vector["hardware"] == 32


# --- row 40: module identity ---------------------------------------------------------------------

def test_row40_module_identity_sets() -> None:
    """MRSEAM / MRSIGNERSEAM outside the policy's module sets is TCB_POLICY."""
    err = reject(claims(), policy(mrsignerseam=["01" * 48]))
    assert err.category is Category.TCB_POLICY and err.rule == "tdx.mrsignerseam"
    err = reject(claims(), policy(mrseam=["01" * 48]))
    assert err.category is Category.TCB_POLICY and err.rule == "tdx.mrseam"
    assert appraise_tdx(claims(), policy(mrseam=["5e" * 48], mrsignerseam=["00" * 48]), at=AT)


# --- rows 44, 45: MRTD, registers, init-data ---------------------------------------------------

@pytest.mark.parametrize("index", [0, 13, 47])
def test_row44_mrtd_bit_changed_is_measurement(index: int) -> None:
    """One bit changed in MRTD is MEASUREMENT with the actual value."""
    changed = bytearray(MRTD)
    changed[index] ^= 0x01
    err = reject(claims(mr_td=bytes(changed)), policy())
    assert err.category is Category.MEASUREMENT and err.rule == "tdx.mrtd"
    assert err.actual == bytes(changed).hex()


def test_empty_mrtd_list_accepts_nothing() -> None:
    """A compiled empty set fails closed for MRTD, every RTMR and the module registers; None
    (absent in the document) is not checked."""
    assert reject(claims(), with_rules(policy(), mrtd=frozenset())).category is \
        Category.MEASUREMENT
    for i in range(4):
        rtmrs = tuple(frozenset() if j == i else None for j in range(4))
        err = reject(claims(), with_rules(policy(), rtmrs=rtmrs))
        assert (err.category, err.rule) == (Category.MEASUREMENT, f"tdx.rtmr{i}")
    for key in ("mrowner", "mrownerconfig"):
        err = reject(claims(), with_rules(policy(), **{key: frozenset()}))
        assert (err.category, err.rule) == (Category.MEASUREMENT, f"tdx.{key}")
    for key in ("mrseam", "mrsignerseam"):
        err = reject(claims(), with_rules(policy(), **{key: frozenset()}))
        assert (err.category, err.rule) == (Category.TCB_POLICY, f"tdx.{key}")
    assert appraise_tdx(claims(), policy(), at=AT).status == "affirming"


@pytest.mark.parametrize("key", ["rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrowner", "mrownerconfig"])
def test_register_reference_sets(key: str) -> None:
    """A register outside its non-empty reference set is MEASUREMENT naming the rule."""
    err = reject(claims(), policy(**{key: ["ee" * 48]}))
    assert err.category is Category.MEASUREMENT and err.rule == f"tdx.{key}"


def test_register_reference_sets_match() -> None:
    """Matching RTMR sets pass; a pinned RTMR3 counts as an appraised runtime."""
    p = policy(rtmr0=["00" * 48], rtmr1=["01" * 48], rtmr2=["02" * 48], rtmr3=["03" * 48],
               mrowner=["00" * 48], mrownerconfig=["00" * 48])
    assert appraise_tdx(claims(), p, at=AT).trust_vector["executables"] == 2


def test_row45_init_data_bound_in_mrconfigid() -> None:
    """MRCONFIGID = SHA-384(init-data) passes; required init-data absent is MEASUREMENT."""
    bound = claims(mr_config_id=hashlib.sha384(INIT_DATA).digest())
    p = policy(workload={"require_init_data": True})
    result, workload = appraise(p, bound, init_data=INIT_DATA, at=AT,
                                references=ReferenceSnapshot(()), allow_insecure_root=False)
    assert result.status == "affirming"
    assert (workload.init_data_register, workload.agent_policy) == ("MRCONFIGID", "demo")
    err = reject_workload(bound, p)
    assert err.category is Category.MEASUREMENT and err.actual == "no init-data"


@pytest.mark.parametrize("mrconfigid", [bytes(48), hashlib.sha384(b"other policy").digest(),
                                        hashlib.sha256(INIT_DATA).digest() + bytes(16)])
@pytest.mark.parametrize("required", [True, False])
def test_row45_mrconfigid_zero_or_other_hash(mrconfigid: bytes, required: bool) -> None:
    """Presented init-data is always checked: zero or another hash in MRCONFIGID is
    MEASUREMENT, whether or not the policy requires init-data."""
    err = reject_workload(claims(mr_config_id=mrconfigid),
                          policy(workload={"require_init_data": required}), init_data=INIT_DATA)
    assert err.category is Category.MEASUREMENT and err.rule == "workload.require_init_data"
    assert err.actual == f"MRCONFIGID = {mrconfigid.hex()}"


# --- rows 46, 48: runtime images -----------------------------------------------------------------

def test_row46_required_image_without_event_log() -> None:
    """A required image with no replayed runtime log (RTMR3 empty) is MEASUREMENT."""
    c = claims(rtmrs=(b"\0" * 48, b"\1" * 48, b"\2" * 48, bytes(48)), events=None)
    err = reject(c, policy(required_images=[IMAGE_A]))
    assert err.category is Category.MEASUREMENT and err.rule == "tdx.required_images"
    assert bytes(48).hex() in err.actual


def test_row46_required_image_not_in_replayed_log() -> None:
    """A replayed log that lacks a required image is MEASUREMENT naming the missing image."""
    err = reject(claims(events=events(IMAGE_B)), policy(required_images=[IMAGE_A, IMAGE_B]))
    assert err.category is Category.MEASUREMENT and err.expected == IMAGE_A
    err = reject(claims(events=events()), policy(required_images=[IMAGE_A]))
    assert err.category is Category.MEASUREMENT and err.actual == "measured: none"


def test_required_images_present_affirm_the_runtime() -> None:
    """All required images replayed: affirming with executables 2 (runtime appraised)."""
    result = appraise_tdx(claims(events=events(IMAGE_B, IMAGE_A)),
                          policy(required_images=[IMAGE_A]), at=AT)
    assert result.status == "affirming" and result.trust_vector["executables"] == 2


def test_row48_measured_image_not_allowed() -> None:
    """A correctly replayed but not allow-listed image is MEASUREMENT (row 48)."""
    p = policy(required_images=[IMAGE_A], allowed_images=[IMAGE_A])
    err = reject(claims(events=events(IMAGE_A, IMAGE_B)), p)
    assert err.category is Category.MEASUREMENT and err.rule == "tdx.allowed_images"
    assert err.actual == IMAGE_B
    nothing = with_rules(policy(), allowed_images=frozenset())
    err = reject(claims(events=events(IMAGE_A)), nothing)
    assert err.category is Category.MEASUREMENT
    assert appraise_tdx(claims(events=events()), nothing, at=AT)


# --- roots, platform of the policy, time --------------------------------------------------------

def test_simulator_root_needs_the_insecure_switch() -> None:
    """Claims from a simulator root are CHAIN_UNTRUSTED unless explicitly allowed."""
    c = claims(insecure_root=True)
    assert reject(c, policy()).category is Category.CHAIN_UNTRUSTED
    assert appraise_tdx(c, policy(), at=AT, allow_insecure_root=True).status == "affirming"


def test_policy_of_another_platform_is_malformed() -> None:
    """An SNP or SGX policy applied to TDX claims is MALFORMED naming both platforms."""
    snp = compiled(snp_policy_yaml("s", measurements=["11" * 48], min_tcb={}))
    sgx = compiled(sgx_policy_yaml("e", mrenclave=["22" * 32]))
    for other, platform in ((snp, "sev-snp"), (sgx, "sgx")):
        err = reject(claims(), other)
        assert isinstance(err, Malformed)
        assert (err.expected, err.actual) == ("tdx", platform)


def test_naive_time_is_refused() -> None:
    """The appraisal time must be timezone-aware (no silent local-time interpretation)."""
    err = reject(claims(), policy(), at=datetime(2026, 1, 1))
    assert err.category is Category.MALFORMED
