"""Strict YAML policy documents: hostile YAML refused with a line, schema errors in plain words."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.document import (
    KINDS,
    MAX_BYTES,
    SCHEMAS,
    document_kind,
    load_document,
    read_document,
    schema,
    schema_for_kind,
)
from keybroker.errors import Category, Malformed
from keybroker.schema_wording import INSTANT

RULES = b"""\
kind: ReleaseRules
name: release-rules
rules:
  - name: demo
    keys: "demo/*"
    policy: snp-demo
    accept_warning: true
"""
M48 = "5d" * 48
SNP = f"""\
kind: AppraisalPolicy
name: snp-demo
platform: sev-snp
snp:
  measurements: ["{M48}"]
  min_tcb: {{bootloader: 0, microcode: 2}}
""".encode()
TDX = f"""\
kind: AppraisalPolicy
name: tdx-demo
platform: tdx
tdx:
  mrtd: ["{M48}"]
  out_of_date_grace_until: WHEN
""".encode()


def _refused(raw: bytes, schema_name: str = "release-rules") -> Malformed:
    with pytest.raises(Malformed) as exc:
        load_document(raw, "doc.yaml", schema_name)
    assert exc.value.category is Category.MALFORMED
    return exc.value


def test_valid_document_loads() -> None:
    """A valid document keeps its bytes, plain data, digest and per-node lines."""
    doc = load_document(RULES, "rules.yaml", "release-rules")
    assert doc.raw == RULES
    assert doc.kind == "ReleaseRules"
    assert doc.data["rules"] == [{"name": "demo", "keys": "demo/*", "policy": "snp-demo",
                                  "accept_warning": True}]
    assert len(doc.digest) == 64
    assert doc.line(("rules", 0, "policy")) == 6
    assert doc.line(("rules", 0)) == 4
    assert doc.line(("rules", 0, "when")) == 4  # absent: nearest ancestor


def test_fail_names_file_line_and_path() -> None:
    """Document.fail builds a Malformed with file:line, dotted path and a described value."""
    doc = load_document(RULES, "rules.yaml", "release-rules")
    err = doc.fail(("rules", 0, "keys"), "bad pattern", "a pattern", "demo/*")
    assert err.reason == "rules.yaml:5: bad pattern at 'rules[0].keys'"
    assert err.rule == "policy.schema"
    assert err.expected == "a pattern"
    assert err.actual == "str 'demo/*'"


@pytest.mark.parametrize(("old", "new", "line", "what", "expected", "actual"), [
    (b"    policy: snp-demo\n", b"    policy: snp-demo\n    foo: 1\n", 7,
     "unknown field 'foo' at 'rules[0]'",
     "one of: accept_warning, keys, name, policy, version, when",
     "foo"),
    (b"accept_warning: true", b"accept_warning: 1", 7, "wrong type at 'rules[0].accept_warning'",
     "boolean", "int 1"),
    (b"policy: snp-demo", b"policy: 3", 6, "wrong type at 'rules[0].policy'", "string",
     "int 3"),
    (b"policy: snp-demo", b"policy: -bad", 6, "invalid value at 'rules[0].policy'",
     "1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", "str '-bad'"),
    (b"kind: ReleaseRules", b"kind: Rules", 1, "value not allowed at 'kind'", "ReleaseRules",
     "str 'Rules'"),
    (b"    keys: \"demo/*\"\n", b"", 4, "missing field 'keys' at 'rules[0]'", "field 'keys'",
     "absent"),
])
def test_schema_errors_are_worded_for_people(old: bytes, new: bytes, line: int, what: str,
                                             expected: str, actual: str) -> None:
    """Unknown field, wrong type, pattern, const and missing field read as plain sentences."""
    err = _refused(RULES.replace(old, new))
    assert err.reason == f"doc.yaml:{line}: {what}"
    assert (err.expected, err.actual) == (expected, actual)
    assert err.rule == "policy.schema"


def test_enum_error_lists_choices() -> None:
    """An enum violation says "one of: a, b, c"."""
    err = _refused(SNP.replace(b"platform: sev-snp", b"platform: snp"), "appraisal-policy")
    assert err.reason == "doc.yaml:3: value not allowed at 'platform'"
    assert err.expected == ("one of: sev-snp, tdx, sgx, tpm, maa, az-snp-vtpm, az-tdx-vtpm, "
                            "nitro")


def test_pattern_error_uses_its_description() -> None:
    """A hex pattern failure explains the format (96 hex digits)."""
    err = _refused(SNP.replace(M48.encode(), b"xyz"), "appraisal-policy")
    assert err.reason == "doc.yaml:5: invalid value at 'snp.measurements[0]'"
    assert err.expected == "96 hex digits (48 bytes)"


def test_integer_is_never_bool_or_float() -> None:
    """``true`` and ``1.0`` are not integers."""
    for bad in (b"true", b"1.0"):
        err = _refused(SNP.replace(b"bootloader: 0", b"bootloader: " + bad), "appraisal-policy")
        assert err.expected == "integer"


def test_smallest_line_reported() -> None:
    """With several errors, the one on the smallest line is reported."""
    raw = RULES.replace(b"policy: snp-demo", b"policy: 3").replace(b"name: release-rules",
                                                                   b"name: '-x'")
    assert _refused(raw).reason.startswith("doc.yaml:2: ")


def test_other_platform_section_refused() -> None:
    """An SNP policy may not carry a tdx section (if/then on platform)."""
    err = _refused(SNP + b"tdx: {}\n", "appraisal-policy")
    assert err.reason == ("doc.yaml:7: field 'tdx' is not allowed when platform is 'sev-snp' "
                          "at 'tdx'")


def test_missing_platform_section_refused() -> None:
    """The platform's own section is required, and says why."""
    err = _refused(b"kind: AppraisalPolicy\nname: x\nplatform: tdx\n", "appraisal-policy")
    assert err.reason == "doc.yaml:1: missing field 'tdx' at '(top level)'"
    assert err.expected == "field 'tdx' when platform is 'tdx'"


