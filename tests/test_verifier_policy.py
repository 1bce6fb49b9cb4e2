"""Appraisal policy loading: example files, strict schema, typed Malformed errors."""

from __future__ import annotations

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
    assert policy.platform == "sev-snp"
    assert policy.snp.measurements
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
        ('platform = "sev-snp"', 'platform = "tdx"', "policy.platform", "sev-snp", "tdx"),
        ('name = "p"', 'name = "a b"', "policy.name", "A-Za-z0-9", "a b"),
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
