"""Which hardware collectors exist on this guest, and selecting one by name.

Invariants:
- Only hardware-backed collectors are known here (configfs-tsm, sev-guest). The simulator is
  deliberately absent: it is never detected nor selected automatically, only constructed
  explicitly with its insecure flag (``attester_agent.collectors.simulator``).
- Automatic selection prefers configfs-tsm over /dev/sev-guest and fails with UNAVAILABLE
  when nothing usable is present; it never falls back to anything weaker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from attester_agent.collectors.base import Collector
from attester_agent.collectors.configfs_tsm import (
    DEFAULT_ROOT,
    SUPPORTED_PROVIDERS,
    ConfigfsTsmCollector,
)
from attester_agent.collectors.sev_guest import DEFAULT_DEVICE, SevGuestCollector
from keybroker.errors import KeybrokerError, Unavailable

logger = logging.getLogger(__name__)

CONFIGFS_TSM: Final = "configfs-tsm"
SEV_GUEST: Final = "sev-guest"
HARDWARE_COLLECTORS: Final = (CONFIGFS_TSM, SEV_GUEST)


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
    sev_guest_device: Path = DEFAULT_DEVICE,
) -> Collector:
    """The hardware collector called ``name`` (not probed); unknown names raise ValueError."""
    if name == CONFIGFS_TSM:
        return ConfigfsTsmCollector(tsm_root)
    if name == SEV_GUEST:
        return SevGuestCollector(sev_guest_device)
    expected = ", ".join(HARDWARE_COLLECTORS)
    raise ValueError(f"unknown collector {name!r}; expected one of {expected}")


def detect(
    *,
    tsm_root: Path = DEFAULT_ROOT,
    sev_guest_device: Path = DEFAULT_DEVICE,
) -> list[Detected]:
    """Usable hardware collectors, most preferred first (never the simulator)."""
    found: list[Detected] = []
    tsm = ConfigfsTsmCollector(tsm_root)
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
    return found


def auto_select(
    *,
    tsm_root: Path = DEFAULT_ROOT,
    sev_guest_device: Path = DEFAULT_DEVICE,
) -> Collector:
    """The most preferred usable hardware collector; UNAVAILABLE when there is none."""
    found = detect(tsm_root=tsm_root, sev_guest_device=sev_guest_device)
    if not found:
        raise Unavailable("no attestation interface found on this guest",
                          expected=f"{tsm_root} or {sev_guest_device}", actual="none usable")
    return found[0].collector