@pytest.mark.parametrize("when", [b"2026-06-30T00:00:00Z", b"2026-06-30T02:00:00+02:00",
                                  b"'2026-06-30T00:00:00Z'", b'"2026-06-30T00:00:00.000Z"'])
def test_instants_become_utc_datetimes(when: bytes) -> None:
    """Zoned timestamps, unquoted or as RFC 3339 strings, become aware UTC datetimes."""
    doc = load_document(TDX.replace(b"WHEN", when), "tdx.yaml", "appraisal-policy")
    tdx = doc.data["tdx"]
    assert isinstance(tdx, dict)
    assert tdx["out_of_date_grace_until"] == datetime(2026, 6, 30, tzinfo=UTC)
    assert tdx["out_of_date_grace_until"].tzinfo is UTC


@pytest.mark.parametrize("when", [b"2026-06-30", b"2026-06-30T00:00:00", b"'2026-06-30'",
                                  b"'2026-06-30T00:00:00'", b"'soon'", b"5"])
def test_instants_need_a_time_zone(when: bytes) -> None:
    """A date, a zone-less timestamp or another value is refused where an instant is needed."""
    err = _refused(TDX.replace(b"WHEN", when), "appraisal-policy")
    assert err.reason.startswith("doc.yaml:6: ")
    assert err.expected == INSTANT
    assert "date-time with a time zone" in err.expected


def test_zoned_timestamp_in_string_field_stays_a_string() -> None:
    """Outside date-time fields an unquoted instant is kept as its RFC 3339 string."""
    raw = SNP + b"description: 2026-01-01T00:00:00Z\n"
    doc = load_document(raw, "d.yaml", "appraisal-policy")
    assert doc.data["description"] == "2026-01-01T00:00:00Z"


