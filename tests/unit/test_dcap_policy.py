"""TDX and SGX sections of appraisal policies: every key, strict defaults, typed Malformed
errors with file:line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from support.policy_checks import ANY_VALUE, line_of, refused, refused_raw, write_doc

from keybroker.errors import Category, Malformed
from verifier.dcap.policy import sgx_section, tdx_section
from verifier.policy.compile import (
    load_policy,
    parse_policy,
)

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
  allowed_advisories: [INTEL-SA-00615]
  out_of_date_grace_until: "2026-01-01T12:00:00+02:00"
  allow_missing_crl: false
"""


def test_tdx_policy_compiles_every_key(tmp_path: Path) -> None:
    """Every tdx key compiles into its typed value; require_init_data lives in workload."""
    policy = load_policy(write_doc(tmp_path, TDX_VALID), version=4)
    tdx = tdx_section(policy)
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
    policy = load_policy(write_doc(tmp_path, text))
    tdx = tdx_section(policy)
    assert tdx.tcb.accepted_statuses == frozenset({"UpToDate"})
    assert tdx.tcb.allowed_advisories == frozenset()
    assert tdx.tcb.out_of_date_grace_until is None and not tdx.tcb.allow_missing_crl
    assert not (tdx.allow_migratable or tdx.allow_perfmon or tdx.allow_profiling)
    assert tdx.require_sept_ve_disable and not policy.workload.require_init_data
    assert tdx.allowed_xfam is None and tdx.allowed_images is None
    assert tdx.required_images == () and all(r is None for r in tdx.rtmrs)


def test_sgx_policy_compiles_every_key(tmp_path: Path) -> None:
    """Every sgx key compiles; the quoted grace instant is converted to UTC."""
    sgx = sgx_section(load_policy(write_doc(tmp_path, SGX_VALID)))
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
    path = write_doc(tmp_path, source.replace(old, new, 1))
    err = refused(path)
    assert err.reason.startswith(f"{path}:")
    assert f"'{key}'" in err.reason
    assert expected in err.expected
    assert found in err.actual


@pytest.mark.parametrize(("source", "name"), [(TDX_VALID, "tdx"), (SGX_VALID, "sgx")])
def test_revoked_is_refused_with_line(tmp_path: Path, source: str, name: str) -> None:
    """No policy can accept a Revoked TCB: the status is refused at its line."""
    text = source.replace("[UpToDate, ", "[UpToDate, Revoked, ")
    path = write_doc(tmp_path, text)
    err = refused(path)
    assert err.reason.startswith(f"{path}:{line_of(text, 'Revoked')}: ")
    assert f"'{name}.accepted_tcb_statuses[1]'" in err.reason
    assert "Revoked" in err.actual and "Revoked" not in err.expected
    assert "UpToDate" in err.expected


@pytest.mark.parametrize("grace", ["2026-06-30", "2026-06-30T00:00:00", "2026-06-30 00:00"])
def test_bare_date_is_refused_for_grace(tmp_path: Path, grace: str) -> None:
    """The grace instant must carry a time zone: a bare date or a local time is refused at
    its line."""
    text = TDX_VALID.replace("2026-06-30T00:00:00Z", grace)
    path = write_doc(tmp_path, text)
    err = refused(path)
    assert err.reason.startswith(f"{path}:{line_of(text, 'out_of_date_grace_until')}: ")
    assert "'tdx.out_of_date_grace_until'" in err.reason
    assert "time zone" in err.expected


def test_sgx_policy_needs_mrenclave_or_signer() -> None:
    """An sgx section naming neither MRENCLAVE nor the signer triple is MALFORMED."""
    text = "kind: AppraisalPolicy\nname: e\nplatform: sgx\nsgx:\n  allow_missing_crl: false\n"
    err = refused_raw(text.encode())
    assert "'sgx'" in err.reason and "mrenclave" in err.reason + err.expected


def test_sgx_policy_with_only_one_rule(tmp_path: Path) -> None:
    """MRENCLAVE alone, or the signer triple alone, is a complete SGX policy."""
    only_enclave = SGX_VALID.replace(f'  mrsigner: ["{"bb" * 32}"]\n', "").replace(
        "  isv_prod_id: 7\n", "").replace("  min_isv_svn: 3\n", "")
    sgx = sgx_section(load_policy(write_doc(tmp_path, only_enclave, "a.yaml")))
    assert sgx.signer is None and sgx.mrenclave == frozenset({b"\xaa" * 32})
    only_signer = SGX_VALID.replace(f'  mrenclave: ["{"aa" * 32}"]\n', "")
    sgx = sgx_section(load_policy(write_doc(tmp_path, only_signer, "b.yaml")))
    assert sgx.mrenclave is None and sgx.signer is not None


def test_absent_optional_lists_compile_to_unchecked(tmp_path: Path) -> None:
    """Absent register and module lists compile to None (not checked), never to a set."""
    text = f'kind: AppraisalPolicy\nname: t\nplatform: tdx\ntdx:\n  mrtd: ["{TD}"]\n'
    tdx = tdx_section(load_policy(write_doc(tmp_path, text)))
    assert tdx.rtmrs == (None,) * 4
    assert (tdx.mrseam, tdx.mrsignerseam, tdx.mrowner, tdx.mrownerconfig) == (None,) * 4


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["mrtd", "accepted_tcb_statuses", "allowed_advisories",
                                        "out_of_date_grace_until", "allowed_xfam", "rtmr1",
                                        "required_images", "allow_profiling", "mrenclave"]),
                       st.one_of(ANY_VALUE, st.lists(st.text(max_size=6), max_size=2))))
def test_arbitrary_tdx_values_raise_only_malformed(values: dict[str, object]) -> None:
    """Arbitrary values in the tdx section compile or raise Malformed, nothing else."""
    doc = {"kind": "AppraisalPolicy", "name": "f", "platform": "tdx", "tdx": values}
    try:
        parse_policy(yaml.safe_dump(doc).encode(), "fuzz.yaml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


