"""The decision engine: every step in order, every category, workload claims, reference
bindings (deprecated, expired, staged, empty), CEL conditions, TCB early warning, and the same
decision on recorded claims (appraise_claims)."""

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
    with_workload,
)

from keybroker.errors import Category, KeybrokerError, Malformed
from verifier.dcap.claims import SgxClaims, TdxClaims
from verifier.dcap.policy import tdx_section
from verifier.dcap.view import sample_sgx_claims, sample_tdx_claims
from verifier.eventlog.measured import TdEventClaims
from verifier.policy.decision import appraise, appraise_claims, early_warning, evidence_workload
from verifier.policy.model import AppraisalPolicy
from verifier.reference.values import ReferenceSnapshot, RefSetVersion, RefState, RefValue
from verifier.snp.claims import GuestPolicy, SnpClaims
from verifier.snp.policy import snp_section
from verifier.snp.tcb import TcbVersion
from verifier.snp.view import sample_snp_claims
from verifier.tee import Claims
from verifier.verdict import Appraisal
from verifier.workload import NO_WORKLOAD, WorkloadClaims

AT = datetime(2026, 3, 1, tzinfo=UTC)
NB = datetime(2026, 1, 1, tzinfo=UTC)
NA = datetime(2027, 1, 1, tzinfo=UTC)
IMAGE_A = "sha256:" + "a1" * 32
IMAGE_B = "sha256:" + "b2" * 32
INIT_DATA = b'[workload]\nname = "demo"\nimages = ["' + IMAGE_A.encode() + b'"]\n'
EMPTY = ReferenceSnapshot(())

_SNP = dataclasses.replace(sample_snp_claims(), collateral_warnings=())  # complete collateral
_TDX = sample_tdx_claims()
_SGX = sample_sgx_claims()
MEASUREMENT = _SNP.measurement.hex()
MRTD = _TDX.mr_td.hex()
MRENCLAVE = _SGX.mr_enclave.hex()


def snp(**changes: Any) -> SnpClaims:
    """Sample Genoa claims whose HOST_DATA binds INIT_DATA."""
    base = dataclasses.replace(_SNP, host_data=hashlib.sha256(INIT_DATA).digest())
    return dataclasses.replace(base, **changes)


def tdx(**changes: Any) -> TdxClaims:
    """Sample TDX claims, UpToDate with complete collateral, MRCONFIGID binding INIT_DATA."""
    base = dataclasses.replace(
        _TDX, mr_config_id=hashlib.sha384(INIT_DATA).digest(),
        tcb=dataclasses.replace(_TDX.tcb, advisory_ids=(), collateral_warnings=()))
    return dataclasses.replace(base, **changes)


def sgx(**changes: Any) -> SgxClaims:
    base = dataclasses.replace(
        _SGX, tcb=dataclasses.replace(_SGX.tcb, advisory_ids=(), collateral_warnings=()))
    return dataclasses.replace(base, **changes)


def snp_policy(**kw: Any) -> AppraisalPolicy:
    kw.setdefault("measurements", [MEASUREMENT])
    kw.setdefault("allow_smt", True)
    return compiled(snp_policy_yaml("snp-p", **kw), version=4)


def tdx_policy(**kw: Any) -> AppraisalPolicy:
    kw.setdefault("mrtd", [MRTD])
    return compiled(tdx_policy_yaml("tdx-p", **kw), version=2)


def sgx_policy(**kw: Any) -> AppraisalPolicy:
    kw.setdefault("mrenclave", [MRENCLAVE])
    return compiled(sgx_policy_yaml("sgx-p", **kw), version=3)


def value(name: str, val: str, *, nb: datetime = NB, na: datetime = NA) -> RefValue:
    return RefValue(name, val, nb, na)


def version(name: str, number: int, state: RefState, *values: RefValue,
            retire_at: datetime | None = None) -> RefSetVersion:
    return RefSetVersion(name=name, version=number, state=state, retire_at=retire_at,
                         provenance="admin:secops", author="secops", created_at=NB,
                         values=values)


