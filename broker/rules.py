"""Release rules: which appraisal policies must be affirming before a key is released.

Invariants:
- A rule names a key-id pattern (fnmatch, case-sensitive), one appraisal policy, and whether
  that policy's ``warning`` status is acceptable. Unknown keys or wrong types in the file are
  MALFORMED; a file without rules is MALFORMED (it could only ever deny).
- Every rule whose pattern matches a key applies to it (they are ANDed). ``warning`` is
  accepted for a policy only if every rule that requires the policy for the requested keys
  accepts it.
- A requested key that matches no rule is denied (PLATFORM_POLICY): an empty requirement is
  never a vacuous pass.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keybroker.errors import Malformed, PlatformPolicyViolation

_RULE_KEYS = {"keys": str, "policy": str, "accept_warning": bool}


@dataclass(frozen=True)
class ReleaseRule:
    """One ``[[rule]]`` entry."""

    keys: str
    policy: str
    accept_warning: bool = False

    def matches(self, key_id: str) -> bool:
        """Whether this rule applies to ``key_id``."""
        return fnmatch.fnmatchcase(key_id, self.keys)


@dataclass(frozen=True)
class Requirement:
    """An appraisal policy that must be affirming (or warning, if ``accept_warning``)."""

    policy: str
    accept_warning: bool


@dataclass(frozen=True)
class ReleaseRules:
    """The loaded rule set."""

    rules: tuple[ReleaseRule, ...]

    def requirements(self, key_ids: Sequence[str]) -> tuple[Requirement, ...]:
        """The policies required to release all ``key_ids``, sorted by policy name.

        Raises PlatformPolicyViolation if a key has no rule.
        """
        accept: dict[str, bool] = {}
        for key_id in key_ids:
            matching = [r for r in self.rules if r.matches(key_id)]
            if not matching:
                raise PlatformPolicyViolation("no release rule for key", rule="release.rule",
                                              expected="a rule matching the key id",
                                              actual=key_id)
            for rule in matching:
                accept[rule.policy] = accept.get(rule.policy, True) and rule.accept_warning
        return tuple(Requirement(name, accept[name]) for name in sorted(accept))


def parse_rules(data: dict[str, object], source: str) -> ReleaseRules:
    """Validate parsed TOML ``data`` (from ``source``) into rules."""
    extra = sorted(set(data) - {"rule"})
    if extra:
        raise Malformed(f"{source}: unknown top-level key", expected="[[rule]]",
                        actual=", ".join(extra))
    entries = data.get("rule")
    if not isinstance(entries, list) or not entries:
        raise Malformed(f"{source}: no release rules", expected="at least one [[rule]]",
                        actual=type(entries).__name__ if entries is not None else "none")
    rules: list[ReleaseRule] = []
    for index, entry in enumerate(entries):
        where = f"{source}: rule[{index}]"
        if not isinstance(entry, dict):
            raise Malformed(f"{where} is not a table", actual=type(entry).__name__)
        unknown = sorted(set(entry) - set(_RULE_KEYS))
        if unknown:
            raise Malformed(f"{where}: unknown key", expected=", ".join(_RULE_KEYS),
                            actual=", ".join(unknown))
        for key in ("keys", "policy"):
            if key not in entry:
                raise Malformed(f"{where}: missing {key}", expected=key, actual="none")
        for key, kind in _RULE_KEYS.items():
            if key in entry and not isinstance(entry[key], kind):
                raise Malformed(f"{where}: {key} has the wrong type", expected=kind.__name__,
                                actual=type(entry[key]).__name__)
        keys, policy = str(entry["keys"]), str(entry["policy"])
        if not keys or not policy:
            raise Malformed(f"{where}: keys and policy must be non-empty")
        rules.append(ReleaseRule(keys, policy, bool(entry.get("accept_warning", False))))
    return ReleaseRules(tuple(rules))


def load_rules(path: Path) -> ReleaseRules:
    """Read and validate the release rules file."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise Malformed(f"cannot read release rules {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Malformed(f"{path}: not valid TOML: {exc}") from exc
    return parse_rules(data, str(path))
