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
from support.paths import CONFIG
from support.policy_checks import ANY_VALUE, line_of, refused, refused_raw, write_doc
from support.policy_docs import (
    DEFAULT_MEASUREMENT,
    DEFAULT_MRENCLAVE,
    DEFAULT_MRTD,
    compiled,
    sgx_policy_yaml,
    snp_policy_yaml,
    tdx_policy_yaml,
)

from keybroker.errors import Category, Malformed
from keybroker_cli.demo_setup import DEMO_IMAGE, Tee, default_policy, policy_document
from verifier.azure.policy import azure_section
from verifier.claims_view import sample_activation
from verifier.dcap.policy import sgx_section, tdx_section
from verifier.maa.policy import maa_section
from verifier.nitro.policy import nitro_section
from verifier.policy.compile import load_policy, parse_policy
from verifier.policy.model import AppraisalPolicy, ReferenceBinding
from verifier.snp.policy import snp_section
from verifier.tpm.policy import tpm_section
from verifier.workload import WorkloadPolicy

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


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG / "policies").glob("*.yaml")))
def test_example_policies_load(name: str) -> None:
    """Every example policy in config/policies loads and names itself name@version."""
    path = CONFIG / "policies" / name
    policy = load_policy(path, version=3)
    assert policy.policy_id == f"{policy.name}@3" and policy.name == name.removesuffix(".yaml")
    prefix = name.partition("-")[0]
    assert policy.platform == {"snp": "sev-snp", "tdx": "tdx", "sgx": "sgx", "tpm": "tpm",
                               "maa": "maa", "azsnp": "az-snp-vtpm",
                               "aztdx": "az-tdx-vtpm", "nitro": "nitro"}[prefix]
    if policy.platform == "sev-snp":
        assert snp_section(policy).measurements
    elif policy.platform == "tdx":
        assert tdx_section(policy).mrtd
    elif policy.platform == "tpm":
        assert tpm_section(policy).pcrs
    elif policy.platform == "maa":
        assert maa_section(policy).sgx is not None
    elif policy.platform.startswith("az-"):
        assert azure_section(policy, policy.platform).measurements
    elif policy.platform == "nitro":
        assert set(nitro_section(policy).pcrs) == {0, 1, 2, 8}
    else:
        assert sgx_section(policy).mrenclave or sgx_section(policy).signer
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.document == path.read_bytes()


def test_no_toml_policies_remain() -> None:
    """The example policies are YAML only."""
    assert not list((CONFIG / "policies").glob("*.toml"))


def test_valid_policy_compiles(tmp_path: Path) -> None:
    """A valid policy compiles into sets of bytes, a TCB floor mapping and a workload policy."""
    policy = load_policy(write_doc(tmp_path, VALID), version=2)
    assert policy.policy_id == "p@2" and policy.version == 2
    assert snp_section(policy).measurements == frozenset({bytes.fromhex(M1)})
    assert dict(snp_section(policy).min_tcb) == {"bootloader": 1, "tee": 0, "snp": 8,
                                                  "microcode": 115}
    assert snp_section(policy).allowed_vmpls == frozenset({0, 1})
    assert snp_section(policy).host_data == frozenset({b"\xcd" * 32})
    assert snp_section(policy).allow_smt and policy.workload.require_init_data
    assert not snp_section(policy).allow_provisional_firmware
    assert policy.references == () and policy.conditions == ()
    assert policy.source == str(tmp_path / "policy.yaml")


def test_version_is_assigned_not_written(tmp_path: Path) -> None:
    """Without a version the policy is @0; with_version re-labels it; a version field is
    refused (the store assigns versions)."""
    policy = load_policy(write_doc(tmp_path, VALID))
    assert policy.policy_id == "p@0"
    stored = policy.with_version(5)
    assert stored.policy_id == "p@5" and stored.digest == policy.digest
    assert stored.rules == policy.rules
    err = refused(write_doc(tmp_path, VALID.replace("name: p\n", "name: p\nversion: 2\n")))
    assert "unknown field 'version'" in err.reason


def test_optional_switches_default_to_strict(tmp_path: Path) -> None:
    """Omitted switches take the strict value (no debug, VMPL 0, no SMT, no migration agent,
    no init-data requirement)."""
    text = ("kind: AppraisalPolicy\nname: m\nplatform: sev-snp\nsnp:\n"
            f'  measurements: ["{M1}"]\n  min_tcb: {{}}\n')
    policy = load_policy(write_doc(tmp_path, text))
    snp = snp_section(policy)
    assert not snp.allow_debug and not snp.allow_smt and not snp.allow_migration_agent
    assert snp.allowed_vmpls == frozenset({0})
    assert not snp.host_data
    assert policy.workload == WorkloadPolicy()
    assert policy.early_warning.snp_min_tcb is None
    assert policy.early_warning.min_tcb_date is None


