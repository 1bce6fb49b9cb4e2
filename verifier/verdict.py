"""What an appraisal concludes, for every TEE: the ``Appraisal`` (an EAR submod), its status
words and trust-vector tiers, and ``PolicyRef``, the view of a compiled policy a TEE's
appraisal needs.

Invariants:
- An ``Appraisal`` exists only for a passed appraisal: a failed rule is a typed error, never
  an ``Appraisal`` with a bad status. ``status`` is "affirming" or "warning".
- Trust-vector values follow AR4SI (evidence-formats.md section 7.3): 2 is the affirming tier
  ("genuine" / "approved"), 3 is "approved boot" (executables: only the boot chain was
  appraised), 32..95 is the warning tier.
- A TEE's appraisal sees a policy only through ``PolicyRef``: its identity (name, version,
  digest) and its own typed section, asked for by type; a policy of another platform answers
  ``Malformed`` naming both platforms, so rules can never be applied to the wrong evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypeVar

AFFIRMING = "affirming"
WARNING = "warning"
GENUINE = 2
APPROVED = 2
APPROVED_BOOT_ONLY = 3
UNSAFE = 32
WARNING_TIER = range(32, 96)
TRUST_VECTOR_AFFIRMING: Mapping[str, int] = MappingProxyType({
    "instance-identity": GENUINE,
    "configuration": APPROVED,
    "executables": APPROVED,
    "hardware": GENUINE,
    "runtime-opaque": APPROVED,
})

_S = TypeVar("_S")


class PolicyRef(Protocol):
    """A compiled appraisal policy, as a TEE's appraisal sees it."""

    @property
    def name(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def policy_id(self) -> str: ...

    def section(self, kind: type[_S], platform: str) -> _S:
        """The compiled section of ``platform`` (of type ``kind``); ``Malformed`` for a policy
        of another platform."""
        ...


@dataclass(frozen=True)
class Appraisal:
    """The outcome of a passed appraisal (an EAR submod).

    ``warnings`` say why the status is "warning" beyond the trust vector (deprecated reference
    values, accepted non-current TCB); ``matched`` maps each reference-bound claim to
    "set@version/value-name"; ``would_match`` lists matches that needed staged values;
    ``tcb_debt`` lists the claims below the policy's next TCB floor (never a denial)."""

    status: str
    trust_vector: Mapping[str, int]
    policy_id: str
    policy_digest: str
    policy_name: str
    warnings: tuple[str, ...] = ()
    matched: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    would_match: tuple[str, ...] = ()
    tcb_debt: tuple[str, ...] = ()


def passed(policy: PolicyRef, trust_vector: Mapping[str, int],
           warnings: tuple[str, ...] = ()) -> Appraisal:
    """The appraisal of ``policy`` with ``trust_vector``: "warning" exactly when a value is in
    the warning tier, else "affirming"."""
    warn = any(value in WARNING_TIER for value in trust_vector.values())
    return Appraisal(status=WARNING if warn else AFFIRMING,
                     trust_vector=MappingProxyType(dict(trust_vector)),
                     policy_id=policy.policy_id, policy_digest=policy.digest,
                     policy_name=policy.name, warnings=warnings)
