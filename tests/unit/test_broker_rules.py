"""Broker release rules: YAML document, fnmatch matching, ANDed rules, warnings, CEL conditions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.paths import ROOT

from broker.rules import (
    ReleaseRule,
    ReleaseRules,
    Requirement,
    load_rules,
    parse_rules,
    sample_token_claims,
)
from keybroker.errors import Category, Malformed, PlatformPolicyViolation

RULES = b"""\
kind: ReleaseRules
name: release-rules
rules:
  - name: demo
    keys: "demo/*"
    policy: snp-demo
  - name: demo-db
    keys: "demo/db-*"
    policy: snp-strict
    accept_warning: true
  - name: lenient
    keys: "lenient/*"
    policy: snp-demo
    accept_warning: true
"""

CONDITIONAL = b"""\
kind: ReleaseRules
name: release-rules
rules:
  - name: demo
    keys: "demo/*"
    policy: snp-demo
    when: 'submod["ear.status"] == "affirming" && key.startsWith("demo/")'
  - name: secure-only
    keys: "demo/prod-*"
    policy: snp-demo
    when: '!result["keybroker.insecure"]'
  - name: other
    keys: "other/*"
    policy: tdx-demo
    when: 'submod["ear.appraisal-policy-id"] == "tdx-demo@1"'
"""


def _rules(tmp_path: Path, text: bytes = RULES) -> ReleaseRules:
    path = tmp_path / "rules.yaml"
    path.write_bytes(text)
    return load_rules(path)


def _claims(insecure: bool = False, status: str = "affirming") -> dict[str, object]:
    claims = sample_token_claims(["snp-demo", "tdx-demo"])
    claims["keybroker.insecure"] = insecure
    submods = claims["submods"]
    assert isinstance(submods, dict)
    submods["snp-demo"]["ear.status"] = status
    return claims


def test_single_rule_matches(tmp_path: Path) -> None:
    """A key matching one pattern requires that rule's policy, affirming only by default."""
    rules = _rules(tmp_path)
    assert rules.requirements(["demo/tls"]) == (Requirement("snp-demo", False),)


def test_all_matching_rules_apply(tmp_path: Path) -> None:
    """Every rule that matches a key applies; policies are sorted and deduplicated."""
    rules = _rules(tmp_path)
    assert rules.requirements(["demo/db-main"]) == (
        Requirement("snp-demo", False), Requirement("snp-strict", True))


def test_warning_accepted_only_if_every_rule_accepts(tmp_path: Path) -> None:
    """A policy required affirming by one key's rule stays affirming-only for the request."""
    rules = _rules(tmp_path)
    assert rules.requirements(["lenient/x"]) == (Requirement("snp-demo", True),)
    assert rules.requirements(["lenient/x", "demo/tls"]) == (Requirement("snp-demo", False),)


@pytest.mark.parametrize("key_id", ["other/key", "demo", "DEMO/tls", "xdemo/tls"])
def test_key_without_rule_denied(tmp_path: Path, key_id: str) -> None:
    """A key no rule matches (fnmatch is case-sensitive) is its own MALFORMED denial naming
    the key, from both the challenge check and the release requirements."""
    rules = _rules(tmp_path)
    for check in (rules.requirements, rules.check_known):
        with pytest.raises(Malformed) as exc:
            check(["demo/tls", key_id])
        assert exc.value.category is Category.MALFORMED
        assert exc.value.rule == "release.unknown-key"
        assert exc.value.actual == key_id
        assert f"unknown key id {key_id!r}" in exc.value.reason
    rules.check_known(["demo/tls"])  # a covered key passes


def test_empty_request_is_not_a_pass() -> None:
    """An empty rule set yields no pass for any key."""
    with pytest.raises(Malformed) as exc:
        ReleaseRules(()).requirements(["demo/a"])
    assert exc.value.rule == "release.unknown-key"
    assert ReleaseRule("demo/*", "p").matches("demo/a")