def run(policy: AppraisalPolicy, claims: Claims, *, init_data: bytes = b"",
        references: ReferenceSnapshot = EMPTY, at: datetime = AT, insecure: bool = False,
        include_staged: bool = False) -> tuple[Appraisal, WorkloadClaims]:
    return appraise(policy, claims, init_data=init_data, at=at, references=references,
                    allow_insecure_root=insecure, include_staged=include_staged)


def deny(policy: AppraisalPolicy, claims: Claims, **kw: Any) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        run(policy, claims, **kw)
    return exc.value


# --- the affirming path and the returned workload ------------------------------------------

def test_affirming_snp_with_workload_claims() -> None:
    """A passing appraisal names the policy and returns the bound workload claims."""
    result, workload = run(snp_policy(workload={"require_init_data": True}), snp(),
                           init_data=INIT_DATA)
    assert result.status == "affirming" and result.policy_id == "snp-p@4"
    assert (result.warnings, dict(result.matched), result.would_match, result.tcb_debt) == (
        (), {}, (), ())
    assert workload.init_data_register == "HOST_DATA" and workload.name == "demo"
    assert workload.init_data_digest == hashlib.sha256(INIT_DATA).hexdigest()
    assert workload.images == (IMAGE_A,)


def test_tdx_workload_has_measured_rtmr3_images() -> None:
    """TDX: init-data via MRCONFIGID; replayed runtime images become measured images."""
    _, workload = run(tdx_policy(), tdx(), init_data=INIT_DATA)
    assert workload.init_data_register == "MRCONFIGID"
    assert workload.measured_register == "RTMR3"
    assert _TDX.events is not None and workload.measured_images == _TDX.events.images
    _, none = run(tdx_policy(), tdx(events=None))
    assert none == NO_WORKLOAD


def test_evidence_workload_is_policy_independent() -> None:
    """evidence_workload binds and parses without a policy (for records)."""
    assert evidence_workload(snp(), INIT_DATA).name == "demo"
    assert evidence_workload(snp(), b"") == NO_WORKLOAD
    assert evidence_workload(sgx(), b"") == NO_WORKLOAD


# --- step 1-2: platform and time --------------------------------------------------------------

@pytest.mark.parametrize(("policy", "claims"), [
    ("snp", "tdx"), ("tdx", "sgx"), ("sgx", "snp"), ("snp", "sgx")])
def test_platform_mismatch_is_malformed_first(policy: str, claims: str) -> None:
    """A policy of another platform is MALFORMED naming both, before anything else."""
    policies = {"snp": snp_policy, "tdx": tdx_policy, "sgx": sgx_policy}
    evidence: dict[str, Claims] = {
        "snp": snp(insecure_root=True), "tdx": tdx(insecure_root=True),
        "sgx": sgx(insecure_root=True)}
    pol = policies[policy]()
    err = deny(pol, evidence[claims], init_data=b"\xff")
    assert isinstance(err, Malformed) and err.rule == "policy.platform"
    assert (err.expected, err.actual) == (
        {"snp": "sev-snp", "tdx": "tdx", "sgx": "sgx"}[claims], pol.platform)


def test_naive_time_is_malformed() -> None:
    """The appraisal time must be timezone-aware, for every platform."""
    for pol, claims in ((snp_policy(), snp()), (tdx_policy(), tdx()), (sgx_policy(), sgx())):
        err = deny(pol, claims, at=datetime(2026, 1, 1))
        assert err.category is Category.MALFORMED and err.rule == "appraisal.at"


# --- step 3: typed appraisal (categories) -----------------------------------------------------

