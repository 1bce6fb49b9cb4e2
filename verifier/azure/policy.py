"""The Azure sections of an appraisal policy: ``az_snp_vtpm:`` (platform az-snp-vtpm) and
``az_tdx_vtpm:`` (platform az-tdx-vtpm), both of this shape.

```yaml
az_snp_vtpm:
  measurements: [<96 hex>]            # the paravisor's launch MEASUREMENT (SEV-SNP) / MRTD (TDX)
  accepted_tcb_statuses: [UpToDate]   # TDX: Intel TCB statuses accepted (default UpToDate)
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


def _pcrs(azure: DocumentReader) -> Mapping[int, frozenset[bytes]]:
    out: dict[int, frozenset[bytes]] = {}
    for entry in azure.tables("pcrs"):
        entry.check_keys(frozenset({"pcr", "values"}))
        pcr = entry.integer("pcr", entry.table.get("pcr"), 0, 23)
        if pcr in out:
            raise entry.fail("pcr", "PCR named twice", "one entry per PCR", pcr)
        out[pcr] = entry.hex_values("values", 32)
    return MappingProxyType(out)


def compile_azure(azure: DocumentReader, measurement_referenced: bool) -> AzurePolicy:
    """Compile an ``azure:`` mapping (module invariants)."""
    azure.check_keys(frozenset(), frozenset({"measurements", "accepted_tcb_statuses",
                                             "vm_configuration", "pcrs", "allow_missing_crl"}))
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
    )


def azure_section(policy: PolicyRef, platform: str) -> AzurePolicy:
    """The ``azure:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(AzurePolicy, platform)
