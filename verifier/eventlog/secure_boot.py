"""Secure boot claims from a replayed TCG PC Client log: the SecureBoot variable and the key
databases (PK, KEK, db, dbx) measured into PCR 7 (TCG PC Client PFP, EV_EFI_VARIABLE_DRIVER_
CONFIG).

Invariants:
- Only a log already replayed to the quoted PCRs (``verifier.eventlog.pcr.check_pcrs``, with
  PCR 7 among them) may be interpreted; the caller guarantees it.
- Event data is used only where every recorded digest of the event recomputes from it (the
  data is what was measured); otherwise EVENT_LOG: data not covered by a digest never
  becomes a claim. Undecodable variable data of such an event is MALFORMED.
- A variable counts only under its UEFI vendor GUID (EFI_GLOBAL_VARIABLE for SecureBoot, PK
  and KEK; EFI_IMAGE_SECURITY_DATABASE for db and dbx), and only its first measurement, before
  the PCR 7 separator (a later event cannot override it).
- ``enabled`` is true only for SecureBoot data of exactly 0x01. No SecureBoot event means no
  claim (None), never "disabled".
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import construct as c

from keybroker.errors import EventLogMismatch, Malformed
from keybroker.evidence.tcg_log import HASH_NAMES, EventLog
from keybroker.evidence.uefi_event import (
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_SEPARATOR,
    VARIABLE_DATA,
)

SECURE_BOOT_PCR = 7
GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c").bytes_le
IMAGE_SECURITY = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f").bytes_le
VARIABLES = {"SecureBoot": GLOBAL, "PK": GLOBAL, "KEK": GLOBAL, "db": IMAGE_SECURITY,
             "dbx": IMAGE_SECURITY}
_HASHES = HASH_NAMES


@dataclass(frozen=True)
class SecureBootClaims:
    """Secure boot state and the SHA-256 of each key database's measured contents."""

    enabled: bool
    variables: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"enabled": self.enabled, "variables": dict(self.variables)}


def secure_boot_claims(log: EventLog) -> SecureBootClaims | None:
    """The claims a replayed log proves about secure boot (module invariants)."""
    found: dict[str, bytes] = {}
    for position, ev in enumerate(log.events):
        if ev.index != SECURE_BOOT_PCR:
            continue
        if ev.event_type == EV_SEPARATOR:
            break
        if ev.event_type != EV_EFI_VARIABLE_DRIVER_CONFIG:
            continue
        for alg, digest in ev.digests:
            name = _HASHES.get(alg)
            if name is not None and hashlib.new(name, ev.data).digest() != digest:
                raise EventLogMismatch("a PCR 7 variable event's data is not what its digest "
                                       "measured", rule="tpm.secure-boot",
                                       expected=digest.hex(),
                                       actual=f"event {position}: "
                                              f"{hashlib.new(name, ev.data).hexdigest()}")
        try:
            variable = VARIABLE_DATA.parse(ev.data)
            var_name = bytes(variable.name).decode("utf-16-le")
        except (c.ConstructError, UnicodeDecodeError) as exc:
            raise Malformed("PCR 7 variable event data does not decode",
                            expected="UEFI_VARIABLE_DATA", actual=f"event {position}") from exc
        if VARIABLES.get(var_name) == variable.guid and var_name not in found:
            found[var_name] = bytes(variable.data)
    if "SecureBoot" not in found:
        return None
    return SecureBootClaims(
        enabled=found["SecureBoot"] == b"\x01",
        variables={k: hashlib.sha256(v).hexdigest() for k, v in found.items()
                   if k != "SecureBoot"})
