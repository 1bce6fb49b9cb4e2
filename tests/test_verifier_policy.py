"""Appraisal policy loading: YAML documents, strict schema and compile step, typed Malformed
errors with file:line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_docs import (
    DEFAULT_MEASUREMENT,
    DEFAULT_MRENCLAVE,
    DEFAULT_MRTD,
    compiled,
    sgx_policy_yaml,
    snp_policy_yaml,
    tdx_policy_yaml,
)

from keybroker.demo_setup import DEMO_IMAGE, Tee, default_policy, policy_document
from keybroker.errors import Category, Malformed
from verifier.claims_view import sample_activation
from verifier.policy import (
    AppraisalPolicy,
    ReferenceBinding,
    WorkloadPolicy,
    load_policy,
    parse_policy,
)

CONFIG = Path(__file__).resolve().parent.parent / "config"
M1 = "ab" * 48

VALID = f"""kind: AppraisalPolicy
name: p
platform: sev-snp
snp:
  measurements: ["{M1}"]
  min_tcb: {{bootloader: 1, tee: 0, snp: 8, microcode: 115}}
  allow_debug: false
  allowed_vmpls: [0, 1]
  allow_migration_agent: false
  allow_smt: true
  host_data: ["{'cd' * 32}"]
workload:
  require_init_data: true