def test_typed_step_categories() -> None:
    """The typed step raises its own categories: chain, platform, TCB, measurement,
    collateral."""
    assert deny(snp_policy(), snp(insecure_root=True)).category is Category.CHAIN_UNTRUSTED
    assert run(snp_policy(), snp(insecure_root=True), insecure=True)[0].status == "affirming"
    debug = snp(policy=GuestPolicy(0x30000 | 1 << 19))
    assert deny(snp_policy(), debug).category is Category.PLATFORM_POLICY
    floor = snp_policy(min_tcb={"microcode": 250})
    assert deny(floor, snp()).category is Category.TCB_POLICY
    assert deny(snp_policy(measurements=["00" * 48]), snp()).category is Category.MEASUREMENT
    stale = tdx(tcb=dataclasses.replace(tdx().tcb, collateral_warnings=("pck-crl missing",)))
    assert deny(tdx_policy(), stale).category is Category.COLLATERAL_STALE


def test_typed_failure_wins_over_workload() -> None:
    """A typed violation is reported before an init-data mismatch."""
    err = deny(snp_policy(), snp(policy=GuestPolicy(0x30000 | 1 << 19), host_data=bytes(32)),
               init_data=INIT_DATA)
    assert err.rule == "snp.allow_debug"


def test_measurements_none_is_left_to_the_binding() -> None:
    """A policy whose measurement is covered by a binding does not check it in the typed step;
    the binding does."""
    pol = snp_policy(measurements=None, reference_values=[("evidence.measurement", "launch")])
    assert snp_section(pol).measurements is None
    err = deny(pol, snp())
    assert err.rule == "reference_values.launch" and err.category is Category.MEASUREMENT
    refs = ReferenceSnapshot([version("launch", 1, RefState.ACTIVE, value("fw", MEASUREMENT))])
    result, _ = run(pol, snp(), references=refs)
    assert dict(result.matched) == {"evidence.measurement": "launch@1/fw"}


def test_tdx_mrtd_none_is_left_to_the_binding() -> None:
    """tdx.mrtd absent (covered by a binding of evidence.mr_td) skips the typed MRTD check."""
    pol = tdx_policy(mrtd=None, reference_values=[("evidence.mr_td", "td-fw")])
    assert tdx_section(pol).mrtd is None
    refs = ReferenceSnapshot([version("td-fw", 3, RefState.ACTIVE, value("td", MRTD.upper()))])
    assert dict(run(pol, tdx(), references=refs)[0].matched) == {"evidence.mr_td": "td-fw@3/td"}
    assert deny(pol, tdx(mr_td=bytes(48)), references=refs).rule == "reference_values.td-fw"


# --- step 4: workload claims ------------------------------------------------------------------

def test_init_data_rules_are_workload_rules() -> None:
    """Absent, unbound and malformed init-data: MEASUREMENT / MALFORMED under workload rules."""
    required = snp_policy(workload={"require_init_data": True})
    err = deny(required, snp())
    assert err.category is Category.MEASUREMENT and err.rule == "workload.require_init_data"
    assert err.actual == "no init-data"
    err = deny(snp_policy(), snp(host_data=bytes(32)), init_data=INIT_DATA)
    assert err.category is Category.MEASUREMENT and err.rule == "workload.require_init_data"
    assert err.actual == f"HOST_DATA = {'00' * 32}"
    bad = b"not a document"
    err = deny(snp_policy(), snp(host_data=hashlib.sha256(bad).digest()), init_data=bad)
    assert err.category is Category.MALFORMED and err.rule == "workload.init_data"
    err = deny(tdx_policy(workload={"require_init_data": True}), tdx(mr_config_id=bytes(48)),
               init_data=INIT_DATA)
    assert err.rule == "workload.require_init_data"
    assert err.actual == f"MRCONFIGID = {'00' * 48}"


def test_sgx_with_init_data_is_measurement() -> None:
    """SGX evidence cannot bind init-data: presenting it is MEASUREMENT (sgx.init_data)."""
    err = deny(sgx_policy(), sgx(), init_data=b"doc")
    assert err.category is Category.MEASUREMENT and err.rule == "sgx.init_data"
    result, workload = run(sgx_policy(), sgx())
    assert result.status == "affirming" and workload == NO_WORKLOAD


# --- step 5: workload policy -----------------------------------------------------------------

