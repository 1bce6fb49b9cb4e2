"""The compiled appraisal policy: what ``verifier.policy.compile`` produces and the decision
engine applies.

Invariants:
- A compiled policy is frozen and holds no parsing work: sets of accepted byte values, a TCB
  floor mapping, compiled CEL conditions, the compiled section of exactly one platform.
- The policy holds no version of its own: the policy store assigns it (``version`` 0 = not
  stored). ``digest`` is the SHA-256 of the exact document bytes and ``document`` the bytes,
  so a token names the reviewed document.
- ``section(kind, platform)`` returns the platform's compiled rules only for a policy of that
  platform; asking a policy for another platform's rules is ``Malformed`` naming both
  platforms, so a policy can never be applied to the wrong evidence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TypeVar

from keybroker.condition import Condition
from keybroker.errors import Category, Malformed
from verifier.tee import TcbEarlyWarning
from verifier.workload import WorkloadPolicy

SCHEMA = "appraisal-policy"
KIND = "AppraisalPolicy"
CONDITION_CATEGORIES = (Category.PLATFORM_POLICY, Category.TCB_POLICY, Category.MEASUREMENT)

_S = TypeVar("_S")


@dataclass(frozen=True)
class ReferenceBinding:
    """The claim at ``claim`` must match a value of the reference-value set ``set_name``."""

    claim: str
    set_name: str
    line: int


@dataclass(frozen=True)
class ConditionRule:
    """A compiled CEL condition; false denies with ``category``, rule ``conditions.<name>``."""

    name: str
    condition: Condition
    category: Category
    message: str
    line: int


@dataclass(frozen=True)
class AppraisalPolicy:
    """One compiled appraisal policy; ``rules`` is the compiled section of its platform."""

    name: str
    version: int
    platform: str
    digest: str
    rules: object
    source: str = ""
    workload: WorkloadPolicy = field(default_factory=WorkloadPolicy)
    references: tuple[ReferenceBinding, ...] = ()
    conditions: tuple[ConditionRule, ...] = ()
    early_warning: TcbEarlyWarning = field(default_factory=TcbEarlyWarning)
    document: bytes = b""

    @property
    def policy_id(self) -> str:
        """``<name>@<version>``, as in ``ear.appraisal-policy-id``."""
        return f"{self.name}@{self.version}"

    def with_version(self, version: int) -> AppraisalPolicy:
        """The same compiled policy as stored version ``version``."""
        return dataclasses.replace(self, version=version)

    def section(self, kind: type[_S], platform: str) -> _S:
        """The compiled rules of ``platform`` (of type ``kind``); ``Malformed`` naming both
        platforms for a policy of another platform."""
        if not isinstance(self.rules, kind):
            raise Malformed(
                f"appraisal policy {self.policy_id} is for platform {self.platform}, "
                f"not {platform}", rule="policy.platform", expected=platform,
                actual=self.platform)
        return self.rules
