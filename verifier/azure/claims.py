"""What verified Azure confidential VM evidence proves, as typed claims (the registry family's
claims; ``verifier.azure.verify.AzureClaims`` is the offline command's richer composition).

Invariants:
- ``hardware`` is the SEV-SNP or TDX family's own claims map (``as_dict``) of the hardware
  report the HCL report carried, verified by that family; ``measurement``, ``debug``,
  ``tcb_status`` and ``collateral_warnings`` are read from it when these claims are made.
- ``report_data`` (the binding) is the HCL runtime claims' ``user-data``: the guest wrote the
  challenge binding there and the hardware report binds the runtime claims. Absent: empty,
  which never equals a binding. The vTPM quote's extraData must equal the binding as well.
- ``pcrs`` are the 24 SHA-256 PCRs the vTPM quote proved, under the HCL report's AK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLATFORM_AZ_SNP = "az-snp-vtpm"
PLATFORM_AZ_TDX = "az-tdx-vtpm"


@dataclass(frozen=True)
class AzureVmClaims:
    """Claims of one verified Azure CVM: hardware, VM configuration and vTPM quote."""

    platform: str  # az-snp-vtpm | az-tdx-vtpm
    hardware: Mapping[str, Any]
    measurement: bytes  # SEV-SNP MEASUREMENT or TDX MRTD
    debug: bool
    tcb_status: str | None  # TDX: Intel's TCB status; SEV-SNP: None
    collateral_warnings: tuple[str, ...]
    vm_configuration: Mapping[str, Any]
    user_data: bytes
    pcrs: Mapping[int, bytes]
    extra_data: bytes
    reset_count: int
    restart_count: int
    insecure: bool

    @property
    def report_data(self) -> bytes:
        """The binding: the runtime claims' user-data."""
        return self.user_data

    @property
    def insecure_root(self) -> bool:
        """Whether the hardware report chained to a simulator root."""
        return self.insecure

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (``platform`` = az-snp-vtpm | az-tdx-vtpm)."""
        return {
            "platform": self.platform, "hardware": dict(self.hardware),
            "measurement": self.measurement.hex(), "debug": self.debug,
            "tcb_status": self.tcb_status,
            "collateral_warnings": list(self.collateral_warnings),
            "vm_configuration": dict(self.vm_configuration),
            "user_data": self.user_data.hex(),
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "extra_data": self.extra_data.hex(), "reset_count": self.reset_count,
            "restart_count": self.restart_count, "insecure_root": self.insecure,
        }


@dataclass(frozen=True)
class AzureSnpClaims(AzureVmClaims):
    """Claims of an az-snp-vtpm VM (one claims type per platform in the registry)."""


@dataclass(frozen=True)
class AzureTdxClaims(AzureVmClaims):
    """Claims of an az-tdx-vtpm VM."""


CLAIMS_TYPES: dict[str, type[AzureVmClaims]] = {PLATFORM_AZ_SNP: AzureSnpClaims,
                                                PLATFORM_AZ_TDX: AzureTdxClaims}
