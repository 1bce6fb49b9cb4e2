"""Which hardware collectors exist on this guest, and selecting one by name.

Invariants:
- Only hardware-backed collectors are known here (configfs-tsm, sev-guest, tdx-guest,
  gramine). The simulators are deliberately absent: they are never detected nor selected
  automatically, only constructed explicitly with their insecure flag
  (``attester_agent.collectors.simulator`` / ``simulator_dcap``).
- Automatic selection prefers configfs-tsm (SEV-SNP or TDX, by provider), then /dev/sev-guest,
  then /dev/tdx_guest, then Gramine's /dev/attestation, and fails with UNAVAILABLE when nothing
  usable is present; it never falls back to anything weaker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from attester_agent.collectors import gramine, sev_guest, tdx_guest
from attester_agent.collectors.base import Collector
from attester_agent.collectors.configfs_tsm import (
    DEFAULT_ROOT,
    SUPPORTED_PROVIDERS,
    ConfigfsTsmCollector,
)
from attester_agent.collectors.gramine import GramineSgxCollector
from attester_agent.collectors.sev_guest import SevGuestCollector
from attester_agent.collectors.tdx_evidence import TdxSources
from attester_agent.collectors.tdx_guest import TdxGuestCollector
from keybroker.errors import KeybrokerError, Unavailable

logger = logging.getLogger(__name__)

CONFIGFS_TSM: Final = "configfs-tsm"
SEV_GUEST: Final = "sev-guest"
TDX_GUEST: Final = "tdx-guest"
GRAMINE: Final = "gramine"
HARDWARE_COLLECTORS: Final = (CONFIGFS_TSM, SEV_GUEST, TDX_GUEST, GRAMINE)
DEFAULT_DEVICE: Final = sev_guest.DEFAULT_DEVICE  # kept for callers of the SNP-only API


@dataclass(frozen=True)
class Detected:
    """A usable collector with a human-readable description of where it reads from."""

    name: str
    detail: str
    collector: Collector


def create(
    name: str,
    *,
    tsm_root: Path = DEFAULT_ROOT,
    sev_guest_device: Path = sev_guest.DEFAULT_DEVICE,
    tdx_guest_device: Path = tdx_guest.DEFAULT_DEVICE,
    attestation_dir: Path = gramine.DEFAULT_ROOT,
    tdx_sources: TdxSources | None = None,
) -> Collector:
    """The hardware collector called ``name`` (not probed); unknown names raise ValueError."""
    if name == CONFIGFS_TSM:
        return ConfigfsTsmCollector(tsm_root, tdx_sources=tdx_sources)
    if name == SEV_GUEST:
        return SevGuestCollector(sev_guest_device)
    if name == TDX_GUEST:
        return TdxGuestCollector(tdx_guest_device, tdx_sources=tdx_sources)
    if name == GRAMINE:
        return GramineSgxCollector(attestation_dir)
    expected = ", ".join(HARDWARE_COLLECTORS)
    raise ValueError(f"unknown collector {name!r}; expected one of {expected}")


def detect(
    *,
    tsm_root: Path = DEFAULT_ROOT,
    sev_guest_device: Path = sev_guest.DEFAULT_DEVICE,
    tdx_guest_device: Path = tdx_guest.DEFAULT_DEVICE,
    attestation_dir: Path = gramine.DEFAULT_ROOT,
    tdx_sources: TdxSources | None = None,
) -> list[Detected]:
    """Usable hardware collectors, most preferred first (never a simulator)."""
    found: list[Detected] = []
    tsm = ConfigfsTsmCollector(tsm_root, tdx_sources=tdx_sources)
    if tsm_root.is_dir():
        try:
            provider = tsm.provider()
        except KeybrokerError as exc:
            logger.info("configfs-tsm at %s not usable: %s", tsm_root, exc)
        else:
            if provider in SUPPORTED_PROVIDERS:
                found.append(Detected(CONFIGFS_TSM, f"{tsm_root} provider={provider}", tsm))
            else:
                logger.info("configfs-tsm at %s has unsupported provider %s", tsm_root, provider)
    sev = SevGuestCollector(sev_guest_device)
    if sev.available():
        found.append(Detected(SEV_GUEST, str(sev_guest_device), sev))
    tdx = TdxGuestCollector(tdx_guest_device, tdx_sources=tdx_sources)
    if tdx.available():
        found.append(Detected(TDX_GUEST, f"{tdx_guest_device} (quotes need TDX_CMD_GET_QUOTE)",
                              tdx))
    sgx = GramineSgxCollector(attestation_dir)
    if sgx.available():
        found.append(Detected(GRAMINE, f"{attestation_dir} attestation_type=dcap", sgx))
    return found


def auto_select(
    *,
    tsm_root: Path = DEFAULT_ROOT,
    sev_guest_device: Path = sev_guest.DEFAULT_DEVICE,
    tdx_guest_device: Path = tdx_guest.DEFAULT_DEVICE,
    attestation_dir: Path = gramine.DEFAULT_ROOT,
    tdx_sources: TdxSources | None = None,
) -> Collector:
    """The most preferred usable hardware collector; UNAVAILABLE when there is none."""
    found = detect(tsm_root=tsm_root, sev_guest_device=sev_guest_device,
                   tdx_guest_device=tdx_guest_device, attestation_dir=attestation_dir,
                   tdx_sources=tdx_sources)
    if not found:
        raise Unavailable("no attestation interface found on this guest",
                          expected=f"{tsm_root}, {sev_guest_device}, {tdx_guest_device} or "
                                   f"{attestation_dir}", actual="none usable")
    return found[0].collector