"""


def _write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _line(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _refused(path: Path, version: int = 0) -> Malformed:
    with pytest.raises(Malformed) as exc:
        load_policy(path, version)
    assert exc.value.category is Category.MALFORMED
    return exc.value


def _refused_raw(raw: bytes, source: str = "t.yaml") -> Malformed:
    with pytest.raises(Malformed) as exc:
        parse_policy(raw, source)
    assert exc.value.category is Category.MALFORMED
    return exc.value


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG / "policies").glob("*.yaml")))
def test_example_policies_load(name: str) -> None:
    """Every example policy in config/policies loads and names itself name@version."""
    path = CONFIG / "policies" / name
    policy = load_policy(path, version=3)
    assert policy.policy_id == f"{policy.name}@3" and policy.name == name.removesuffix(".yaml")
    prefix = name.partition("-")[0]
    assert policy.platform == {"snp": "sev-snp", "tdx": "tdx", "sgx": "sgx"}[prefix]
    if policy.platform == "sev-snp":
        assert policy.snp.measurements
    elif policy.platform == "tdx":
        assert policy.tdx.mrtd
    else:
        assert policy.sgx.mrenclave or policy.sgx.signer
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.document == path.read_bytes()


def test_no_toml_policies_remain() -> None:
    """The example policies are YAML only."""
    assert not list((CONFIG / "policies").glob("*.toml"))


def test_valid_policy_compiles(tmp_path: Path) -> None:
    """A valid policy compiles into sets of bytes, a TCB floor mapping and a workload policy."""
    policy = load_policy(_write(tmp_path, VALID), version=2)
    assert policy.policy_id == "p@2" and policy.version == 2
    assert policy.snp.measurements == frozenset({bytes.fromhex(M1)})
    assert dict(policy.snp.min_tcb) == {"bootloader": 1, "tee": 0, "snp": 8, "microcode": 115}
    assert policy.snp.allowed_vmpls == frozenset({0, 1})
    assert policy.snp.host_data == frozenset({b"\xcd" * 32})
    assert policy.snp.allow_smt and policy.workload.require_init_data
    assert not policy.snp.allow_provisional_firmware
    assert policy.references == () and policy.conditions == ()
    assert policy.source == str(tmp_path / "policy.yaml")


def test_version_is_assigned_not_written(tmp_path: Path) -> None:
    """Without a version the policy is @0; with_version re-labels it; a version field is
    refused (the store assigns versions)."""
    policy = load_policy(_write(tmp_path, VALID))
    assert policy.policy_id == "p@0"
    stored = policy.with_version(5)
    assert stored.policy_id == "p@5" and stored.digest == policy.digest
    assert stored.rules == policy.rules
    err = _refused(_write(tmp_path, VALID.replace("name: p\n", "name: p\nversion: 2\n")))
    assert "unknown field 'version'" in err.reason


def test_optional_switches_default_to_strict(tmp_path: Path) -> None:
    """Omitted switches take the strict value (no debug, VMPL 0, no SMT, no migration agent,
    no init-data requirement)."""
    text = ("kind: AppraisalPolicy\nname: m\nplatform: sev-snp\nsnp:\n"
            f'  measurements: ["{M1}"]\n  min_tcb: {{}}\n')
    policy = load_policy(_write(tmp_path, text))
    snp = policy.snp
    assert not snp.allow_debug and not snp.allow_smt and not snp.allow_migration_agent
    assert snp.allowed_vmpls == frozenset({0})
    assert not snp.host_data
    assert policy.workload == WorkloadPolicy()
    assert policy.early_warning.snp_min_tcb is None
    assert policy.early_warning.min_tcb_date is None


def test_empty_measurement_list_loads_but_accepts_nothing(tmp_path: Path) -> None:
    """An empty measurement list is legal and compiles to the empty set (not None)."""
    policy = load_policy(_write(tmp_path, VALID.replace(f'["{M1}"]', "[]")))
    assert policy.snp.measurements == frozenset()


@pytest.mark.parametrize(
    ("old", "new", "field", "where"),
    [
        ("allow_smt: true", "allow_smt: true\n  allow_everything: true", "allow_everything",
         "snp"),
        ("platform: sev-snp", "platform: sev-snp\nowner: x", "owner", "(top level)"),
        ("microcode: 115", "microcode: 115, fw: 1", "fw", "snp.min_tcb"),
        ("require_init_data: true", "require_init_data: true\n  require_images: true",
         "require_images", "workload"),
    ],
)
def test_unknown_field_is_malformed_with_line(tmp_path: Path, old: str, new: str, field: str,
                                              where: str) -> None:
    """An unknown field is MALFORMED naming the file, its line, the field and where it is."""
    text = VALID.replace(old, new)
    path = _write(tmp_path, text)
    err = _refused(path)
    assert err.reason.startswith(f"{path}:{_line(text, field + ':')}: ")
    assert f"unknown field '{field}'" in err.reason and where in err.reason
    assert err.actual == field and err.expected.startswith("one of: ")


@pytest.mark.parametrize(
    ("old", "new", "key", "expected", "found"),
    [
        ("allow_debug: false", 'allow_debug: "no"', "snp.allow_debug", "boolean", "str"),
        ("allow_debug: false", "allow_debug: 0", "snp.allow_debug", "boolean", "int"),
        ("allow_debug: false", "allow_debug: no", "no", "", ""),
        ("allowed_vmpls: [0, 1]", "allowed_vmpls: 0", "snp.allowed_vmpls", "array", "int"),
        ("allowed_vmpls: [0, 1]", "allowed_vmpls: [4]", "snp.allowed_vmpls[0]", "3", "4"),
        ("snp: 8", "snp: 256", "snp.min_tcb.snp", "255", "256"),
        ("snp: 8", "snp: 8.0", "snp.min_tcb.snp", "integer", "float"),
        (f'["{M1}"]', f'["{M1[:-2]}"]', "snp.measurements[0]", "96 hex digits", M1[:10]),
        (f'["{M1}"]', f'["{"zz" * 48}"]', "snp.measurements[0]", "96 hex digits", "zz"),
        (f'["{M1}"]', f'["{M1}\\n"]', "snp.measurements[0]", "96 hex digits", "97 char"),
        (f'["{M1}"]', "[1]", "snp.measurements[0]", "string", "int"),
        ("platform: sev-snp", "platform: nitro", "platform", "sev-snp", "nitro"),
        ("name: p", "name: a b", "name", "A-Z a-z 0-9", "a b"),
        ("name: p", 'name: "p\\n"', "name", "A-Za-z0-9", "p\\n"),
        ("require_init_data: true", "require_init_data: 1", "workload.require_init_data",
         "boolean", "int"),
    ],
)
def test_wrong_type_or_value_is_malformed_with_line(
    tmp_path: Path, old: str, new: str, key: str, expected: str, found: str
) -> None:
    """A wrong type or value is MALFORMED with file:line, the key, the expected and the found
    value (an ambiguous YAML boolean is refused at the parser, with its line)."""
    assert old in VALID
    text = VALID.replace(old, new)
    path = _write(tmp_path, text)
    err = _refused(path)
    assert err.reason.startswith(f"{path}:{_line(text, new.partition(chr(10))[0])}: ")
    assert f"'{key}'" in err.reason
    assert expected in err.expected
    assert found in err.actual


@pytest.mark.parametrize(("section", "field"), [("snp:", "snp"), ("kind:", "kind")])
def test_missing_section_is_malformed(section: str, field: str) -> None:
    """A policy without its kind or its platform section is MALFORMED naming the field."""
    start = VALID.index(section)
    end = VALID.index("workload:") if section == "snp:" else VALID.index("name:")
    err = _refused_raw((VALID[:start] + VALID[end:]).encode())
    assert f"missing field '{field}'" in err.reason and err.actual == "absent"


def test_missing_measurements_without_binding_is_malformed_with_line(tmp_path: Path) -> None:
    """The measurement list is required (no implicit accept-all) unless a reference binding
    covers evidence.measurement; the error points at the snp section."""
    text = VALID.replace(f'  measurements: ["{M1}"]\n', "")
    path = _write(tmp_path, text)
    err = _refused(path)
    assert err.reason.startswith(f"{path}:{_line(text, 'snp:')}: ")
    assert "missing field 'measurements'" in err.reason and err.actual == "absent"
    # A binding of another claim does not count.
    raw = snp_policy_yaml(measurements=None, reference_values=[("evidence.host_data", "hd")])
    assert "missing field 'measurements'" in _refused_raw(raw).reason


def test_reference_binding_satisfies_measurements() -> None:
    """A binding of evidence.measurement replaces the typed list: measurements compiles to None
    and the binding carries its set and line."""
    raw = snp_policy_yaml(measurements=None,
                          reference_values=[("evidence.measurement", "snp-launch")])
    policy = compiled(raw)
    assert policy.snp.measurements is None
    line = _line(raw.decode(), "claim: evidence.measurement")
    assert policy.references == (ReferenceBinding("evidence.measurement", "snp-launch", line),)
    # Both given: both are checked.
    both = compiled(snp_policy_yaml(reference_values=[("evidence.measurement", "snp-launch")]))
    assert both.snp.measurements == frozenset({DEFAULT_MEASUREMENT})


def test_reference_bindings_satisfy_tdx_and_sgx_identity() -> None:
    """evidence.mr_td replaces tdx.mrtd; evidence.mr_enclave or evidence.mr_signer replaces the
    SGX MRENCLAVE / signer rules (both None)."""
    tdx = compiled(tdx_policy_yaml(mrtd=None, reference_values=[("evidence.mr_td", "tds")]))
    assert tdx.tdx.mrtd is None
    for claim in ("evidence.mr_enclave", "evidence.mr_signer"):
        sgx = compiled(sgx_policy_yaml(mrenclave=None, reference_values=[(claim, "enclaves")]))
        assert sgx.sgx.mrenclave is None and sgx.sgx.signer is None
    assert "missing field 'mrtd'" in _refused_raw(tdx_policy_yaml(mrtd=None)).reason
    err = _refused_raw(sgx_policy_yaml(mrenclave=None,
                                       reference_values=[("evidence.mr_td", "x")]))
    assert "mr_td" in err.reason or "mrenclave" in err.expected


@pytest.mark.parametrize(
    ("claim", "what"),
    [
        ("policy.debug", "invalid value"),
        ("evidence.no_such_claim", "no such claim"),
        ("evidence.policy", "is a map"),
        ("workload.nam", "no such claim"),
    ],
)
def test_bad_reference_claim_is_malformed_with_line(claim: str, what: str) -> None:
    """A binding must name an existing value claim under evidence. or workload."""
    raw = snp_policy_yaml(reference_values=[("evidence.host_data", "a"), (claim, "b")])
    err = _refused_raw(raw)
    assert err.reason.startswith(f"t.yaml:{_line(raw.decode(), 'claim: ' + claim)}: ")
    assert what in err.reason


def test_duplicate_reference_claim_is_malformed() -> None:
    """A claim is bound to one set only; the second binding is refused with both lines."""
    raw = snp_policy_yaml(reference_values=[("evidence.measurement", "a"),
                                            ("workload.images", "imgs"),
                                            ("evidence.measurement", "b")])
    err = _refused_raw(raw)
    lines = [i for i, line in enumerate(raw.decode().splitlines(), 1)
             if "claim: evidence.measurement" in line]
    assert err.reason.startswith(f"t.yaml:{lines[1]}: claim bound twice (first on line "
                                 f"{lines[0]})")


def test_workload_section_compiles() -> None:
    """names and approved_images compile to sets; absent is None (not checked), empty is the
    empty set (nothing allowed)."""
    image = "sha256:" + "ab" * 32
    policy = compiled(tdx_policy_yaml(workload={"require_init_data": True, "names": ["demo"],
                                                "approved_images": [image]}))
    assert policy.workload == WorkloadPolicy(True, frozenset({"demo"}), frozenset({image}))
    empty = compiled(snp_policy_yaml(workload={"names": [], "approved_images": []}))
    assert empty.workload == WorkloadPolicy(False, frozenset(), frozenset())


@pytest.mark.parametrize(
    ("workload", "where", "expected"),
    [
        ({"names": ["a b"]}, "workload.names[0]", "A-Za-z0-9"),
        ({"approved_images": ["sha256:AB"]}, "workload.approved_images[0]", "sha256:"),
        ({"require_init_data": "yes"}, "workload.require_init_data", "boolean"),
    ],
)
def test_bad_workload_field_is_malformed(workload: dict[str, object], where: str,
                                         expected: str) -> None:
    """Workload allow-lists hold valid names and image digests."""
    err = _refused_raw(snp_policy_yaml(workload=workload))
    assert f"'{where}'" in err.reason and expected in err.expected


def test_sgx_policy_cannot_require_init_data() -> None:
    """SGX has no init-data register: workload rules that could never pass are refused."""
    for workload in ({"require_init_data": True}, {"names": ["demo"]},
                     {"approved_images": ["sha256:" + "ab" * 32]}):
        err = _refused_raw(sgx_policy_yaml(workload=workload))
        assert "not supported for platform sgx" in err.reason
    assert compiled(sgx_policy_yaml(workload={"require_init_data": False})).workload == \
        WorkloadPolicy()


def test_conditions_compile_with_category_message_and_line() -> None:
    """Conditions compile once; category defaults to PLATFORM_POLICY; each carries its line."""
    raw = snp_policy_yaml(conditions=[
        {"name": "single-socket", "when": "!evidence.policy.single_socket",
         "message": "only multi-socket hosts"},
        {"name": "recent-microcode", "when": "evidence.reported_tcb.microcode >= 200",
         "category": "TCB_POLICY"},
        {"name": "demo-workload", "when": 'workload.name == "demo"', "category": "MEASUREMENT"},
    ])
    policy = compiled(raw)
    names = [c.name for c in policy.conditions]
    assert names == ["single-socket", "recent-microcode", "demo-workload"]
    assert [c.category for c in policy.conditions] == [
        Category.PLATFORM_POLICY, Category.TCB_POLICY, Category.MEASUREMENT]
    assert policy.conditions[0].message == "only multi-socket hosts"
    assert policy.conditions[1].message == ""
    assert policy.conditions[0].line == _line(raw.decode(), "when: '!evidence")
    sample = sample_activation("sev-snp")
    assert policy.conditions[2].condition.evaluate(sample)


@pytest.mark.parametrize(
    "when",
    [
        "evidence.policy.debug ==",          # does not parse
        "evidence.no_such_field",            # unknown field
        "claims.debug",                      # unknown variable
        "evidence.vmpl + 1",                 # not a boolean
        'evidence.vmpl + "a" == 1',          # type error on the sample
    ],
)
def test_bad_cel_is_malformed_with_the_when_line(when: str) -> None:
    """A condition that does not compile or type-check is MALFORMED at its when: line."""
    raw = snp_policy_yaml(conditions=[{"name": "ok", "when": "true"},
                                      {"name": "bad", "when": when}])
    err = _refused_raw(raw)
    text = raw.decode()
    when_lines = [i for i, line in enumerate(text.splitlines(), 1) if "when:" in line]
    assert err.reason.startswith(f"t.yaml:{when_lines[1]}: invalid CEL condition at "
                                 "'conditions[1].when'")
    assert "boolean" in err.expected and err.actual


def test_duplicate_condition_name_is_malformed() -> None:
    """Condition names are unique in a policy (they name the deny rule)."""
    raw = snp_policy_yaml(conditions=[{"name": "a", "when": "true"},
                                      {"name": "b", "when": "true"},
                                      {"name": "a", "when": "false"}])
    err = _refused_raw(raw)
    lines = [i for i, line in enumerate(raw.decode().splitlines(), 1) if "name: a" in line]
    assert err.reason.startswith(f"t.yaml:{lines[1]}: duplicate condition name (first on line "
                                 f"{lines[0]})")


def test_condition_category_is_limited() -> None:
    """A condition may only deny as PLATFORM_POLICY, TCB_POLICY or MEASUREMENT."""
    err = _refused_raw(snp_policy_yaml(conditions=[
        {"name": "a", "when": "true", "category": "BINDING"}]))
    assert "'conditions[0].category'" in err.reason and "TCB_POLICY" in err.expected


def test_tcb_early_warning_compiles_per_platform() -> None:
    """snp_min_tcb for SEV-SNP, min_tcb_date (an instant) for TDX and SGX."""
    snp = compiled(snp_policy_yaml(tcb_early_warning={"snp_min_tcb": {"microcode": 220}}))
    assert dict(snp.early_warning.snp_min_tcb or {}) == {"microcode": 220}
    date = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    for raw in (tdx_policy_yaml(tcb_early_warning={"min_tcb_date": date}),
                sgx_policy_yaml(tcb_early_warning={"min_tcb_date": date})):
        assert compiled(raw).early_warning.min_tcb_date == date
    err = _refused_raw(snp_policy_yaml(tcb_early_warning={"min_tcb_date": date}))
    assert "min_tcb_date" in err.reason
    err = _refused_raw(tdx_policy_yaml(tcb_early_warning={"snp_min_tcb": {"snp": 1}}))
    assert "snp_min_tcb" in err.reason
    err = _refused_raw(tdx_policy_yaml(tcb_early_warning={"min_tcb_date": "2026-09-01"}))
    assert "time zone" in err.expected


def test_unreadable_and_invalid_yaml_are_malformed(tmp_path: Path) -> None:
    """A missing file and a syntactically broken file are MALFORMED naming the file."""
    missing = _refused(tmp_path / "nope.yaml")
    assert "nope.yaml" in missing.reason and missing.rule == "policy.file"
    broken = _refused(_write(tmp_path, "kind: AppraisalPolicy\nname: [p\n"))
    assert "policy.yaml:" in broken.reason and "not valid YAML" in broken.reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_malformed(raw: bytes) -> None:
    """Arbitrary document bytes either compile or raise Malformed, nothing else."""
    try:
        parse_policy(raw, "fuzz.yaml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


_VALUES = st.one_of(st.booleans(), st.integers(-5, 300), st.text(max_size=5),
                    st.lists(st.integers(-1, 5), max_size=3),
                    st.lists(st.text(max_size=6), max_size=2))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["allow_debug", "allow_smt", "allowed_vmpls", "min_tcb",
                                        "host_data", "require_init_data", "measurements"]),
                       _VALUES))
def test_arbitrary_snp_values_raise_only_malformed(values: dict[str, object]) -> None:
    """Arbitrary values in the snp section compile or raise Malformed, nothing else."""
    doc = {"kind": "AppraisalPolicy", "name": "f", "platform": "sev-snp", "snp": values}
    try:
        parse_policy(yaml.safe_dump(doc).encode(), "fuzz.yaml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


def test_snp_section_under_another_platform_is_malformed() -> None:
    """An snp section in a policy that says platform: tdx is refused, naming snp."""
    raw = tdx_policy_yaml().replace(b"platform: tdx\n",
                                    b"platform: tdx\nsnp:\n  min_tcb: {}\n")
    err = _refused_raw(raw)
    assert "'snp'" in err.reason and "not allowed" in err.reason


def test_asking_for_another_platforms_rules_is_malformed(tmp_path: Path) -> None:
    """policy.tdx / policy.sgx of an SNP policy is MALFORMED naming both platforms."""
    policy = load_policy(_write(tmp_path, VALID))
    for attribute, platform in (("tdx", "tdx"), ("sgx", "sgx")):
        with pytest.raises(Malformed) as exc:
            getattr(policy, attribute)
        assert (exc.value.expected, exc.value.actual) == (platform, "sev-snp")


def test_builders_compile_to_their_defaults() -> None:
    """The tests' policy builders produce valid minimal policies."""
    assert compiled(snp_policy_yaml()).snp.measurements == frozenset({DEFAULT_MEASUREMENT})
    assert compiled(tdx_policy_yaml()).tdx.mrtd == frozenset({DEFAULT_MRTD})
    sgx = compiled(sgx_policy_yaml())
    assert isinstance(sgx, AppraisalPolicy) and sgx.policy_id == "sgx-test@1"
    assert sgx.sgx.mrenclave == frozenset({DEFAULT_MRENCLAVE})