def test_workload_names_and_images() -> None:
    """Names and approved images are checked on the engine's workload claims."""
    err = deny(snp_policy(workload={"names": ["other"]}), snp(), init_data=INIT_DATA)
    assert err.category is Category.MEASUREMENT and err.rule == "workload.names"
    assert err.actual == "demo"
    assert deny(snp_policy(workload={"names": ["demo"]}), snp()).actual == "none"
    ok = snp_policy(workload={"names": ["demo"], "approved_images": [IMAGE_A]})
    assert run(ok, snp(), init_data=INIT_DATA)[0].status == "affirming"
    err = deny(snp_policy(workload={"approved_images": [IMAGE_B]}), snp(), init_data=INIT_DATA)
    assert err.rule == "workload.approved_images" and err.actual == IMAGE_A
    err = deny(snp_policy(workload={"approved_images": [IMAGE_A]}), snp())
    assert err.rule == "workload.approved_images" and err.actual == "no images"


def test_tdx_measured_images_are_checked_and_pin_the_runtime() -> None:
    """Measured RTMR3 images must be approved; approving them marks the runtime appraised."""
    events = TdEventClaims(firmware=(), boot_applications=(), kernel=None, initrd=None,
                           kernel_cmdline=None, images=(IMAGE_A,), event_count=1)
    claims = tdx(events=events)
    assert run(tdx_policy(), claims)[0].trust_vector["executables"] == 3
    approved = tdx_policy(workload={"approved_images": [IMAGE_A]})
    result, _ = run(approved, claims)
    assert result.trust_vector["executables"] == 2 and result.status == "affirming"
    err = deny(tdx_policy(workload={"approved_images": [IMAGE_B]}), claims)
    assert err.rule == "workload.approved_images" and err.actual == IMAGE_A


def test_workload_failure_wins_over_references() -> None:
    """The workload step runs before reference bindings."""
    pol = snp_policy(workload={"names": ["other"]},
                     reference_values=[("evidence.chip_id", "chips")])
    assert deny(pol, snp(), init_data=INIT_DATA).rule == "workload.names"


# --- step 6: reference bindings ----------------------------------------------------------------

def test_reference_binding_matches_and_is_recorded() -> None:
    """An active match is recorded as claim -> set@version/value-name."""
    pol = snp_policy(reference_values=[("evidence.chip_id", "chips")])
    refs = ReferenceSnapshot([version("chips", 2, RefState.ACTIVE,
                                      value("rack-7", _SNP.chip_id.hex()))])
    result, _ = run(pol, snp(), references=refs)
    assert result.status == "affirming"
    assert dict(result.matched) == {"evidence.chip_id": "chips@2/rack-7"}


def test_deprecated_match_is_a_warning() -> None:
    """A DEPRECATED match passes with status warning, a warning naming it and its retirement,
    and executables in the warning tier."""
    pol = snp_policy(measurements=None, reference_values=[("evidence.measurement", "launch")])
    retire = datetime(2026, 6, 1, tzinfo=UTC)
    refs = ReferenceSnapshot([version("launch", 1, RefState.DEPRECATED, value("fw-1", MEASUREMENT),
                                      retire_at=retire)])
    result, _ = run(pol, snp(), references=refs)
    assert result.status == "warning"
    assert result.warnings == ("launch@1/fw-1 is deprecated (retires 2026-06-01T00:00:00Z)",)
    assert result.trust_vector["executables"] == 32
    no_date = ReferenceSnapshot([version("launch", 1, RefState.DEPRECATED,
                                         value("fw-1", MEASUREMENT))])
    assert run(pol, snp(), references=no_date)[0].warnings == (
        "launch@1/fw-1 is deprecated (no retirement date)",)
    err = deny(pol, snp(), references=refs, at=retire)
    assert err.category is Category.MEASUREMENT and "retired" in err.reason