def test_identity_digest_and_version(tmp_path: Path) -> None:
    """Name, digest of the exact bytes, version 0 until stored, and with_version."""
    rules = _rules(tmp_path)
    assert rules.name == "release-rules"
    assert rules.digest == hashlib.sha256(RULES).hexdigest()
    assert rules.version == 0 and rules.document == RULES
    stored = rules.with_version(4)
    assert (stored.version, stored.rules_id, stored.rules) == (4, "release-rules@4", rules.rules)
    assert parse_rules(RULES, "mem.yaml", version=2).version == 2
    assert [(r.name, r.line) for r in rules.rules] == [("demo", 4), ("demo-db", 7),
                                                       ("lenient", 11)]


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "empty document"),
    (b"kind: ReleaseRules\nname: r\nrules: []\n", "wrong number of items at 'rules'"),
    (RULES.replace(b'    keys: "demo/*"\n', b""), "missing field 'keys'"),
    (RULES.replace(b"    policy: snp-strict\n", b""), "missing field 'policy'"),
    (RULES.replace(b"  - name: demo-db\n", b"  - keys2: x\n"), "unknown field 'keys2'"),
    (RULES.replace(b"policy: snp-strict", b"policy: 3"), "wrong type at 'rules[1].policy'"),
    (RULES.replace(b"accept_warning: true", b"accept_warning: 'yes'", 1), "wrong type"),
    (RULES.replace(b'keys: "demo/*"', b'keys: ""'), "wrong length"),
    (RULES.replace(b"name: lenient", b"name: demo"), "duplicate rule name at 'rules[2].name'"),
    (RULES + b"other: {x: 1}\n", "unknown field 'other'"),
    (b'[[rule]]\nkeys = "demo/*"\npolicy = "p"\n', "not valid YAML"),
    (RULES.replace(b"kind: ReleaseRules", b"kind: AppraisalPolicy"), "value not allowed"),
])
def test_malformed_rule_files(tmp_path: Path, raw: bytes, words: str) -> None:
    """Missing, unknown or mistyped fields, duplicates and the old TOML are MALFORMED."""
    with pytest.raises(Malformed) as exc:
        _rules(tmp_path, raw)
    assert exc.value.category is Category.MALFORMED
    assert words in exc.value.reason
    assert exc.value.reason.startswith(f"{tmp_path / 'rules.yaml'}:")


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing rules file is MALFORMED (rule policy.file)."""
    with pytest.raises(Malformed) as exc:
        load_rules(tmp_path / "nope.yaml")
    assert exc.value.rule == "policy.file"


@pytest.mark.parametrize(("when", "words"), [
    ("submod.nope == 1", "unknown field 'submod.nope'"),
    ("claims.x", "unknown variable 'claims'"),
    ('submod["ear.status"]', "not a boolean"),
    ("key + 1 == 2", "no such overload"),
    ("key ==", "not a valid CEL expression"),
])
def test_invalid_condition_refused_at_load(when: str, words: str) -> None:
    """A when that does not compile on the sample token is MALFORMED at its line."""
    raw = RULES.replace(b"    policy: snp-demo\n", b"    policy: snp-demo\n    when: '"
                        + when.replace("'", "''").encode() + b"'\n", 1)
    with pytest.raises(Malformed) as exc:
        parse_rules(raw, "r.yaml")
    assert exc.value.reason.startswith("r.yaml:7: invalid condition (")
    assert words in exc.value.reason
    assert exc.value.reason.endswith(" at 'rules[0].when'")


def test_conditions_pass() -> None:
    """Conditions of every matching rule that evaluate to true let the release go on."""
    rules = parse_rules(CONDITIONAL, "r.yaml")
    rules.check_conditions(["demo/tls", "demo/prod-db", "other/x", "unmatched"], _claims())


def test_condition_false_denies() -> None:
    """A false condition is PLATFORM_POLICY release.<rule>.when with the expression."""
    rules = parse_rules(CONDITIONAL, "r.yaml")
    with pytest.raises(PlatformPolicyViolation) as exc:
        rules.check_conditions(["demo/prod-db"], _claims(insecure=True))
    assert exc.value.rule == "release.secure-only.when"
    assert exc.value.expected == '!result["keybroker.insecure"]'
    assert exc.value.actual == "false"
    rules.check_conditions(["demo/tls"], _claims(insecure=True))  # no condition on insecure
    with pytest.raises(PlatformPolicyViolation) as exc:
        rules.check_conditions(["demo/tls"], _claims(status="warning"))
    assert exc.value.rule == "release.demo.when"


def test_condition_error_denies() -> None:
    """An evaluation error or a missing submod denies (fail closed)."""
    rules = parse_rules(CONDITIONAL, "r.yaml")
    claims = _claims()
    claims["keybroker.insecure"] = "no"
    with pytest.raises(PlatformPolicyViolation) as exc:
        rules.check_conditions(["demo/prod-db"], claims)
    assert exc.value.rule == "release.secure-only.when"
    assert exc.value.actual and exc.value.actual != "false"
    claims = _claims()
    del claims["submods"]["tdx-demo"]  # type: ignore[attr-defined]
    with pytest.raises(PlatformPolicyViolation) as exc:
        rules.check_conditions(["other/x"], claims)
    assert exc.value.rule == "release.other.when"
    assert "no result for policy tdx-demo" in exc.value.actual


def test_example_rules_file() -> None:
    """config/release-rules.yaml loads: demo/* and prod/*, prod refuses insecure results."""
    path = ROOT / "config" / "release-rules.yaml"
    rules = load_rules(path)
    assert rules.requirements(["demo/a"]) == (Requirement("snp-demo", False),)
    assert rules.requirements(["prod/a"]) == (Requirement("snp-strict", False),)
    claims = sample_token_claims(["snp-strict"])
    rules.check_conditions(["prod/a"], claims)
    claims["keybroker.insecure"] = True
    with pytest.raises(PlatformPolicyViolation):
        rules.check_conditions(["prod/a"], claims)