# --- TDX and SGX sections -----------------------------------------------------------------

TD = "11" * 48
IMAGE = "sha256:" + "ab" * 32
TDX_VALID = f"""kind: AppraisalPolicy
name: td
platform: tdx
tdx:
  mrtd: ["{TD}"]
  accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]
  allowed_advisories: [INTEL-SA-00837]
  out_of_date_grace_until: 2026-06-30T00:00:00Z
  allow_missing_crl: true
  rtmr0: ["{'00' * 48}"]
  rtmr1: ["{'01' * 48}"]
  rtmr2: ["{'02' * 48}"]
  rtmr3: ["{'03' * 48}"]
  mrseam: ["{'04' * 48}"]
  mrsignerseam: ["{'00' * 48}"]
  mrowner: ["{'05' * 48}"]
  mrownerconfig: ["{'06' * 48}"]
  allowed_xfam: ["e7", "0x00000000000602e7", 231]
  allow_migratable: true
  allow_perfmon: true
  allow_profiling: true
  require_sept_ve_disable: false
  required_images: ["{IMAGE}"]
  allowed_images: ["{IMAGE}"]
workload:
  require_init_data: true
"""
SGX_VALID = f"""kind: AppraisalPolicy
name: enclave
platform: sgx
sgx:
  mrenclave: ["{'aa' * 32}"]
  mrsigner: ["{'bb' * 32}"]
  isv_prod_id: 7
  min_isv_svn: 3
  accepted_tcb_statuses: [UpToDate, ConfigurationNeeded]
  allowed_advisories: []
  out_of_date_grace_until: "2026-01-01T12:00:00+02:00"
  allow_missing_crl: false
"""