def test_expired_reference_names_value_and_expiry() -> None:
    """An equal value past its not_after is MEASUREMENT naming the value and the expiry."""
    pol = snp_policy(measurements=None, reference_values=[("evidence.measurement", "launch")])
    refs = ReferenceSnapshot([version("launch", 5, RefState.ACTIVE,
                                      value("fw-old", MEASUREMENT,
                                            na=datetime(2026, 2, 1, tzinfo=UTC)))])
    err = deny(pol, snp(), references=refs)
    assert err.category is Category.MEASUREMENT and err.rule == "reference_values.launch"
    assert "'fw-old'" in err.reason and "launch@5" in err.reason
    assert "expired at 2026-02-01T00:00:00Z" in err.reason
    assert err.actual == MEASUREMENT


def test_staged_values_only_in_dry_runs() -> None:
    """A staged-only value denies (reason says would_match); with include_staged it passes
    and is listed in would_match."""
    pol = snp_policy(measurements=None, reference_values=[("evidence.measurement", "launch")])
    refs = ReferenceSnapshot([version("launch", 1, RefState.ACTIVE, value("fw-1", "00" * 48)),
                              version("launch", 2, RefState.STAGED, value("fw-2", MEASUREMENT))])
    err = deny(pol, snp(), references=refs)
    assert err.category is Category.MEASUREMENT and "(would_match)" in err.reason
    assert "launch@2" in err.reason
    result, _ = run(pol, snp(), references=refs, include_staged=True)
    assert result.status == "affirming"
    assert result.would_match == ("evidence.measurement: launch@2/fw-2",)
    assert dict(result.matched) == {"evidence.measurement": "launch@2/fw-2"}


def test_list_claims_need_every_element_and_at_least_one() -> None:
    """Every element of a list claim must match; an empty or absent list never passes."""
    pol = tdx_policy(reference_values=[("evidence.events.images", "images")])
    refs = ReferenceSnapshot([version("images", 1, RefState.ACTIVE, value("a", IMAGE_A))])
    events = TdEventClaims(firmware=(), boot_applications=(), kernel=None, initrd=None,
                           kernel_cmdline=None, images=(IMAGE_A,), event_count=1)
    result, _ = run(pol, tdx(events=events), references=refs)
    assert dict(result.matched) == {"evidence.events.images.0": "images@1/a"}
    assert result.trust_vector["executables"] == 2
    two = dataclasses.replace(events, images=(IMAGE_A, IMAGE_B))
    err = deny(pol, tdx(events=two), references=refs)
    assert err.rule == "reference_values.images" and err.actual == IMAGE_B
    err = deny(pol, tdx(events=dataclasses.replace(events, images=())), references=refs)
    assert err.category is Category.MEASUREMENT and err.actual == "[]"
    err = deny(pol, tdx(events=None), references=refs)
    assert err.category is Category.MEASUREMENT and err.actual == "absent"


def test_unknown_set_and_null_claims_never_pass() -> None:
    """A binding to a set the snapshot lacks, or to a null claim, is MEASUREMENT."""
    pol = snp_policy(reference_values=[("evidence.chip_id", "chips")])
    err = deny(pol, snp())
    assert err.category is Category.MEASUREMENT and "no usable version" in err.reason
    csp = snp_policy(reference_values=[("evidence.csp_id", "csps")])
    refs = ReferenceSnapshot([version("csps", 1, RefState.ACTIVE, value("x", "x"))])
    err = deny(csp, snp(csp_id=None), references=refs)
    assert err.rule == "reference_values.csps" and err.actual == "null"


def test_reference_failure_wins_over_conditions() -> None:
    """Bindings are checked before conditions."""
    pol = snp_policy(reference_values=[("evidence.chip_id", "chips")],
                     conditions=[{"name": "never", "when": "false"}])
    assert deny(pol, snp()).rule == "reference_values.chips"


def test_workload_claims_can_be_bound() -> None:
    """A binding may name a workload claim (declared images)."""
    pol = snp_policy(reference_values=[("workload.images", "images")])
    refs = ReferenceSnapshot([version("images", 1, RefState.ACTIVE, value("a", IMAGE_A))])
    result, _ = run(pol, snp(), init_data=INIT_DATA, references=refs)
    assert dict(result.matched) == {"workload.images.0": "images@1/a"}
    assert deny(pol, snp(), references=refs).actual == "[]"