BOMB = b"""\
kind: ReleaseRules
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


@pytest.mark.parametrize(("raw", "line", "words"), [
    (BOMB, 2, "anchors are not allowed"),
    (RULES + b"name: again\n", 8, "duplicate key 'name' (first on line 2)"),
    (RULES + b"x: !!python/object:os.system [echo]\n", 8, "explicit tags are not allowed"),
    (RULES + b"x: !!binary aGVsbG8=\n", 8, "explicit tags are not allowed"),
    (RULES + b"x: !custom 1\n", 8, "explicit tags are not allowed"),
    (RULES + b"x: *nothing\n", 8, "aliases are not allowed"),
    (RULES + b"---\nkind: ReleaseRules\n", 8, "not valid YAML"),
    (RULES + b"1: one\n", 8, "keys must be strings"),
    (RULES + b"? [a, b]\n: 1\n", 8, "keys must be strings"),
    (RULES + b"<<: {a: 1}\n", 8, "merge keys (<<) are not allowed"),
    (RULES + b"x: yes\n", 8, "ambiguous boolean 'yes'"),
    (RULES + b"x: 0777\n", 8, "ambiguous integer '0777'"),
    (RULES + b"x: 1:30\n", 8, "ambiguous integer '1:30'"),
    (RULES + b"x: .nan\n", 8, "non-finite number"),
    (RULES + b"x: [1, 2\n", 9, "not valid YAML"),
    (RULES + b"x: \x01\n", 8, "not valid YAML"),
    (RULES + b"x: \xff\n", 8, "not valid UTF-8"),
    (b"", 1, "empty document"),
    (b"[" * 100 + b"]" * 100, 1, "nesting deeper than 64 levels"),
])
def test_hostile_yaml_refused_with_line(raw: bytes, line: int, words: str) -> None:
    """Alias bombs, duplicate keys, tags, several documents and YAML 1.1 traps are refused."""
    err = _refused(raw)
    assert err.reason.startswith(f"doc.yaml:{line}: ")
    assert words in err.reason


def test_oversized_document_refused() -> None:
    """Documents over 1 MiB are refused before parsing."""
    err = _refused(RULES + b"#" * MAX_BYTES)
    assert "larger than 1 MiB" in err.reason


def test_top_level_must_be_mapping() -> None:
    """A list or scalar document is not a policy document."""
    assert "not a mapping" in _refused(b"- 1\n- 2\n").reason
    assert "not a mapping" in _refused(b"hello\n").reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_malformed(raw: bytes) -> None:
    """Arbitrary bytes either load or raise Malformed; nothing else escapes."""
    with contextlib.suppress(Malformed):
        load_document(raw, "fuzz.yaml", "release-rules")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="{}[]:,-&*!?|>'\"#%@` \n\tabc01.~<=", max_size=200))
def test_arbitrary_yaml_like_text_raises_only_malformed(text: str) -> None:
    """YAML punctuation soup either loads or raises Malformed."""
    with contextlib.suppress(Malformed):
        load_document(text.encode(), "fuzz.yaml", "appraisal-policy")


_KEYS = st.sampled_from([
    "kind", "name", "platform", "snp", "tdx", "sgx", "workload", "reference_values", "conditions",
    "tcb_early_warning", "measurements", "min_tcb", "mrtd", "mrenclave", "mrsigner", "claim",
    "set", "when", "rules", "keys", "policy", "values", "not_after", "expect", "evidence", "x"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.sampled_from([
    "AppraisalPolicy", "ReleaseRules", "PolicyTestCase", "ReferenceValues", "sev-snp", "tdx",
    "sgx", "deny", "evidence.measurement", M48, "2026-01-01T00:00:00Z", "x"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=15)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=8), st.sampled_from(SCHEMAS))
def test_schema_shaped_documents_raise_only_malformed(data: dict[str, object],
                                                      schema_name: str) -> None:
    """Near-miss documents built from schema field names load or raise Malformed only."""
    raw = yaml.safe_dump(data).encode()
    with contextlib.suppress(Malformed):
        load_document(raw, "fuzz.yaml", schema_name)


def test_document_kind() -> None:
    """The kind is read from any strict YAML document; its absence is Malformed."""
    assert document_kind(RULES, "r.yaml") == "ReleaseRules"
    with pytest.raises(Malformed):
        document_kind(b"name: x\n", "r.yaml")
    with pytest.raises(Malformed):
        document_kind(b"kind: [1]\n", "r.yaml")
    assert schema_for_kind("ReleaseRules") == "release-rules"
    with pytest.raises(Malformed):
        schema_for_kind("Nope")


def test_read_document_unreadable(tmp_path: Path) -> None:
    """A missing file is Malformed with rule policy.file."""
    with pytest.raises(Malformed) as exc:
        read_document(tmp_path / "missing.yaml", "release-rules")
    assert exc.value.rule == "policy.file"
    (tmp_path / "r.yaml").write_bytes(RULES)
    assert read_document(tmp_path / "r.yaml", "release-rules").source == str(tmp_path / "r.yaml")


def test_schemas_by_name() -> None:
    """Every schema name and kind resolves; unknown names are Malformed; copies are fresh."""
    assert set(KINDS.values()) == set(SCHEMAS)
    for name in SCHEMAS:
        assert schema(name)["$id"] == f"https://keybroker.dev/schemas/v1/{name}.json"
    first = schema("release-rules")
    first["title"] = "changed"
    assert schema("release-rules")["title"] != "changed"
    with pytest.raises(Malformed):
        schema("nope")
    with pytest.raises(Malformed):
        load_document(RULES, "r.yaml", "nope")