def test_tdx_policy_compiles_every_key(tmp_path: Path) -> None:
    """Every tdx key compiles into its typed value; require_init_data lives in workload."""
    policy = load_policy(_write(tmp_path, TDX_VALID), version=4)
    tdx = policy.tdx
    assert policy.policy_id == "td@4" and policy.platform == "tdx"
    assert tdx.mrtd == frozenset({bytes.fromhex(TD)})
    assert tdx.tcb.accepted_statuses == frozenset({"UpToDate", "SWHardeningNeeded"})
    assert tdx.tcb.allowed_advisories == frozenset({"INTEL-SA-00837"})
    assert tdx.tcb.out_of_date_grace_until == dt.datetime(2026, 6, 30, tzinfo=dt.UTC)
    assert tdx.tcb.allow_missing_crl
    assert [set(r) for r in tdx.rtmrs] == [{bytes([i]) * 48} for i in range(4)]
    assert tdx.mrseam == frozenset({b"\x04" * 48})
    assert tdx.mrsignerseam == frozenset({bytes(48)})
    assert tdx.mrowner == frozenset({b"\x05" * 48})
    assert tdx.mrownerconfig == frozenset({b"\x06" * 48})
    assert tdx.allowed_xfam == frozenset({0xE7, 0x602E7})
    assert tdx.allow_migratable and tdx.allow_perfmon and tdx.allow_profiling
    assert not tdx.require_sept_ve_disable and policy.workload.require_init_data
    assert tdx.required_images == (IMAGE,)
    assert tdx.allowed_images == frozenset({IMAGE})