# --- step 7: conditions ----------------------------------------------------------------------

def test_condition_true_passes_and_false_denies_with_its_category() -> None:
    """A false condition denies with its category, rule conditions.<name>, the expression and
    the values of the claims it names."""
    when = "evidence.policy.single_socket && evidence.vmpl == 0"
    ok = snp_policy(conditions=[{"name": "single-socket", "when": "evidence.vmpl == 0"}])
    assert run(ok, snp())[0].status == "affirming"
    pol = snp_policy(conditions=[{"name": "single-socket", "when": when,
                                  "message": "only single-socket guests"}])
    err = deny(pol, snp())
    assert err.category is Category.PLATFORM_POLICY
    assert (err.rule, err.reason, err.expected) == (
        "conditions.single-socket", "only single-socket guests", when)
    assert err.actual == "evidence.policy.single_socket=false, evidence.vmpl=0"
    assert run(pol, snp(policy=GuestPolicy(0x30000 | 1 << 20)))[0].status == "affirming"


@pytest.mark.parametrize("category", ["PLATFORM_POLICY", "TCB_POLICY", "MEASUREMENT"])
def test_condition_categories(category: str) -> None:
    """The condition's declared category is the denial's category; the default reason is
    'condition failed'."""
    pol = tdx_policy(conditions=[{"name": "c", "when": 'evidence.tcb.status == "Other"',
                                  "category": category}])
    err = deny(pol, tdx())
    assert err.category is Category(category) and err.reason == "condition failed"
    assert err.actual == 'evidence.tcb.status="UpToDate"'


def test_condition_evaluation_error_denies() -> None:
    """An evaluation error (a null claim used as a string) denies with the rule's category."""
    pol = snp_policy(conditions=[{"name": "csp", "when": 'evidence.csp_id.startsWith("aws")',
                                  "category": "TCB_POLICY"}])
    assert run(pol, snp(csp_id="aws-east"))[0].status == "affirming"
    err = deny(pol, snp(csp_id=None))
    assert err.category is Category.TCB_POLICY and err.rule == "conditions.csp"
    assert err.reason.startswith("condition could not be evaluated: ")
    assert err.actual == "evidence.csp_id=null"


def test_conditions_see_workload_and_platform() -> None:
    """Conditions see the platform name and the workload claims."""
    pol = snp_policy(conditions=[{"name": "w", "when":
                                  'platform == "sev-snp" && workload.name == "demo"'}])
    assert run(pol, snp(), init_data=INIT_DATA)[0].status == "affirming"
    err = deny(pol, snp())
    assert err.rule == "conditions.w" and "workload.name=null" in err.actual


def test_conditions_run_in_order() -> None:
    """The first failing condition is reported."""
    pol = snp_policy(conditions=[{"name": "a", "when": "true"}, {"name": "b", "when": "false"},
                                 {"name": "c", "when": "false"}])
    assert deny(pol, snp()).rule == "conditions.b"


# --- step 8: early warning -------------------------------------------------------------------

def test_snp_early_warning_reports_reported_and_committed_tcb() -> None:
    """Components below the next floor are TCB debt; the decision does not change."""
    low = TcbVersion.decode(bytes.fromhex("04000000000018d1"), "Genoa")  # microcode 209
    claims = snp(reported_tcb=low, committed_tcb=low, current_tcb=low)
    pol = snp_policy(tcb_early_warning={"snp_min_tcb": {"microcode": 220, "snp": 24}})
    result, _ = run(pol, claims)
    assert result.status == "affirming"
    assert result.tcb_debt == ("reported_tcb.microcode 209 < next floor 220",
                               "committed_tcb.microcode 209 < next floor 220")
    at_floor = snp_policy(tcb_early_warning={"snp_min_tcb": {"microcode": 219, "snp": 24}})
    assert early_warning(at_floor, snp()) == ()  # the sample: microcode 219, snp 24