def test_empty_measurement_list_is_refused(tmp_path: Path) -> None:
    """An empty measurement list is MALFORMED naming the field and the line."""
    with pytest.raises(Malformed) as exc:
        load_policy(write_doc(tmp_path, VALID.replace(f'["{M1}"]', "[]")))
    assert "snp.measurements" in exc.value.reason and exc.value.actual == "list of 0"


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
    path = write_doc(tmp_path, text)
    err = refused(path)
    assert err.reason.startswith(f"{path}:{line_of(text, field + ':')}: ")
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
        ("platform: sev-snp", "platform: keystone", "platform", "sev-snp", "keystone"),
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
    path = write_doc(tmp_path, text)
    err = refused(path)
    assert err.reason.startswith(f"{path}:{line_of(text, new.partition(chr(10))[0])}: ")
    assert f"'{key}'" in err.reason
    assert expected in err.expected
    assert found in err.actual


@pytest.mark.parametrize(("section", "field"), [("snp:", "snp"), ("kind:", "kind")])
def test_missing_section_is_malformed(section: str, field: str) -> None:
    """A policy without its kind or its platform section is MALFORMED naming the field."""
    start = VALID.index(section)
    end = VALID.index("workload:") if section == "snp:" else VALID.index("name:")
    err = refused_raw((VALID[:start] + VALID[end:]).encode())
    assert f"missing field '{field}'" in err.reason and err.actual == "absent"


def test_missing_measurements_without_binding_is_malformed_with_line(tmp_path: Path) -> None:
    """The measurement list is required (no implicit accept-all) unless a reference binding
    covers evidence.measurement; the error points at the snp section."""
    text = VALID.replace(f'  measurements: ["{M1}"]\n', "")
    path = write_doc(tmp_path, text)
    err = refused(path)
    assert err.reason.startswith(f"{path}:{line_of(text, 'snp:')}: ")
    assert "missing field 'measurements'" in err.reason and err.actual == "absent"
    # A binding of another claim does not count.
    raw = snp_policy_yaml(measurements=None, reference_values=[("evidence.host_data", "hd")])
    assert "missing field 'measurements'" in refused_raw(raw).reason


def test_reference_binding_satisfies_measurements() -> None:
    """A binding of evidence.measurement replaces the typed list: measurements compiles to None
    and the binding carries its set and line."""
    raw = snp_policy_yaml(measurements=None,
                          reference_values=[("evidence.measurement", "snp-launch")])
    policy = compiled(raw)
    assert snp_section(policy).measurements is None
    line = line_of(raw.decode(), "claim: evidence.measurement")
    assert policy.references == (ReferenceBinding("evidence.measurement", "snp-launch", line),)
    # Both given: both are checked.
    both = compiled(snp_policy_yaml(reference_values=[("evidence.measurement", "snp-launch")]))
    assert snp_section(both).measurements == frozenset({DEFAULT_MEASUREMENT})