def test_tdx_switches_default_to_strict(tmp_path: Path) -> None:
    """With only mrtd given, every tdx switch takes its strict value."""
    text = f'kind: AppraisalPolicy\nname: t\nplatform: tdx\ntdx:\n  mrtd: ["{TD}"]\n'
    policy = load_policy(_write(tmp_path, text))
    tdx = policy.tdx
    assert tdx.tcb.accepted_statuses == frozenset({"UpToDate"})
    assert tdx.tcb.allowed_advisories == frozenset()
    assert tdx.tcb.out_of_date_grace_until is None and not tdx.tcb.allow_missing_crl
    assert not (tdx.allow_migratable or tdx.allow_perfmon or tdx.allow_profiling)
    assert tdx.require_sept_ve_disable and not policy.workload.require_init_data
    assert tdx.allowed_xfam is None and tdx.allowed_images is None
    assert tdx.required_images == () and all(not r for r in tdx.rtmrs)


def test_sgx_policy_compiles_every_key(tmp_path: Path) -> None:
    """Every sgx key compiles; the quoted grace instant is converted to UTC."""
    sgx = load_policy(_write(tmp_path, SGX_VALID)).sgx
    assert sgx.mrenclave == frozenset({b"\xaa" * 32})
    assert sgx.signer is not None
    assert sgx.signer.mrsigner == frozenset({b"\xbb" * 32})
    assert (sgx.signer.isv_prod_id, sgx.signer.min_isv_svn) == (7, 3)
    assert sgx.tcb.accepted_statuses == frozenset({"UpToDate", "ConfigurationNeeded"})
    assert sgx.tcb.out_of_date_grace_until == dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "old", "new", "key", "expected", "found"),
    [
        ("tdx", f'  mrtd: ["{TD}"]\n', "", "tdx", "mrtd", "absent"),
        ("tdx", f'mrtd: ["{TD}"]', f'mrtd: "{TD}"', "tdx.mrtd", "array", "str"),
        ("tdx", f'mrtd: ["{TD}"]', f'mrtd: ["{TD[:64]}"]', "tdx.mrtd[0]", "96 hex", TD[:10]),
        ("tdx", "UpToDate, SWHardeningNeeded", "UpToDate, Fine",
         "tdx.accepted_tcb_statuses[1]", "UpToDate", "Fine"),
        ("tdx", "[UpToDate, SWHardeningNeeded]", "1", "tdx.accepted_tcb_statuses",
         "array", "int"),
        ("tdx", "[UpToDate, SWHardeningNeeded]", "[1]", "tdx.accepted_tcb_statuses[0]",
         "UpToDate", "int"),
        ("tdx", "[INTEL-SA-00837]", "[837]", "tdx.allowed_advisories[0]", "string", "int"),
        ("tdx", "[INTEL-SA-00837]", '["bad id"]', "tdx.allowed_advisories[0]",
         "advisory id", "bad id"),
        ("tdx", "2026-06-30T00:00:00Z", "2026-06-30T00:00:00", "tdx.out_of_date_grace_until",
         "time zone", "datetime"),
        ("tdx", "2026-06-30T00:00:00Z", '"2026-06-30"', "tdx.out_of_date_grace_until",
         "time zone", "str"),
        ("tdx", "2026-06-30T00:00:00Z", "soon", "tdx.out_of_date_grace_until", "time zone",
         "soon"),
        ("tdx", "2026-06-30T00:00:00Z", "20260630", "tdx.out_of_date_grace_until", "time zone",
         "int"),
        ("tdx", "allow_missing_crl: true", "allow_missing_crl: 1", "tdx.allow_missing_crl",
         "boolean", "int"),
        ("tdx", f'rtmr2: ["{"02" * 48}"]', f'rtmr2: ["{"02" * 32}"]', "tdx.rtmr2[0]",
         "96 hex", "0202"),
        ("tdx", f'rtmr3: ["{"03" * 48}"]', "rtmr3: [3]", "tdx.rtmr3[0]", "string", "int"),
        ("tdx", f'mrseam: ["{"04" * 48}"]', 'mrseam: ["xyz"]', "tdx.mrseam[0]", "hex", "xyz"),
        ("tdx", f'mrsignerseam: ["{"00" * 48}"]', "mrsignerseam: true", "tdx.mrsignerseam",
         "array", "bool"),
        ("tdx", f'mrowner: ["{"05" * 48}"]', 'mrowner: ["05"]', "tdx.mrowner[0]", "96 hex",
         "05"),
        ("tdx", f'mrownerconfig: ["{"06" * 48}"]', "mrownerconfig: [{}]",
         "tdx.mrownerconfig[0]", "string", "mapping"),
        ("tdx", '"e7", "0x00000000000602e7", 231', '"zz"', "tdx.allowed_xfam[0]", "hex", "zz"),
        ("tdx", '"e7", "0x00000000000602e7", 231', "-1", "tdx.allowed_xfam[0]", "0", "-1"),
        ("tdx", '"e7", "0x00000000000602e7", 231', "true", "tdx.allowed_xfam[0]", "integer",
         "bool"),
        ("tdx", '"e7", "0x00000000000602e7", 231', '"e7\\n"', "tdx.allowed_xfam[0]", "hex",
         "e7"),
        ("tdx", "allow_migratable: true", 'allow_migratable: "yes"', "tdx.allow_migratable",
         "boolean", "str"),
        ("tdx", "allow_perfmon: true", "allow_perfmon: 1", "tdx.allow_perfmon", "boolean",
         "int"),
        ("tdx", "allow_profiling: true", "allow_profiling: []", "tdx.allow_profiling",
         "boolean", "list"),
        ("tdx", "require_sept_ve_disable: false", "require_sept_ve_disable: 0",
         "tdx.require_sept_ve_disable", "boolean", "int"),
        ("tdx", "require_sept_ve_disable: false",
         "require_sept_ve_disable: false\n  require_init_data: true", "tdx", "one of",
         "require_init_data"),
        ("tdx", "require_init_data: true", 'require_init_data: "true"',
         "workload.require_init_data", "boolean", "str"),
        ("tdx", f'required_images: ["{IMAGE}"]', f'required_images: ["{IMAGE.upper()}"]',
         "tdx.required_images[0]", "sha256:", "SHA256"),
        ("tdx", f'required_images: ["{IMAGE}"]', f'required_images: "{IMAGE}"',
         "tdx.required_images", "array", "str"),
        ("tdx", f'allowed_images: ["{IMAGE}"]', f'allowed_images: ["{IMAGE[:-2]}"]',
         "tdx.allowed_images[0]", "sha256:", "sha256:"),
        ("tdx", f'allowed_images: ["{IMAGE}"]', f'allowed_images: ["{IMAGE}\\n"]',
         "tdx.allowed_images[0]", "sha256:", "\\n"),
        ("tdx", "allow_perfmon: true", "allow_perfmon: true\n  allow_debug: true",
         "tdx", "one of", "allow_debug"),
        ("sgx", "  isv_prod_id: 7\n", "", "sgx", "together", "absent"),
        ("sgx", f'  mrsigner: ["{"bb" * 32}"]\n', "", "sgx", "together", "absent"),
        ("sgx", "isv_prod_id: 7", "isv_prod_id: 70000", "sgx.isv_prod_id", "65535",
         "70000"),
        ("sgx", "isv_prod_id: 7", 'isv_prod_id: "7"', "sgx.isv_prod_id", "integer", "str"),
        ("sgx", "min_isv_svn: 3", "min_isv_svn: -1", "sgx.min_isv_svn", "0", "-1"),
        ("sgx", "min_isv_svn: 3", "min_isv_svn: 3.5", "sgx.min_isv_svn", "integer", "float"),
        ("sgx", f'mrenclave: ["{"aa" * 32}"]', f'mrenclave: ["{"aa" * 48}"]',
         "sgx.mrenclave[0]", "64 hex", "aaaa"),
        ("sgx", f'mrsigner: ["{"bb" * 32}"]', 'mrsigner: "bb"', "sgx.mrsigner", "array",
         "str"),
        ("sgx", "allow_missing_crl: false", "allow_missing_crl: 0", "sgx.allow_missing_crl",
         "boolean", "int"),
        ("sgx", "min_isv_svn: 3", "min_isv_svn: 3\n  rtmr0: []", "sgx", "one of", "rtmr0"),
    ],
)
def test_dcap_wrong_key_type_or_value_is_malformed(
    tmp_path: Path, text: str, old: str, new: str, key: str, expected: str, found: str
) -> None:
    """Each tdx/sgx key with a wrong type or value is MALFORMED naming file, line and key."""
    source = TDX_VALID if text == "tdx" else SGX_VALID
    assert old in source
    path = _write(tmp_path, source.replace(old, new, 1))
    err = _refused(path)
    assert err.reason.startswith(f"{path}:")
    assert f"'{key}'" in err.reason
    assert expected in err.expected
    assert found in err.actual


