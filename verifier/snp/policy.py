"""The ``snp:`` section of an appraisal policy and the SEV-SNP ``tcb_early_warning`` floor,
compiled into frozen values.

Invariants:
- Compiling is strict (``keybroker.document_reader``): unknown keys, wrong types (``true`` is
  not an integer), bad hex and out-of-range values are ``Malformed`` naming the file, the line
  and the key. Switches default to the strict setting (no debug, VMPL 0 only, no migration
  agent, no SMT, no provisional firmware, no missing CRL).
- ``measurements`` is required unless a ``reference_values`` binding covers
  ``evidence.measurement``; only then may it be absent (compiled to None: the binding does the
  check). ``host_data`` absent (None) means HOST_DATA is not checked against an allow-list. An
  empty list is refused at load (``keybroker.document_reader``); a compiled empty set would
  match nothing.
- TCB floors name only known components (``verifier.snp.tcb.COMPONENTS``), each 0..255.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from keybroker.document_reader import DocumentReader
from verifier.snp.claims import PLATFORM_SNP
from verifier.snp.tcb import COMPONENTS
from verifier.tee import TcbEarlyWarning
from verifier.verdict import PolicyRef

MEASUREMENT_SIZE = 48
HOST_DATA_SIZE = 32
IDENTITY_CLAIMS = frozenset({"evidence.measurement"})
EARLY_WARNING_KEY = "snp_min_tcb"

_SNP_OPTIONAL = frozenset({
    "measurements", "allow_debug", "allowed_vmpls", "allow_migration_agent", "allow_smt",
    "allow_provisional_firmware", "host_data", "allow_missing_crl",
})


@dataclass(frozen=True)
class SnpPolicy:
    """Compiled ``snp:`` section (``measurements`` None = covered by a reference binding)."""

    measurements: frozenset[bytes] | None
    min_tcb: Mapping[str, int]
    allow_debug: bool = False
    allowed_vmpls: frozenset[int] = frozenset({0})
    allow_migration_agent: bool = False
    allow_smt: bool = False
    allow_provisional_firmware: bool = False
    host_data: frozenset[bytes] | None = None
    allow_missing_crl: bool = False


def tcb_floor(reader: DocumentReader, key: str) -> Mapping[str, int]:
    """The component floor at ``key`` (known components only, each 0..255)."""
    floor = reader.table_at(key)
    floor.check_keys(frozenset(), frozenset(COMPONENTS))
    return MappingProxyType({name: floor.integer(name, value, 0, 255)
                             for name, value in floor.table.items()})


def compile_snp(snp: DocumentReader, measurement_referenced: bool) -> SnpPolicy:
    """Compile an ``snp:`` mapping; ``measurement_referenced``: a reference binding covers
    ``evidence.measurement``, so ``measurements`` may be absent."""
    snp.check_keys(frozenset({"min_tcb"}), _SNP_OPTIONAL)
    if not snp.has("measurements") and not measurement_referenced:
        raise snp.missing("measurements", "field 'measurements' (or a reference_values "
                                          "binding of evidence.measurement)")
    vmpls = frozenset(snp.integer("allowed_vmpls", v, 0, 3, (i,))
                      for i, v in enumerate(snp.array("allowed_vmpls", [0])))
    return SnpPolicy(
        measurements=(snp.hex_values("measurements", MEASUREMENT_SIZE)
                      if snp.has("measurements") else None),
        min_tcb=tcb_floor(snp, "min_tcb"),
        allow_debug=snp.boolean("allow_debug", False),
        allowed_vmpls=vmpls,
        allow_migration_agent=snp.boolean("allow_migration_agent", False),
        allow_smt=snp.boolean("allow_smt", False),
        allow_provisional_firmware=snp.boolean("allow_provisional_firmware", False),
        host_data=(snp.hex_values("host_data", HOST_DATA_SIZE) if snp.has("host_data")
                   else None),
        allow_missing_crl=snp.boolean("allow_missing_crl", False),
    )


def compile_early_warning(warning: DocumentReader) -> TcbEarlyWarning:
    """The SEV-SNP keys of ``tcb_early_warning``: the next component floor."""
    if not warning.has(EARLY_WARNING_KEY):
        return TcbEarlyWarning()
    return TcbEarlyWarning(snp_min_tcb=tcb_floor(warning, EARLY_WARNING_KEY))


def snp_section(policy: PolicyRef) -> SnpPolicy:
    """The ``snp:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(SnpPolicy, PLATFORM_SNP)
