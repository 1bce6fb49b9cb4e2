"""The vendor collateral services the verifier knows (AMD KDS for SEV-SNP, Intel PCS or a
PCCS for TDX and SGX), built from the configured URLs, and which one answers for an item key
(``snp-``: AMD; every other key: Intel)."""

from __future__ import annotations

from dataclasses import dataclass

from verifier.collateral.item import Source
from verifier.collateral.settings import FetchSettings
from verifier.dcap.pcs import PcsSource
from verifier.snp.kds import KdsSource


@dataclass(frozen=True)
class VendorSources:
    """AMD KDS and Intel PCS as collateral sources."""

    kds: KdsSource
    pcs: PcsSource

    @classmethod
    def from_settings(cls, settings: FetchSettings) -> VendorSources:
        """Sources at the URLs of ``settings``."""
        return cls(KdsSource(settings.kds_url),
                   PcsSource(settings.pcs_url, root_crl_url=settings.root_crl_url))

    def for_key(self, key: str) -> Source:
        """The source that fetches and verifies the item ``key``."""
        return self.kds if key.startswith("snp-") else self.pcs