@pytest.mark.parametrize(("source", "name"), [(TDX_VALID, "tdx"), (SGX_VALID, "sgx")])
def test_revoked_is_refused_with_line(tmp_path: Path, source: str, name: str) -> None:
    """No policy can accept a Revoked TCB: the status is refused at its line."""
    text = source.replace("[UpToDate, ", "[UpToDate, Revoked, ")
    path = _write(tmp_path, text)
    err = _refused(path)
    assert err.reason.startswith(f"{path}:{_line(text, 'Revoked')}: ")
    assert f"'{name}.accepted_tcb_statuses[1]'" in err.reason
    assert "Revoked" in err.actual and "Revoked" not in err.expected
    assert "UpToDate" in err.expected


@pytest.mark.parametrize("grace", ["2026-06-30", "2026-06-30T00:00:00", "2026-06-30 00:00"])
def test_bare_date_is_refused_for_grace(tmp_path: Path, grace: str) -> None:
    """The grace instant must carry a time zone: a bare date or a local time is refused at
    its line."""
    text = TDX_VALID.replace("2026-06-30T00:00:00Z", grace)
    path = _write(tmp_path, text)
    err = _refused(path)
    assert err.reason.startswith(f"{path}:{_line(text, 'out_of_date_grace_until')}: ")
    assert "'tdx.out_of_date_grace_until'" in err.reason
    assert "time zone" in err.expected


