"""The agent's registry of hardware collectors: which attestation interfaces exist on this
guest, and selecting one by name. One table, ``HARDWARE``; adding a TEE's interface is one
entry.

Invariants:
- Only hardware-backed collectors are known here (configfs-tsm, sev-guest, tdx-guest,
  gramine, nitro-nsm, azure-vtpm, tpm). The simulators are deliberately absent: they are never
  detected nor selected automatically, only constructed explicitly with their insecure flag
  (``attester_agent.simulator_options``).
- Automatic selection follows the table's order of preference: configfs-tsm (SEV-SNP or TDX,
  by provider), then /dev/sev-guest, then /dev/tdx_guest, then Gramine's /dev/attestation,
  then the Nitro NSM's /dev/nsm, then an Azure paravisor's vTPM (an HCL report in NV), then
  the TPM's /dev/tpmrm0, and fails with UNAVAILABLE when nothing usable is present; it never
  falls back to anything weaker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from attester_agent.collectors import gramine, sev_guest, tdx_guest
from attester_agent.collectors.azure_vtpm import HCL_REPORT_INDEX, AzureVtpmCollector
from attester_agent.collectors.base import Collector
from attester_agent.collectors.configfs_tsm import (
    DEFAULT_ROOT,
    SUPPORTED_PROVIDERS,
    ConfigfsTsmCollector,
)
from attester_agent.collectors.gramine import GramineSgxCollector
from attester_agent.collectors.nitro_nsm import NitroNsmCollector
from attester_agent.collectors.sev_guest import SevGuestCollector
from attester_agent.collectors.tdx_evidence import TdxSources
from attester_agent.collectors.tdx_guest import TdxGuestCollector
from attester_agent.collectors.tpm import DEFAULT_IMA_LOG, TpmCollector
from keybroker.errors import KeybrokerError, Unavailable

logger = logging.getLogger(__name__)

CONFIGFS_TSM: Final = "configfs-tsm"
SEV_GUEST: Final = "sev-guest"
TDX_GUEST: Final = "tdx-guest"
GRAMINE: Final = "gramine"
TPM: Final = "tpm"
AZURE_VTPM: Final = "azure-vtpm"
NITRO_NSM: Final = "nitro-nsm"
DEFAULT_DEVICE: Final = sev_guest.DEFAULT_DEVICE  # kept for callers of the SNP-only API


@dataclass(frozen=True)
class Interfaces:
    """Where this guest's attestation interfaces live (defaults: the kernel's paths)."""

    tsm_root: Path = DEFAULT_ROOT
    sev_guest_device: Path = sev_guest.DEFAULT_DEVICE
    tdx_guest_device: Path = tdx_guest.DEFAULT_DEVICE
    attestation_dir: Path = gramine.DEFAULT_ROOT
    tdx_sources: TdxSources | None = None


@dataclass(frozen=True)
class HardwareCollector:
    """One attestation interface: how to open it and how to tell whether it is usable
    (``probe`` returns a description of where it reads from, or None)."""

    name: str
    create: Callable[[Interfaces], Collector]
    probe: Callable[[Collector, Interfaces], str | None]


def _tsm(where: Interfaces) -> Collector:
    return ConfigfsTsmCollector(where.tsm_root, tdx_sources=where.tdx_sources)


def _probe_tsm(collector: Collector, where: Interfaces) -> str | None:
    if not isinstance(collector, ConfigfsTsmCollector) or not where.tsm_root.is_dir():
        return None
    try:
        provider = collector.provider()
    except KeybrokerError as exc:
        logger.info("configfs-tsm at %s not usable: %s", where.tsm_root, exc)
        return None
    if provider not in SUPPORTED_PROVIDERS:
        logger.info("configfs-tsm at %s has unsupported provider %s", where.tsm_root, provider)
        return None
    return f"{where.tsm_root} provider={provider}"


def _sev_guest(where: Interfaces) -> Collector:
    return SevGuestCollector(where.sev_guest_device)


def _probe_sev_guest(collector: Collector, where: Interfaces) -> str | None:
    return str(where.sev_guest_device) if collector.available() else None


def _tdx_guest(where: Interfaces) -> Collector:
    return TdxGuestCollector(where.tdx_guest_device, tdx_sources=where.tdx_sources)


def _probe_tdx_guest(collector: Collector, where: Interfaces) -> str | None:
    if not collector.available():
        return None
    return f"{where.tdx_guest_device} (quotes need TDX_CMD_GET_QUOTE)"


def _gramine(where: Interfaces) -> Collector:
    return GramineSgxCollector(where.attestation_dir)


def _probe_gramine(collector: Collector, where: Interfaces) -> str | None:
    return f"{where.attestation_dir} attestation_type=dcap" if collector.available() else None


def _nitro(where: Interfaces) -> Collector:
    del where  # the NSM's one device node
    return NitroNsmCollector()


def _probe_nitro(collector: Collector, where: Interfaces) -> str | None:
    del where
    return "/dev/nsm (Nitro Security Module)" if collector.available() else None


def _azure(where: Interfaces) -> Collector:
    del where  # the paravisor's vTPM through the kernel's resource manager, the IMDS defaults
    return AzureVtpmCollector()


def _probe_azure(collector: Collector, where: Interfaces) -> str | None:
    del where
    if not collector.available():
        return None
    return f"/dev/tpmrm0 (Azure paravisor vTPM, HCL report at {HCL_REPORT_INDEX:#x})"


def _tpm(where: Interfaces) -> Collector:
    del where  # the kernel's resource manager and securityfs logs (when present)
    return TpmCollector(ima_log=DEFAULT_IMA_LOG, logs_optional=True)


def _probe_tpm(collector: Collector, where: Interfaces) -> str | None:
    del where
    return "/dev/tpmrm0 (TPM 2.0, AK enrolment first)" if collector.available() else None


# Most preferred first (a TPM last: a confidential VM's own report is stronger evidence).
HARDWARE: Final = (
    HardwareCollector(CONFIGFS_TSM, _tsm, _probe_tsm),
    HardwareCollector(SEV_GUEST, _sev_guest, _probe_sev_guest),
    HardwareCollector(TDX_GUEST, _tdx_guest, _probe_tdx_guest),
    HardwareCollector(GRAMINE, _gramine, _probe_gramine),
    HardwareCollector(NITRO_NSM, _nitro, _probe_nitro),
    HardwareCollector(AZURE_VTPM, _azure, _probe_azure),
    HardwareCollector(TPM, _tpm, _probe_tpm),
)
HARDWARE_COLLECTORS: Final = tuple(entry.name for entry in HARDWARE)


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
    where = Interfaces(tsm_root, sev_guest_device, tdx_guest_device, attestation_dir,
                       tdx_sources)
    for entry in HARDWARE:
        if entry.name == name:
            return entry.create(where)
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
    where = Interfaces(tsm_root, sev_guest_device, tdx_guest_device, attestation_dir,
                       tdx_sources)
    found: list[Detected] = []
    for entry in HARDWARE:
        collector = entry.create(where)
        detail = entry.probe(collector, where)
        if detail is not None:
            found.append(Detected(entry.name, detail, collector))
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