@pytest.mark.parametrize("platform", ["tdx", "sgx"])
def test_dcap_early_warning_compares_tcb_dates(platform: str) -> None:
    """TDX/SGX: a TCB date before min_tcb_date is TCB debt with both dates."""
    floor = datetime(2026, 9, 1, tzinfo=UTC)
    claims: TdxClaims | SgxClaims
    if platform == "tdx":
        pol, claims = tdx_policy(tcb_early_warning={"min_tcb_date": floor}), tdx()
    else:
        pol, claims = sgx_policy(tcb_early_warning={"min_tcb_date": floor}), sgx()
    result, _ = run(pol, claims)
    assert result.status == "affirming"
    assert result.tcb_debt == ("tcb_date 2025-11-12T00:00:00Z < next floor 2026-09-01T00:00:00Z",)
    early = dataclasses.replace(claims.tcb, tcb_date=floor)
    assert early_warning(pol, dataclasses.replace(claims, tcb=early)) == ()


def test_typed_warnings_are_kept() -> None:
    """The typed step's warnings (accepted non-UpToDate status) reach the appraisal."""
    claims = tdx(tcb=dataclasses.replace(tdx().tcb, status="SWHardeningNeeded"))
    pol = tdx_policy(accepted_tcb_statuses=["UpToDate", "SWHardeningNeeded"])
    result, _ = run(pol, claims)
    assert result.status == "warning"
    assert result.warnings == ("TCB status SWHardeningNeeded accepted by the policy",)


# --- appraise_claims: recorded claims ----------------------------------------------------------

def test_appraise_claims_matches_appraise() -> None:
    """Re-appraising recorded claims and workload gives the same decision."""
    pol = snp_policy(workload={"require_init_data": True, "names": ["demo"]},
                     conditions=[{"name": "w", "when": 'workload.name == "demo"'}])
    live, workload = run(pol, snp(), init_data=INIT_DATA)
    again = appraise_claims(pol, snp(), workload, at=AT, references=EMPTY,
                            allow_insecure_root=False)
    assert again == live
    with pytest.raises(KeybrokerError) as exc:
        appraise_claims(pol, snp(), NO_WORKLOAD, at=AT, references=EMPTY,
                        allow_insecure_root=False)
    assert exc.value.rule == "workload.require_init_data"


def test_appraise_claims_checks_the_recorded_binding() -> None:
    """Workload claims that say they were bound must match the evidence's register."""
    _, workload = run(snp_policy(), snp(), init_data=INIT_DATA)
    with pytest.raises(KeybrokerError) as exc:
        appraise_claims(snp_policy(), snp(host_data=bytes(32)), workload, at=AT,
                        references=EMPTY, allow_insecure_root=False)
    assert exc.value.category is Category.MEASUREMENT
    assert exc.value.rule == "workload.require_init_data"
    with pytest.raises(KeybrokerError) as exc:
        appraise_claims(sgx_policy(), sgx(), workload, at=AT, references=EMPTY,
                        allow_insecure_root=False)
    assert exc.value.rule == "sgx.init_data"
    with pytest.raises(KeybrokerError) as exc:
        appraise_claims(tdx_policy(), snp(), workload, at=AT, references=EMPTY,
                        allow_insecure_root=False)
    assert exc.value.rule == "policy.platform"


# --- empty policy pieces never pass vacuously -----------------------------------------------

def test_empty_allow_lists_accept_nothing() -> None:
    """Compiled empty measurements, names and approved images deny (documents cannot say
    ``[]``: compiling refuses it)."""
    assert deny(with_rules(snp_policy(), measurements=frozenset()),
                snp()).rule == "snp.measurements"
    assert deny(with_rules(tdx_policy(), mrtd=frozenset()), tdx()).rule == "tdx.mrtd"
    assert deny(with_workload(snp_policy(), names=frozenset()), snp(),
                init_data=INIT_DATA).rule == "workload.names"
    assert deny(with_workload(snp_policy(), approved_images=frozenset()), snp(),
                init_data=INIT_DATA).rule == "workload.approved_images"