def test_sgx_policy_needs_mrenclave_or_signer() -> None:
    """An sgx section naming neither MRENCLAVE nor the signer triple is MALFORMED."""
    text = "kind: AppraisalPolicy\nname: e\nplatform: sgx\nsgx:\n  allow_missing_crl: false\n"
    err = _refused_raw(text.encode())
    assert "'sgx'" in err.reason and "mrenclave" in err.reason + err.expected


def test_sgx_policy_with_only_one_rule(tmp_path: Path) -> None:
    """MRENCLAVE alone, or the signer triple alone, is a complete SGX policy."""
    only_enclave = SGX_VALID.replace(f'  mrsigner: ["{"bb" * 32}"]\n', "").replace(
        "  isv_prod_id: 7\n", "").replace("  min_isv_svn: 3\n", "")
    sgx = load_policy(_write(tmp_path, only_enclave, "a.yaml")).sgx
    assert sgx.signer is None and sgx.mrenclave == frozenset({b"\xaa" * 32})
    only_signer = SGX_VALID.replace(f'  mrenclave: ["{"aa" * 32}"]\n', "")
    sgx = load_policy(_write(tmp_path, only_signer, "b.yaml")).sgx
    assert sgx.mrenclave is None and sgx.signer is not None


def test_empty_allow_lists_stay_fail_closed(tmp_path: Path) -> None:
    """mrtd: [] and allowed_images: [] load as empty sets (nothing accepted), not None."""
    text = ("kind: AppraisalPolicy\nname: t\nplatform: tdx\ntdx:\n  mrtd: []\n"
            "  allowed_images: []\n  allowed_xfam: []\n  rtmr3: []\n")
    tdx = load_policy(_write(tmp_path, text)).tdx
    assert tdx.mrtd == frozenset() and tdx.allowed_images == frozenset()
    assert tdx.allowed_xfam == frozenset() and tdx.rtmrs[3] == frozenset()


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["mrtd", "accepted_tcb_statuses", "allowed_advisories",
                                        "out_of_date_grace_until", "allowed_xfam", "rtmr1",
                                        "required_images", "allow_profiling", "mrenclave"]),
                       st.one_of(_VALUES, st.lists(st.text(max_size=6), max_size=2))))
