"""The Azure sections of an appraisal policy: ``az_snp_vtpm:`` (platform az-snp-vtpm) and
``az_tdx_vtpm:`` (platform az-tdx-vtpm), both of this shape.

```yaml
az_snp_vtpm:
  measurements: [<96 hex>]            # the paravisor's launch MEASUREMENT (SEV-SNP) / MRTD (TDX)
  accepted_tcb_statuses: [UpToDate]   # TDX: Intel TCB statuses accepted (default UpToDate)
  snp_min_tcb: {bootloader: 4, tee: 0, snp: 22, microcode: 213}   # SEV-SNP: reported and
                                                                  # committed TCB floors
  vm_configuration:                   # HCL vm-configuration switches that must hold
    secure-boot: true
    tpm-enabled: true
    console-enabled: false
  pcrs:                               # vTPM PCRs (SHA-256) with accepted values
    - {pcr: 7, values: [<64 hex>]}
  allow_missing_crl: false
```

Invariants:
- Compiling is strict (``keybroker.document_reader``). ``measurements`` is required unless a
  reference-value binding covers ``evidence.measurement``. A debug guest is always refused.
- ``snp_min_tcb`` names SEV-SNP TCB components (bootloader, tee, snp, microcode, fmc), each
  0..255; it applies to the reported and the committed TCB of the SNP report, read from the
  SEV-SNP family's claims (a component the report does not carry counts as 0).
- ``vm_configuration`` names only the HCL's boolean switches; each listed one must be present
  in the evidence with that value (absent is a denial).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from keybroker.document_reader import DocumentReader
from verifier.verdict import PolicyRef

IDENTITY_CLAIMS = frozenset({"evidence.measurement"})
SWITCHES = ("secure-boot", "tpm-enabled", "console-enabled")
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
_STATUS_RE = re.compile(r"UpToDate|SWHardeningNeeded|ConfigurationNeeded|"
                        r"ConfigurationAndSWHardeningNeeded|OutOfDate|OutOfDateConfigurationNeeded")


@dataclass(frozen=True)
class AzurePolicy:
    """Compiled ``azure:`` section (``measurements`` None = covered by a reference binding)."""

    measurements: frozenset[bytes] | None
    accepted_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    vm_configuration: Mapping[str, bool] = field(default_factory=dict)
    pcrs: Mapping[int, frozenset[bytes]] = field(default_factory=dict)
    allow_missing_crl: bool = False
    snp_min_tcb: Mapping[str, int] = field(default_factory=dict)


def _pcrs(azure: DocumentReader) -> Mapping[int, frozenset[bytes]]:
    out: dict[int, frozenset[bytes]] = {}
    for entry in azure.tables("pcrs"):
        entry.check_keys(frozenset({"pcr", "values"}))
        pcr = entry.integer("pcr", entry.table.get("pcr"), 0, 23)
        if pcr in out:
            raise entry.fail("pcr", "PCR named twice", "one entry per PCR", pcr)
        out[pcr] = entry.hex_values("values", 32)
    return MappingProxyType(out)


def _floor(azure: DocumentReader) -> Mapping[str, int]:
    floor = azure.table_at("snp_min_tcb")
    floor.check_keys(frozenset(), frozenset(TCB_COMPONENTS))
    return MappingProxyType({name: floor.integer(name, value, 0, 255)
                             for name, value in floor.table.items()})


def compile_azure(azure: DocumentReader, measurement_referenced: bool) -> AzurePolicy:
    """Compile an ``azure:`` mapping (module invariants)."""
    azure.check_keys(frozenset(), frozenset({"measurements", "accepted_tcb_statuses",
                                             "vm_configuration", "pcrs", "allow_missing_crl",
                                             "snp_min_tcb"}))
    if not azure.has("measurements") and not measurement_referenced:
        raise azure.missing("measurements", "field 'measurements' (or a reference_values "
                                            "binding of evidence.measurement)")
    switches: dict[str, bool] = {}
    if azure.has("vm_configuration"):
        config = azure.table_at("vm_configuration")
        config.check_keys(frozenset(), frozenset(SWITCHES))
        switches = {name: config.boolean(name, False) for name in config.table}
    return AzurePolicy(
        measurements=azure.hex_values("measurements", 48) if azure.has("measurements") else None,
        accepted_tcb_statuses=frozenset(azure.strings(
            "accepted_tcb_statuses", ["UpToDate"], _STATUS_RE, "an Intel TCB status")),
        vm_configuration=MappingProxyType(switches),
        pcrs=_pcrs(azure),
        allow_missing_crl=azure.boolean("allow_missing_crl", False),
        snp_min_tcb=_floor(azure) if azure.has("snp_min_tcb") else MappingProxyType({}),
    )


def azure_section(policy: PolicyRef, platform: str) -> AzurePolicy:
    """The ``azure:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(AzurePolicy, platform)
