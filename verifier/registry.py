"""The verifier's registry of TEEs: every evidence family the verifier knows, in one table.

Adding a TEE is one folder (``verifier/<tee>/`` with its ``tee.py`` entry) and one line in
``FAMILIES``; nothing else in the verifier dispatches on a platform name.

Invariants:
- Platform names, policy section keys and evidence kinds are unique across the table
  (``_index`` refuses duplicates when the table is first used).
- Lookups of an unknown name are ``Malformed`` naming what is known; they never fall back to
  a default platform.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from keybroker.errors import Malformed
from verifier.azure.tee import FAMILY as AZURE
from verifier.dcap.tee import FAMILY as DCAP
from verifier.maa.tee import FAMILY as MAA
from verifier.nitro.tee import FAMILY as NITRO
from verifier.snp.tee import FAMILY as SNP
from verifier.tee import Claims, EvidenceFamily, Tee
from verifier.tpm.tee import FAMILY as TPM

# Order matters where a family builds on another's verifier (Azure on SEV-SNP and DCAP).
FAMILIES: tuple[EvidenceFamily, ...] = (SNP, DCAP, TPM, MAA, AZURE, NITRO)


@dataclass(frozen=True)
class _Index:
    tees: tuple[Tee, ...]
    by_platform: Mapping[str, Tee]
    by_kind: Mapping[str, Tee]
    by_section: Mapping[str, Tee]
    by_type: Mapping[type, Tee]


@functools.cache
def _index() -> _Index:
    """The table, indexed once (duplicate names refused)."""
    every = tuple(tee for family in FAMILIES for tee in family.tees)
    platforms: dict[str, Tee] = {}
    kinds: dict[str, Tee] = {}
    sections: dict[str, Tee] = {}
    for tee in every:
        for table, key in ((platforms, tee.platform), (kinds, tee.evidence_kind),
                           (sections, tee.section)):
            if key in table:
                raise Malformed("two TEEs of the registry share a name", rule="registry",
                                expected="unique platform, section and evidence kind",
                                actual=key)
            table[key] = tee
    return _Index(every, platforms, kinds, sections, {tee.claims_type: tee for tee in every})


def tees() -> tuple[Tee, ...]:
    """Every platform, in registry order."""
    return _index().tees


def platforms() -> tuple[str, ...]:
    """Every platform name (``sev-snp``, ``tdx``, ...), in registry order."""
    return tuple(_index().by_platform)


def sections() -> tuple[str, ...]:
    """Every policy section key (``snp``, ``tdx``, ...), in registry order."""
    return tuple(_index().by_section)


def evidence_kinds() -> tuple[str, ...]:
    """Every evidence kind (the wire contract's oneof arms), in registry order."""
    return tuple(_index().by_kind)


def by_platform(platform: str) -> Tee:
    """The TEE of ``platform``; ``Malformed`` for an unknown one."""
    tee = _index().by_platform.get(platform)
    if tee is None:
        raise Malformed("unknown platform", rule="claims.platform",
                        expected="one of " + ", ".join(platforms()), actual=platform)
    return tee


def by_kind(kind: str) -> Tee | None:
    """The TEE whose evidence is the ``kind`` arm (None when no TEE takes it)."""
    return _index().by_kind.get(kind)


def of_claims(claims: Claims) -> Tee:
    """The TEE whose claims type ``claims`` is (one dictionary lookup); ``Malformed`` for
    claims no TEE owns."""
    tee = _index().by_type.get(type(claims))
    if tee is not None:
        return tee
    raise Malformed("claims of no registered platform", rule="claims.platform",
                    expected="one of " + ", ".join(platforms()), actual=type(claims).__name__)
