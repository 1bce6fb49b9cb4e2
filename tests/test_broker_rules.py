"""Broker release rules: fnmatch matching, ANDed rules, warning acceptance, no-rule deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.rules import ReleaseRule, ReleaseRules, Requirement, load_rules
from keybroker.errors import Category, Malformed, PlatformPolicyViolation

RULES = """
[[rule]]
keys = "demo/*"
policy = "snp-demo"

[[rule]]
keys = "demo/db-*"
policy = "snp-strict"
accept_warning = true

[[rule]]
keys = "lenient/*"
policy = "snp-demo"
accept_warning = true
"""


def _rules(tmp_path: Path, text: str = RULES) -> ReleaseRules:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


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
    """A key no rule matches (fnmatch is case-sensitive) is a PLATFORM_POLICY deny."""
    rules = _rules(tmp_path)
    with pytest.raises(PlatformPolicyViolation) as exc:
        rules.requirements(["demo/tls", key_id])
    assert exc.value.category is Category.PLATFORM_POLICY
    assert exc.value.actual == key_id


def test_empty_request_is_not_a_pass() -> None:
    """An empty rule set yields no pass for any key."""
    with pytest.raises(PlatformPolicyViolation):
        ReleaseRules(()).requirements(["demo/a"])
    assert ReleaseRule("demo/*", "p").matches("demo/a")


@pytest.mark.parametrize("text", [
    "",
    "rule = []",
    '[[rule]]\nkeys = "demo/*"\n',
    '[[rule]]\npolicy = "p"\n',
    '[[rule]]\nkeys = "demo/*"\npolicy = "p"\nextra = 1\n',
    '[[rule]]\nkeys = "demo/*"\npolicy = 3\n',
    '[[rule]]\nkeys = "demo/*"\npolicy = "p"\naccept_warning = "yes"\n',
    '[[rule]]\nkeys = ""\npolicy = "p"\n',
    '[other]\nx = 1\n',
    "not toml [",
])
def test_malformed_rule_files(tmp_path: Path, text: str) -> None:
    """Missing, unknown or mistyped rule fields and broken TOML are MALFORMED."""
    with pytest.raises(Malformed) as exc:
        _rules(tmp_path, text)
    assert exc.value.category is Category.MALFORMED