def test_reference_bindings_satisfy_tdx_and_sgx_identity() -> None:
    """evidence.mr_td replaces tdx.mrtd; evidence.mr_enclave or evidence.mr_signer replaces the
    SGX MRENCLAVE / signer rules (both None)."""
    tdx = compiled(tdx_policy_yaml(mrtd=None, reference_values=[("evidence.mr_td", "tds")]))
    assert tdx_section(tdx).mrtd is None
    for claim in ("evidence.mr_enclave", "evidence.mr_signer"):
        sgx = compiled(sgx_policy_yaml(mrenclave=None, reference_values=[(claim, "enclaves")]))
        assert sgx_section(sgx).mrenclave is None and sgx_section(sgx).signer is None
    assert "missing field 'mrtd'" in refused_raw(tdx_policy_yaml(mrtd=None)).reason
    err = refused_raw(sgx_policy_yaml(mrenclave=None,
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
    err = refused_raw(raw)
    assert err.reason.startswith(f"t.yaml:{line_of(raw.decode(), 'claim: ' + claim)}: ")
    assert what in err.reason


def test_duplicate_reference_claim_is_malformed() -> None:
    """A claim is bound to one set only; the second binding is refused with both lines."""
    raw = snp_policy_yaml(reference_values=[("evidence.measurement", "a"),
                                            ("workload.images", "imgs"),
                                            ("evidence.measurement", "b")])
    err = refused_raw(raw)
    lines = [i for i, line in enumerate(raw.decode().splitlines(), 1)
             if "claim: evidence.measurement" in line]
    assert err.reason.startswith(f"t.yaml:{lines[1]}: claim bound twice (first on line "
                                 f"{lines[0]})")


def test_workload_section_compiles() -> None:
    """names and approved_images compile to sets; absent is None (not checked); an empty list
    is refused."""
    image = "sha256:" + "ab" * 32
    policy = compiled(tdx_policy_yaml(workload={"require_init_data": True, "names": ["demo"],
                                                "approved_images": [image]}))
    assert policy.workload == WorkloadPolicy(True, frozenset({"demo"}), frozenset({image}))
    assert compiled(snp_policy_yaml()).workload == WorkloadPolicy(False, None, None)
    with pytest.raises(Malformed, match=r"workload\.names"):
        compiled(snp_policy_yaml(workload={"names": []}))


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
    err = refused_raw(snp_policy_yaml(workload=workload))
    assert f"'{where}'" in err.reason and expected in err.expected


def test_sgx_policy_cannot_require_init_data() -> None:
    """SGX has no init-data register: workload rules that could never pass are refused."""
    for workload in ({"require_init_data": True}, {"names": ["demo"]},
                     {"approved_images": ["sha256:" + "ab" * 32]}):
        err = refused_raw(sgx_policy_yaml(workload=workload))
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
    assert policy.conditions[0].line == line_of(raw.decode(), "when: '!evidence")
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
    err = refused_raw(raw)
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
    err = refused_raw(raw)
    lines = [i for i, line in enumerate(raw.decode().splitlines(), 1) if "name: a" in line]
    assert err.reason.startswith(f"t.yaml:{lines[1]}: duplicate condition name (first on line "
                                 f"{lines[0]})")


def test_condition_category_is_limited() -> None:
    """A condition may only deny as PLATFORM_POLICY, TCB_POLICY or MEASUREMENT."""
    err = refused_raw(snp_policy_yaml(conditions=[
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
    err = refused_raw(snp_policy_yaml(tcb_early_warning={"min_tcb_date": date}))
    assert "min_tcb_date" in err.reason
    err = refused_raw(tdx_policy_yaml(tcb_early_warning={"snp_min_tcb": {"snp": 1}}))
    assert "snp_min_tcb" in err.reason
    err = refused_raw(tdx_policy_yaml(tcb_early_warning={"min_tcb_date": "2026-09-01"}))
    assert "time zone" in err.expected


def test_unreadable_and_invalid_yaml_are_malformed(tmp_path: Path) -> None:
    """A missing file and a syntactically broken file are MALFORMED naming the file."""
    missing = refused(tmp_path / "nope.yaml")
    assert "nope.yaml" in missing.reason and missing.rule == "policy.file"
    broken = refused(write_doc(tmp_path, "kind: AppraisalPolicy\nname: [p\n"))
    assert "policy.yaml:" in broken.reason and "not valid YAML" in broken.reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_malformed(raw: bytes) -> None:
    """Arbitrary document bytes either compile or raise Malformed, nothing else."""
    try:
        parse_policy(raw, "fuzz.yaml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED




@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["allow_debug", "allow_smt", "allowed_vmpls", "min_tcb",
                                        "host_data", "require_init_data", "measurements"]),
                       ANY_VALUE))
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
    err = refused_raw(raw)
    assert "'snp'" in err.reason and "not allowed" in err.reason


def test_asking_for_another_platforms_rules_is_malformed(tmp_path: Path) -> None:
    """tdx_section / sgx_section of an SNP policy is MALFORMED naming both platforms."""
    policy = load_policy(write_doc(tmp_path, VALID))
    for accessor, platform in ((tdx_section, "tdx"), (sgx_section, "sgx")):
        with pytest.raises(Malformed) as exc:
            accessor(policy)
        assert (exc.value.expected, exc.value.actual) == (platform, "sev-snp")


def test_builders_compile_to_their_defaults() -> None:
    """The tests' policy builders produce valid minimal policies."""
    assert snp_section(compiled(snp_policy_yaml())).measurements == frozenset({DEFAULT_MEASUREMENT})
    assert tdx_section(compiled(tdx_policy_yaml())).mrtd == frozenset({DEFAULT_MRTD})
    sgx = compiled(sgx_policy_yaml())
    assert isinstance(sgx, AppraisalPolicy) and sgx.policy_id == "sgx-test@1"
    assert sgx_section(sgx).mrenclave == frozenset({DEFAULT_MRENCLAVE})


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
        assert dict(snp_section(policy).min_tcb) == dict(base.min_tcb)
    else:
        rules = tdx_section(policy) if tee == "tdx" else sgx_section(policy)
        assert rules.tcb.out_of_date_grace_until == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
        assert rules.tcb.allowed_advisories == frozenset({"INTEL-SA-00828"})
    if tee == "tdx":
        assert tdx_section(policy).required_images == (DEMO_IMAGE,)
        assert policy.workload.names == frozenset({"demo"})
        assert [r.claim for r in policy.references] == ["workload.images"]
