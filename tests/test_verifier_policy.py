"""Appraisal policy loading: example files, strict schema, typed Malformed errors."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.errors import Category, Malformed
from verifier.policy import load_policy, parse_policy

CONFIG = Path(__file__).resolve().parent.parent / "config"
M1 = "ab" * 48

VALID = f"""
[policy]
name = "p"
version = 2
platform = "sev-snp"
[snp]
measurements = ["{M1}"]
min_tcb = {{ bootloader = 1, tee = 0, snp = 8, microcode = 115 }}
allow_debug = false
allowed_vmpls = [0, 1]
allow_migration_agent = false
allow_smt = true
host_data = ["{'cd' * 32}"]
require_init_data = true
"""


def _write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG / "policies").glob("*.toml")))
def test_example_policies_load(name: str) -> None:
    """Every example policy in config/policies loads and names itself name@version."""
    policy = load_policy(CONFIG / "policies" / name)
    assert policy.policy_id == f"{policy.name}@{policy.version}"
    prefix = name.partition("-")[0]
    assert policy.platform == {"snp": "sev-snp", "tdx": "tdx", "sgx": "sgx"}[prefix]
    if policy.platform == "sev-snp":
        assert policy.snp.measurements
    elif policy.platform == "tdx":
        assert policy.tdx.mrtd
    else:
        assert policy.sgx.mrenclave or policy.sgx.signer
    assert policy.digest == hashlib.sha256((CONFIG / "policies" / name).read_bytes()).hexdigest()


def test_valid_policy_compiles(tmp_path: Path) -> None:
    """A valid policy compiles into sets of bytes and a TCB floor mapping."""
    policy = load_policy(_write(tmp_path, VALID))
    assert policy.policy_id == "p@2"
    assert policy.snp.measurements == frozenset({bytes.fromhex(M1)})
    assert dict(policy.snp.min_tcb) == {"bootloader": 1, "tee": 0, "snp": 8, "microcode": 115}
    assert policy.snp.allowed_vmpls == frozenset({0, 1})
    assert policy.snp.host_data == frozenset({b"\xcd" * 32})
    assert policy.snp.allow_smt and policy.snp.require_init_data
    assert not policy.snp.allow_provisional_firmware


def test_optional_switches_default_to_strict(tmp_path: Path) -> None:
    """Omitted switches take the strict value (no debug, VMPL 0, no SMT, no migration agent)."""
    text = f'[policy]\nname="m"\nversion=1\nplatform="sev-snp"\n[snp]\nmeasurements=["{M1}"]\n' \
           "min_tcb={}\n"
    snp = load_policy(_write(tmp_path, text)).snp
    assert not snp.allow_debug and not snp.allow_smt and not snp.allow_migration_agent
    assert snp.allowed_vmpls == frozenset({0})
    assert not snp.host_data and not snp.require_init_data


def test_empty_measurement_list_loads_but_accepts_nothing(tmp_path: Path) -> None:
    """An empty measurement list is legal and compiles to the empty set."""
    policy = load_policy(_write(tmp_path, VALID.replace(f'["{M1}"]', "[]")))
    assert policy.snp.measurements == frozenset()


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("allow_smt = true", "allow_smt = true\nallow_everything = true", "snp.allow_everything"),
        ('platform = "sev-snp"', 'platform = "sev-snp"\nowner = "x"', "policy.owner"),
        ("microcode = 115", "microcode = 115, fw = 1", "snp.min_tcb.fw"),
    ],
)
def test_unknown_key_is_malformed(tmp_path: Path, old: str, new: str, key: str) -> None:
    """An unknown key is rejected as MALFORMED naming the file and the key."""
    path = _write(tmp_path, VALID.replace(old, new))
    with pytest.raises(Malformed) as exc:
        load_policy(path)
    assert exc.value.category is Category.MALFORMED
    assert str(path) in exc.value.reason
    assert key in exc.value.reason


@pytest.mark.parametrize(
    ("old", "new", "key", "expected", "found"),
    [
        ("allow_debug = false", 'allow_debug = "no"', "snp.allow_debug", "boolean", "str"),
        ("allow_debug = false", "allow_debug = 0", "snp.allow_debug", "boolean", "int"),
        ("version = 2", "version = true", "policy.version", "integer", "bool"),
        ("version = 2", 'version = "2"', "policy.version", "integer", "str"),
        ("allowed_vmpls = [0, 1]", "allowed_vmpls = 0", "snp.allowed_vmpls", "array", "int"),
        ("allowed_vmpls = [0, 1]", "allowed_vmpls = [4]", "snp.allowed_vmpls", "0..3", "4"),
        ("snp = 8", "snp = 256", "snp.min_tcb.snp", "0..255", "256"),
        ("snp = 8", "snp = 8.0", "snp.min_tcb.snp", "integer", "float"),
        (f'["{M1}"]', f'["{M1[:-2]}"]', "snp.measurements", "96 hex digits", "94"),
        (f'["{M1}"]', f'["{"zz" * 48}"]', "snp.measurements", "96 hex digits", "zz"),
        (f'["{M1}"]', "[1]", "snp.measurements", "hex digits", "int"),
        ('platform = "sev-snp"', 'platform = "nitro"', "policy.platform", "sev-snp", "nitro"),
        ('name = "p"', 'name = "a b"', "policy.name", "A-Za-z0-9", "a b"),
        ('name = "p"', 'name = "p\\n"', "policy.name", "A-Za-z0-9", "p\\n"),
    ],
)
def test_wrong_type_or_value_is_malformed(
    tmp_path: Path, old: str, new: str, key: str, expected: str, found: str
) -> None:
    """A wrong type or value is MALFORMED with the key, the expected and the found value."""
    path = _write(tmp_path, VALID.replace(old, new))
    with pytest.raises(Malformed) as exc:
        load_policy(path)
    assert exc.value.category is Category.MALFORMED
    assert str(path) in exc.value.reason and key in exc.value.reason
    assert expected in exc.value.expected
    assert found in exc.value.actual


@pytest.mark.parametrize("section", ["[snp]", "[policy]"])
def test_missing_section_is_malformed(tmp_path: Path, section: str) -> None:
    """A policy without its [policy] or [snp] table is MALFORMED."""
    start = VALID.index(section)
    end = VALID.index("\n[", start + 1) if section == "[policy]" else len(VALID)
    with pytest.raises(Malformed) as exc:
        load_policy(_write(tmp_path, VALID[:start] + VALID[end:]))
    assert exc.value.category is Category.MALFORMED


def test_missing_measurements_is_malformed(tmp_path: Path) -> None:
    """The measurement list is required (no implicit accept-all)."""
    with pytest.raises(Malformed) as exc:
        load_policy(_write(tmp_path, VALID.replace(f'measurements = ["{M1}"]\n', "")))
    assert "snp.measurements" in exc.value.reason
    assert exc.value.actual == "absent"


def test_unreadable_and_invalid_toml_are_malformed(tmp_path: Path) -> None:
    """A missing file and a syntactically broken file are MALFORMED naming the file."""
    with pytest.raises(Malformed) as missing:
        load_policy(tmp_path / "nope.toml")
    assert "nope.toml" in missing.value.reason
    with pytest.raises(Malformed) as broken:
        load_policy(_write(tmp_path, "[policy\nname="))
    assert broken.value.category is Category.MALFORMED


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_malformed(raw: bytes) -> None:
    """Arbitrary document bytes either compile or raise Malformed, nothing else."""
    try:
        parse_policy(raw, "fuzz.toml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["allow_debug", "allow_smt", "allowed_vmpls", "min_tcb",
                                        "host_data", "require_init_data", "measurements"]),
                       st.one_of(st.booleans(), st.integers(-5, 300), st.text(max_size=5),
                                 st.lists(st.integers(-1, 5), max_size=3))))
def test_arbitrary_snp_values_raise_only_malformed(values: dict[str, object]) -> None:
    """Arbitrary values in the [snp] table compile or raise Malformed, nothing else."""
    def dump(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        return str(v)

    body = "\n".join(f"{k} = {dump(v)}" for k, v in values.items())
    text = f'[policy]\nname="f"\nversion=1\nplatform="sev-snp"\n[snp]\n{body}\n'
    try:
        parse_policy(text.encode(), "fuzz.toml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


def test_snp_section_under_another_platform_is_malformed(tmp_path: Path) -> None:
    """A [snp] section in a policy that says platform = "tdx" is refused (unknown key snp)."""
    path = _write(tmp_path, VALID.replace('platform = "sev-snp"', 'platform = "tdx"'))
    with pytest.raises(Malformed) as exc:
        load_policy(path)
    assert "'snp'" in exc.value.reason and "tdx" in exc.value.expected


def test_asking_for_another_platforms_rules_is_malformed(tmp_path: Path) -> None:
    """policy.tdx / policy.sgx of an SNP policy is MALFORMED naming both platforms."""
    policy = load_policy(_write(tmp_path, VALID))
    for attribute, platform in (("tdx", "tdx"), ("sgx", "sgx")):
        with pytest.raises(Malformed) as exc:
            getattr(policy, attribute)
        assert (exc.value.expected, exc.value.actual) == (platform, "sev-snp")


# --- TDX and SGX sections -----------------------------------------------------------------

TD = "11" * 48
IMAGE = "sha256:" + "ab" * 32
TDX_VALID = f"""
[policy]
name = "td"
version = 4
platform = "tdx"
[tdx]
mrtd = ["{TD}"]
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
allowed_advisories = ["INTEL-SA-00837"]
out_of_date_grace_until = 2026-06-30T00:00:00Z
allow_missing_crl = true
rtmr0 = ["{'00' * 48}"]
rtmr1 = ["{'01' * 48}"]
rtmr2 = ["{'02' * 48}"]
rtmr3 = ["{'03' * 48}"]
mrseam = ["{'04' * 48}"]
mrsignerseam = ["{'00' * 48}"]
mrowner = ["{'05' * 48}"]
mrownerconfig = ["{'06' * 48}"]
allowed_xfam = ["e7", "0x00000000000602e7", 231]
allow_migratable = true
allow_perfmon = true
allow_profiling = true
require_sept_ve_disable = false
require_init_data = true
required_images = ["{IMAGE}"]
allowed_images = ["{IMAGE}"]
"""
SGX_VALID = f"""
[policy]
name = "enclave"
version = 1
platform = "sgx"
[sgx]
mrenclave = ["{'aa' * 32}"]
mrsigner = ["{'bb' * 32}"]
isv_prod_id = 7
min_isv_svn = 3
accepted_tcb_statuses = ["UpToDate", "ConfigurationNeeded"]
allowed_advisories = []
out_of_date_grace_until = "2026-01-01T12:00:00+02:00"
allow_missing_crl = false
"""


def test_tdx_policy_compiles_every_key(tmp_path: Path) -> None:
    """Every [tdx] key compiles into its typed value."""
    policy = load_policy(_write(tmp_path, TDX_VALID))
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
    assert not tdx.require_sept_ve_disable and tdx.require_init_data
    assert tdx.required_images == (IMAGE,)
    assert tdx.allowed_images == frozenset({IMAGE})


def test_tdx_switches_default_to_strict(tmp_path: Path) -> None:
    """With only mrtd given, every [tdx] switch takes its strict value."""
    text = f'[policy]\nname="t"\nversion=1\nplatform="tdx"\n[tdx]\nmrtd=["{TD}"]\n'
    tdx = load_policy(_write(tmp_path, text)).tdx
    assert tdx.tcb.accepted_statuses == frozenset({"UpToDate"})
    assert tdx.tcb.allowed_advisories == frozenset()
    assert tdx.tcb.out_of_date_grace_until is None and not tdx.tcb.allow_missing_crl
    assert not (tdx.allow_migratable or tdx.allow_perfmon or tdx.allow_profiling)
    assert tdx.require_sept_ve_disable and not tdx.require_init_data
    assert tdx.allowed_xfam is None and tdx.allowed_images is None
    assert tdx.required_images == () and all(not r for r in tdx.rtmrs)


def test_sgx_policy_compiles_every_key(tmp_path: Path) -> None:
    """Every [sgx] key compiles; the grace date string is converted to UTC."""
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
        ("tdx", f'mrtd = ["{TD}"]\n', "", "tdx.mrtd", "present", "absent"),
        ("tdx", f'mrtd = ["{TD}"]', f'mrtd = "{TD}"', "tdx.mrtd", "array", "str"),
        ("tdx", f'mrtd = ["{TD}"]', f'mrtd = ["{TD[:64]}"]', "tdx.mrtd", "96 hex", "64"),
        ("tdx", '"UpToDate", "SWHardeningNeeded"', '"UpToDate", "Revoked"',
         "tdx.accepted_tcb_statuses", "other than Revoked", "Revoked"),
        ("tdx", '"UpToDate", "SWHardeningNeeded"', '"UpToDate", "Fine"',
         "tdx.accepted_tcb_statuses", "Intel TCB status", "Fine"),
        ("tdx", '["UpToDate", "SWHardeningNeeded"]', "1", "tdx.accepted_tcb_statuses",
         "array", "int"),
        ("tdx", '["UpToDate", "SWHardeningNeeded"]', "[1]", "tdx.accepted_tcb_statuses",
         "Intel TCB status", "int"),
        ("tdx", '["INTEL-SA-00837"]', "[837]", "tdx.allowed_advisories", "advisory id", "int"),
        ("tdx", '["INTEL-SA-00837"]', '["bad id"]', "tdx.allowed_advisories", "advisory id",
         "bad id"),
        ("tdx", "2026-06-30T00:00:00Z", "2026-06-30T00:00:00", "tdx.out_of_date_grace_until",
         "time zone", "datetime"),
        ("tdx", "2026-06-30T00:00:00Z", "2026-06-30", "tdx.out_of_date_grace_until",
         "time zone", "date"),
        ("tdx", "2026-06-30T00:00:00Z", '"2026-06-30"', "tdx.out_of_date_grace_until",
         "time zone", "str"),
        ("tdx", "2026-06-30T00:00:00Z", '"soon"', "tdx.out_of_date_grace_until", "time zone",
         "soon"),
        ("tdx", "2026-06-30T00:00:00Z", "20260630", "tdx.out_of_date_grace_until", "time zone",
         "int"),
        ("tdx", "allow_missing_crl = true", "allow_missing_crl = 1", "tdx.allow_missing_crl",
         "boolean", "int"),
        ("tdx", f'rtmr2 = ["{"02" * 48}"]', f'rtmr2 = ["{"02" * 32}"]', "tdx.rtmr2", "96 hex",
         "64"),
        ("tdx", f'rtmr3 = ["{"03" * 48}"]', "rtmr3 = [3]", "tdx.rtmr3", "hex", "int"),
        ("tdx", f'mrseam = ["{"04" * 48}"]', 'mrseam = ["xyz"]', "tdx.mrseam", "hex", "xyz"),
        ("tdx", f'mrsignerseam = ["{"00" * 48}"]', "mrsignerseam = true", "tdx.mrsignerseam",
         "array", "bool"),
        ("tdx", f'mrowner = ["{"05" * 48}"]', 'mrowner = ["05"]', "tdx.mrowner", "96 hex", "2"),
        ("tdx", f'mrownerconfig = ["{"06" * 48}"]', "mrownerconfig = [{}]",
         "tdx.mrownerconfig", "hex", "table"),
        ("tdx", '"e7", "0x00000000000602e7", 231', '"zz"', "tdx.allowed_xfam", "hex", "zz"),
        ("tdx", '"e7", "0x00000000000602e7", 231', "-1", "tdx.allowed_xfam", "2^64", "-1"),
        ("tdx", '"e7", "0x00000000000602e7", 231', "true", "tdx.allowed_xfam", "integer",
         "bool"),
        ("tdx", "allow_migratable = true", 'allow_migratable = "yes"', "tdx.allow_migratable",
         "boolean", "str"),
        ("tdx", "allow_perfmon = true", "allow_perfmon = 1", "tdx.allow_perfmon", "boolean",
         "int"),
        ("tdx", "allow_profiling = true", "allow_profiling = []", "tdx.allow_profiling",
         "boolean", "list"),
        ("tdx", "require_sept_ve_disable = false", "require_sept_ve_disable = 0",
         "tdx.require_sept_ve_disable", "boolean", "int"),
        ("tdx", "require_init_data = true", 'require_init_data = "true"',
         "tdx.require_init_data", "boolean", "str"),
        ("tdx", f'required_images = ["{IMAGE}"]', f'required_images = ["{IMAGE.upper()}"]',
         "tdx.required_images", "sha256:", "SHA256"),
        ("tdx", f'required_images = ["{IMAGE}"]', f'required_images = "{IMAGE}"',
         "tdx.required_images", "array", "str"),
        ("tdx", f'allowed_images = ["{IMAGE}"]', f'allowed_images = ["{IMAGE[:-2]}"]',
         "tdx.allowed_images", "sha256:", "sha256:"),
        ("tdx", f'allowed_images = ["{IMAGE}"]', f'allowed_images = ["{IMAGE}\\n"]',
         "tdx.allowed_images", "sha256:", "\\n"),
        ("tdx", '"e7", "0x00000000000602e7", 231', '"e7\\n"', "tdx.allowed_xfam", "hex",
         "e7"),
        ("tdx", "allow_perfmon = true", "allow_perfmon = true\nallow_debug = true",
         "tdx.allow_debug", "one of", "allow_debug"),
        ("sgx", "isv_prod_id = 7\n", "", "sgx.isv_prod_id", "together", "absent"),
        ("sgx", f'mrsigner = ["{"bb" * 32}"]\n', "", "sgx.mrsigner", "together", "absent"),
        ("sgx", "isv_prod_id = 7", "isv_prod_id = 70000", "sgx.isv_prod_id", "0..65535",
         "70000"),
        ("sgx", "isv_prod_id = 7", 'isv_prod_id = "7"', "sgx.isv_prod_id", "integer", "str"),
        ("sgx", "min_isv_svn = 3", "min_isv_svn = -1", "sgx.min_isv_svn", "0..65535", "-1"),
        ("sgx", "min_isv_svn = 3", "min_isv_svn = 3.5", "sgx.min_isv_svn", "integer", "float"),
        ("sgx", f'mrenclave = ["{"aa" * 32}"]', f'mrenclave = ["{"aa" * 48}"]', "sgx.mrenclave",
         "64 hex", "96"),
        ("sgx", f'mrsigner = ["{"bb" * 32}"]', 'mrsigner = "bb"', "sgx.mrsigner", "array",
         "str"),
        ("sgx", "allow_missing_crl = false", "allow_missing_crl = 0", "sgx.allow_missing_crl",
         "boolean", "int"),
        ("sgx", '"UpToDate", "ConfigurationNeeded"', '"Revoked"', "sgx.accepted_tcb_statuses",
         "other than Revoked", "Revoked"),
        ("sgx", "min_isv_svn = 3", "min_isv_svn = 3\nrtmr0 = []", "sgx.rtmr0", "one of",
         "rtmr0"),
    ],
)
def test_dcap_wrong_key_type_or_value_is_malformed(
    tmp_path: Path, text: str, old: str, new: str, key: str, expected: str, found: str
) -> None:
    """Each [tdx]/[sgx] key with a wrong type or value is MALFORMED naming file and key."""
    source = TDX_VALID if text == "tdx" else SGX_VALID
    assert old in source
    path = _write(tmp_path, source.replace(old, new, 1))
    with pytest.raises(Malformed) as exc:
        load_policy(path)
    assert exc.value.category is Category.MALFORMED
    assert str(path) in exc.value.reason and key in exc.value.reason
    assert expected in exc.value.expected
    assert found in exc.value.actual


def test_sgx_policy_needs_mrenclave_or_signer(tmp_path: Path) -> None:
    """An [sgx] section naming neither MRENCLAVE nor the signer triple is MALFORMED."""
    text = '[policy]\nname="e"\nversion=1\nplatform="sgx"\n[sgx]\nallow_missing_crl = false\n'
    with pytest.raises(Malformed) as exc:
        load_policy(_write(tmp_path, text))
    assert "sgx.mrenclave" in exc.value.reason and "mrsigner" in exc.value.expected


def test_sgx_policy_with_only_one_rule(tmp_path: Path) -> None:
    """MRENCLAVE alone, or the signer triple alone, is a complete SGX policy."""
    only_enclave = SGX_VALID.replace(f'mrsigner = ["{"bb" * 32}"]\n', "").replace(
        "isv_prod_id = 7\n", "").replace("min_isv_svn = 3\n", "")
    sgx = load_policy(_write(tmp_path, only_enclave, "a.toml")).sgx
    assert sgx.signer is None and sgx.mrenclave == frozenset({b"\xaa" * 32})
    only_signer = SGX_VALID.replace(f'mrenclave = ["{"aa" * 32}"]\n', "")
    sgx = load_policy(_write(tmp_path, only_signer, "b.toml")).sgx
    assert sgx.mrenclave is None and sgx.signer is not None


def test_empty_allow_lists_stay_fail_closed(tmp_path: Path) -> None:
    """mrtd = [] and allowed_images = [] load as empty sets (nothing accepted), not None."""
    text = ('[policy]\nname="t"\nversion=1\nplatform="tdx"\n[tdx]\nmrtd=[]\n'
            "allowed_images=[]\nallowed_xfam=[]\nrtmr3=[]\n")
    tdx = load_policy(_write(tmp_path, text)).tdx
    assert tdx.mrtd == frozenset() and tdx.allowed_images == frozenset()
    assert tdx.allowed_xfam == frozenset() and tdx.rtmrs[3] == frozenset()


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["mrtd", "accepted_tcb_statuses", "allowed_advisories",
                                        "out_of_date_grace_until", "allowed_xfam", "rtmr1",
                                        "required_images", "allow_profiling", "mrenclave"]),
                       st.one_of(st.booleans(), st.integers(-5, 300), st.text(max_size=8),
                                 st.lists(st.integers(-1, 5), max_size=3),
                                 st.lists(st.text(max_size=6), max_size=2))))
def test_arbitrary_tdx_values_raise_only_malformed(values: dict[str, object]) -> None:
    """Arbitrary values in the [tdx] table compile or raise Malformed, nothing else."""
    def dump(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(dump(x) for x in v) + "]"
        return str(v)

    body = "\n".join(f"{k} = {dump(v)}" for k, v in values.items())
    text = f'[policy]\nname="f"\nversion=1\nplatform="tdx"\n[tdx]\n{body}\n'
    try:
        parse_policy(text.encode(), "fuzz.toml")
    except Malformed as exc:
        assert exc.category is Category.MALFORMED