def test_arbitrary_tdx_values_raise_only_malformed(values: dict[str, object]) -> None:
    """Arbitrary values in the tdx section compile or raise Malformed, nothing else."""
    doc = {"kind": "AppraisalPolicy", "name": "f", "platform": "tdx", "tdx": values}
    try:
        parse_policy(yaml.safe_dump(doc).encode(), "fuzz.yaml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


@pytest.mark.parametrize("tee", ["snp", "tdx", "sgx"])
def test_demo_policy_documents_compile(tee: Tee) -> None:
    """The demo set-up writes YAML policies that compile with every PolicySpec option."""
    base = default_policy(tee)
    policy = compiled(policy_document(base))
    assert policy.name == base.name and policy.workload.require_init_data is (tee != "sgx")
    full = dataclasses.replace(
        base, grace_until="2099-01-01T00:00:00Z", advisories=("INTEL-SA-00828",),
        workload={"names": ["demo"]} if tee != "sgx" else None,
        conditions=({"name": "c", "when": 'platform != ""', "category": "MEASUREMENT"},),
        references=(("workload.images", "images"),) if tee != "sgx" else ())
    policy = compiled(policy_document(full))
    assert [c.name for c in policy.conditions] == ["c"]
    if tee == "snp":
        assert dict(policy.snp.min_tcb) == dict(base.min_tcb)
    else:
        rules = policy.tdx if tee == "tdx" else policy.sgx
        assert rules.tcb.out_of_date_grace_until == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
        assert rules.tcb.allowed_advisories == frozenset({"INTEL-SA-00828"})
    if tee == "tdx":
        assert policy.tdx.required_images == (DEMO_IMAGE,)
        assert policy.workload.names == frozenset({"demo"})
        assert [r.claim for r in policy.references] == ["workload.images"]
