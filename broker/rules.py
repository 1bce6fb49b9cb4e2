"""Release rules: which appraisal policies must be affirming before a key is released, and which
extra CEL conditions the verified result must meet.

Invariants:
- The rules are a ``ReleaseRules`` YAML document (``keybroker/schemas/release-rules.schema.json``,
  loaded by ``keybroker.document``): unknown fields, wrong types, a duplicate rule name or an
  empty rule list are ``Malformed`` with ``file:line``. ``digest`` is the SHA-256 of the exact
  document bytes; ``version`` is 0 until the policy store assigns one.
- A rule names a key-id pattern (fnmatch, case-sensitive), one appraisal policy, and whether
  that policy's ``warning`` status is acceptable. Every rule whose pattern matches a key applies
  to it (they are ANDed). ``warning`` is accepted for a policy only if every rule that requires
  the policy for the requested keys accepts it.
- A requested key that matches no rule is denied (PLATFORM_POLICY): an empty requirement is
  never a vacuous pass.
- A rule's ``when`` is CEL over ``key`` (the key id), ``submod`` (the EAR submod of the rule's
  policy) and ``result`` (all token claims). It is compiled at load time against a sample token
  (so a typo or a type error is refused at load) and, for a request, evaluated for every
  matching rule; false, an evaluation error or a missing submod denies (PLATFORM_POLICY, rule
  ``release.<rule name>.when``). Annotated evidence differs per platform: guard fields of
  ``submod["ear.veraison.annotated-evidence"]`` with ``has()`` or ``in``.
- A rule may pin the secret ``version`` released for its keys; without a pin the latest
  enabled version is released. Two matching rules pinning different versions, or an agent
  asking for another version than the pin, is PLATFORM_POLICY (rule ``release.version``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from keybroker.condition import Condition, ConditionError, compile_condition
from keybroker.document import Document, load_document, read_document
from keybroker.errors import Malformed, PlatformPolicyViolation

SCHEMA = "release-rules"
KIND = "ReleaseRules"
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
_SAMPLE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
_WILDCARDS = re.compile(r"\[[^\]]*\]|[*?]")


@dataclass(frozen=True)
class ReleaseRule:
    """One entry of ``rules``."""

    keys: str
    policy: str
    accept_warning: bool = False
    name: str = ""
    when: Condition | None = None
    line: int = 0
    version: int = 0  # a pinned secret version (0: the latest enabled one)

    def matches(self, key_id: str) -> bool:
        """Whether this rule applies to ``key_id``."""
        return fnmatch.fnmatchcase(key_id, self.keys)


@dataclass(frozen=True)
class Requirement:
    """An appraisal policy that must be affirming (or warning, if ``accept_warning``)."""

    policy: str
    accept_warning: bool


def sample_submod(policy: str) -> dict[str, object]:
    """A realistic EAR submod for ``policy`` (shape of ``verifier.result`` submods)."""
    return {
        "ear.status": "affirming",
        "ear.trustworthiness-vector": {"instance-identity": 2, "configuration": 2,
                                       "executables": 2, "hardware": 2, "runtime-opaque": 2},
        "ear.appraisal-policy-id": f"{policy}@1",
        "keybroker.policy-digest": "ab" * 32,
        "ear.veraison.annotated-evidence": {},
        "keybroker.workload": {
            "init_data_register": "HOST_DATA", "init_data_digest": "ab" * 32, "name": "demo",
            "images": ["sha256:" + "ab" * 32], "agent_policy": "default",
            "agent_policy_digest": "sha256:" + "cd" * 32, "measured_register": "RTMR3",
            "measured_images": ["sha256:" + "ab" * 32]},
        "keybroker.warnings": ["a warning"],
        "keybroker.reference-values": {"evidence.measurement": "launch@1/fw"},
        "keybroker.tcb-debt": ["reported_tcb.microcode 115 < next floor 200"],
    }


def sample_token_claims(policies: Sequence[str]) -> dict[str, object]:
    """Realistic verified token claims with one submod per policy (for compile-time checks)."""
    return {
        "eat_profile": EAR_PROFILE,
        "iat": _SAMPLE_TIME,
        "nbf": _SAMPLE_TIME,
        "exp": _SAMPLE_TIME + 60,
        "jti": "00" * 16,
        "aud": "keybroker-broker",
        "ear.verifier-id": {"developer": "keybroker", "build": "keybroker-verifier 0.0.0"},
        "eat_nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "keybroker.request-id": "00000000-0000-4000-8000-000000000000",
        "keybroker.evidence-digest": "cd" * 32,
        "keybroker.report-data": "00" * 64,
        "keybroker.insecure": False,
        "submods": {policy: sample_submod(policy) for policy in policies},
    }


def _sample_key(pattern: str) -> str:
    """A key id the pattern matches (wildcards replaced), for the sample activation."""
    return _WILDCARDS.sub("x", pattern)


@dataclass(frozen=True)
class ReleaseRules:
    """The loaded rule set (one document)."""

    rules: tuple[ReleaseRule, ...]
    name: str = "release-rules"
    version: int = 0
    digest: str = ""
    source: str = ""
    document: bytes = b""

    @property
    def rules_id(self) -> str:
        """``<name>@<version>``."""
        return f"{self.name}@{self.version}"

    def with_version(self, version: int) -> ReleaseRules:
        """The same rules as stored version ``version``."""
        return dataclasses.replace(self, version=version)

    def requirements(self, key_ids: Sequence[str]) -> tuple[Requirement, ...]:
        """The policies required to release all ``key_ids``, sorted by policy name.

        Raises ``unknown_key`` (MALFORMED) if a key has no rule.
        """
        accept: dict[str, bool] = {}
        for key_id in key_ids:
            matching = [r for r in self.rules if r.matches(key_id)]
            if not matching:
                raise unknown_key(key_id)
            for rule in matching:
                accept[rule.policy] = accept.get(rule.policy, True) and rule.accept_warning
        return tuple(Requirement(name, accept[name]) for name in sorted(accept))

    def patterns(self, key_ids: Sequence[str]) -> tuple[str, ...]:
        """The ``keys`` patterns of the rules matching ``key_ids`` ("(none)" for a key no rule
        matches): bounded labels for metrics, never the key ids themselves."""
        found = {r.keys for r in self.rules for k in key_ids if r.matches(k)}
        if any(not any(r.matches(k) for r in self.rules) for k in key_ids):
            found.add("(none)")
        return tuple(sorted(found))

    def check_known(self, key_ids: Sequence[str]) -> None:
        """Raise ``unknown_key`` for the first key id no rule matches."""
        for key_id in key_ids:
            if not any(r.matches(key_id) for r in self.rules):
                raise unknown_key(key_id)

    def resolve_version(self, key_id: str, requested: int) -> int:
        """The version to release for ``key_id`` when the agent asked for ``requested`` (0 =
        latest): the pin of the matching rules, if any (module invariants)."""
        pins = {r.version for r in self.rules if r.version and r.matches(key_id)}
        if not pins:
            return requested
        if len(pins) > 1 or (requested and requested not in pins):
            raise PlatformPolicyViolation(
                "requested version is not the one the release rules pin", rule="release.version",
                expected=" | ".join(f"{key_id}@{v}" for v in sorted(pins)),
                actual=f"{key_id}@{requested or 'latest'}")
        return next(iter(pins))

    def check_conditions(self, key_ids: Sequence[str],
                         token_claims: Mapping[str, object]) -> None:
        """Evaluate the ``when`` of every rule matching each key against the verified token
        claims; PlatformPolicyViolation (rule ``release.<name>.when``) on false or error."""
        submods = token_claims.get("submods")
        for key_id in key_ids:
            for rule in self.rules:
                if rule.when is None or not rule.matches(key_id):
                    continue
                where = f"release.{rule.name}.when"
                submod = submods.get(rule.policy) if isinstance(submods, Mapping) else None
                if not isinstance(submod, Mapping):
                    raise PlatformPolicyViolation(
                        "release condition not met", rule=where,
                        expected=rule.when.expression,
                        actual=f"no result for policy {rule.policy}")
                try:
                    passed = rule.when.evaluate(
                        {"key": key_id, "submod": submod, "result": token_claims})
                except ConditionError as exc:
                    raise PlatformPolicyViolation(
                        "release condition could not be evaluated", rule=where,
                        expected=rule.when.expression, actual=str(exc)) from None
                if not passed:
                    raise PlatformPolicyViolation(
                        "release condition not met", rule=where,
                        expected=rule.when.expression, actual="false")


def _compile_rule(doc: Document, index: int, entry: Mapping[str, object],
                  policies: Sequence[str]) -> ReleaseRule:
    keys, policy = str(entry["keys"]), str(entry["policy"])
    when: Condition | None = None
    expression = entry.get("when")
    if isinstance(expression, str):
        sample = {"key": _sample_key(keys), "submod": sample_submod(policy),
                  "result": sample_token_claims(policies)}
        try:
            when = compile_condition(expression, sample)
        except ConditionError as exc:
            raise doc.fail(("rules", index, "when"), f"invalid condition ({exc})",
                           "a CEL boolean over key, submod and result", expression) from None
    version = entry.get("version", 0)
    return ReleaseRule(keys=keys, policy=policy,
                       accept_warning=entry.get("accept_warning") is True,
                       name=str(entry["name"]), when=when, line=doc.line(("rules", index)),
                       version=version if isinstance(version, int) else 0)


def compile_rules(doc: Document, version: int = 0) -> ReleaseRules:
    """Compile a validated ``ReleaseRules`` document."""
    entries = doc.data["rules"]
    assert isinstance(entries, list)
    policies = sorted({str(e["policy"]) for e in entries if isinstance(e, dict)})
    seen: dict[str, int] = {}
    rules: list[ReleaseRule] = []
    for index, entry in enumerate(entries):
        assert isinstance(entry, dict)
        name = str(entry["name"])
        if name in seen:
            raise doc.fail(("rules", index, "name"), "duplicate rule name",
                           f"a name not used by rules[{seen[name]}]", name)
        seen[name] = index
        rules.append(_compile_rule(doc, index, entry, policies))
    if not rules:  # the schema requires one; kept so an empty rule set can never load
        raise doc.fail(("rules",), "no release rules", "at least one rule", entries)
    return ReleaseRules(rules=tuple(rules), name=str(doc.data["name"]), version=version,
                        digest=doc.digest, source=doc.source, document=doc.raw)


def parse_rules(raw: bytes, source: str, version: int = 0) -> ReleaseRules:
    """Parse, validate and compile release-rules document bytes (``source`` names it)."""
    return compile_rules(load_document(raw, source, SCHEMA), version)


def load_rules(path: Path, version: int = 0) -> ReleaseRules:
    """Read, validate and compile the release-rules file at ``path``."""
    return compile_rules(read_document(path, SCHEMA), version)


def unknown_key(key_id: str) -> Malformed:
    """The denial for a key id this broker does not serve (no release rule matches it).

    The same answer whether or not a secret of that name is stored, so it reveals the rule
    patterns only, never which secrets exist."""
    return Malformed(f"unknown key id {key_id[:256]!r}: no release rule covers it",
                     rule="release.unknown-key",
                     expected="a key id matching a release rule (case-sensitive)",
                     actual=key_id[:256])
