"""The verifier's appraisal policies in force and its reference values, from its state database.

Invariants:
- The state database is the source of truth. Policy files named in the config only seed it: a
  file whose policy name has no version yet becomes version 1 (author "config-seed"); after
  that, changes go through ``keybroker admin policy apply`` / ``rollback`` and a file that
  differs from the version in force is reported at start-up, never silently applied.
- Every configured file is compiled before anything is seeded, so a broken file (with its
  ``file:line``) or a duplicate policy name stops start-up and changes nothing in force.
- ``load_state`` compiles every version in force (name@version as stored) and snapshots the
  reference values; a version that no longer compiles is ``Malformed`` (the caller keeps the
  previous state in force). With a ``compiled`` cache each stored version (name, version,
  digest) is compiled once, CEL included, however often the state reloads (for instance when
  only reference values changed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from keybroker.errors import Malformed
from keybroker.policy_store import PolicyStore
from verifier.policy.compile import load_policy, parse_policy
from verifier.policy.model import AppraisalPolicy
from verifier.reference.store import ReferenceStore
from verifier.reference.values import ReferenceSnapshot

logger = logging.getLogger(__name__)

KIND = "AppraisalPolicy"


@dataclass(frozen=True)
class PolicyState:
    """Policies in force (by name) and the reference-value snapshot they are appraised with."""

    policies: Mapping[str, AppraisalPolicy]
    references: ReferenceSnapshot

    def itself(self) -> PolicyState:
        """This state (a fixed state source)."""
        return self

    @classmethod
    def static(cls, policies: Mapping[str, AppraisalPolicy],
               references: ReferenceSnapshot | None = None) -> PolicyState:
        """A fixed state (tests, offline tools)."""
        return cls(MappingProxyType(dict(policies)),
                   references if references is not None else ReferenceSnapshot(()))


def read_policy_files(paths: Sequence[Path]) -> dict[str, AppraisalPolicy]:
    """Compile every policy file, keyed by policy name; a duplicate name is refused."""
    out: dict[str, AppraisalPolicy] = {}
    for path in paths:
        policy = load_policy(path)
        if policy.name in out:
            raise Malformed(f"{path}: duplicate appraisal policy name", rule="config.policies",
                            expected="unique policy names",
                            actual=f"{policy.name} also in {out[policy.name].source}")
        out[policy.name] = policy
    return out


def seed_policies(store: PolicyStore, paths: Sequence[Path], now: datetime) -> None:
    """Seed the store from config files (see the module invariants)."""
    files = read_policy_files(paths)
    in_force = store.in_force(KIND)
    for name, policy in files.items():
        current = in_force.get(name)
        if current is None:
            seeded = store.seed(KIND, name, policy.document, source=policy.source, now=now)
            if seeded is not None:
                logger.info("policy %s seeded from %s", seeded.label, policy.source)
        elif current.digest != policy.digest:
            logger.warning(
                "policy file %s differs from %s in force; the file is only a seed, apply it "
                "with `keybroker admin policy apply`", policy.source, current.label)


def load_state(policies: PolicyStore, references: ReferenceStore,
               compiled: dict[tuple[str, int, str], AppraisalPolicy] | None = None
               ) -> PolicyState:
    """Compile every policy version in force (each once, given a cache) and snapshot the
    reference values."""
    cache = compiled if compiled is not None else {}
    in_force: dict[str, AppraisalPolicy] = {}
    for name, version in policies.in_force(KIND).items():
        key = (name, version.version, version.digest)
        if key not in cache:
            cache[key] = parse_policy(version.document, f"{version.label} (state db)",
                                      version=version.version)
        in_force[name] = cache[key]
    for key in [k for k in cache if in_force.get(k[0]) is not cache[k]]:
        del cache[key]  # superseded versions
    return PolicyState(MappingProxyType(in_force), references.snapshot())
