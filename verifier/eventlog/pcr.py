"""PCR replay: a TCG PC Client event log (the same parser as the CCEL) extended into PCRs, per
bank, and compared with the PCR values a quote proved (evidence-formats.md section 5.9).

Invariants:
- PCRs 0..16 and 23 start at zero, 17..22 at all-0xFF (the DRTM PCRs); a StartupLocality
  EV_NO_ACTION event before the first PCR0 extend sets PCR0's start to its locality in the last
  byte. EV_NO_ACTION never extends anything else.
- Every other event extends ``PCR[i] = H_bank(PCR[i] || digest)`` in every bank the log
  records; an event without a digest for one of the log's banks is ``Malformed``; a PCR index
  above 23 is ``EventLogMismatch``.
- ``check_pcrs`` compares every PCR the log extends, in every bank the quote covers, with the
  quoted value: a value that differs is ``EventLogMismatch`` (expected = quoted, actual =
  replayed); a PCR the log extends but the quote does not select is ``MeasurementMismatch``
  (the quote does not prove what the log claims). PCRs the log never touches are not claimed
  by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from keybroker.errors import EventLogMismatch, Malformed, MeasurementMismatch
from keybroker.evidence.tcg_log import EV_NO_ACTION, HASH_NAMES, EventLog

PCR_COUNT = 24
_DRTM = range(17, 23)
_STARTUP_LOCALITY = b"StartupLocality\x00"
_NAMES = HASH_NAMES


def _start(pcr: int, size: int, locality: int) -> bytes:
    if pcr in _DRTM:
        return b"\xff" * size
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes([locality])
    return bytes(size)


def replay_pcrs(log: EventLog) -> dict[int, dict[int, bytes]]:
    """Bank algorithm -> PCR index -> replayed value, for every PCR the log extends."""
    sizes = {a.alg_id: a.digest_size for a in log.spec_id.algorithms if a.alg_id in _NAMES}
    if not sizes:
        raise Malformed("event log records no bank this verifier can replay",
                        expected="SHA-1, SHA-256, SHA-384 or SHA-512",
                        actual=str([a.alg_id for a in log.spec_id.algorithms]))
    banks: dict[int, dict[int, bytes]] = {alg: {} for alg in sizes}
    locality = 0
    for position, ev in enumerate(log.events):
        if ev.event_type == EV_NO_ACTION:
            if (ev.index == 0 and ev.data[:16] == _STARTUP_LOCALITY and len(ev.data) == 17
                    and all(0 not in bank for bank in banks.values())):
                locality = ev.data[16]
            continue
        if not 0 <= ev.index < PCR_COUNT:
            raise EventLogMismatch("event extends a PCR that does not exist", rule="tpm.eventlog",
                                   expected=f"PCR 0..{PCR_COUNT - 1}",
                                   actual=f"event {position}: PCR {ev.index}")
        for alg, size in sizes.items():
            digest = ev.digest(alg)
            if digest is None:
                raise Malformed("extended event lacks a digest of one of the log's banks",
                                expected=_NAMES[alg], actual=f"event {position}")
            bank = banks[alg]
            current = bank.get(ev.index, _start(ev.index, size, locality))
            bank[ev.index] = hashlib.new(_NAMES[alg], current + digest).digest()
    return banks


def check_pcrs(log: EventLog, quoted: Mapping[int, Mapping[int, bytes]]
               ) -> dict[int, dict[int, bytes]]:
    """Replay ``log`` and compare with ``quoted`` (module invariants); the replayed values of
    the banks the quote covers on success."""
    replayed = replay_pcrs(log)
    checked: dict[int, dict[int, bytes]] = {}
    for alg, values in quoted.items():
        bank = replayed.get(alg)
        if bank is None:
            continue  # the log does not record this bank
        for pcr, value in sorted(bank.items()):
            want = values.get(pcr)
            if want is None:  # hostile-evidence row 51: a log replayed against unquoted PCRs
                raise MeasurementMismatch("the quote does not cover a PCR the event log "
                                          "extends", rule="tpm.pcr-selection",
                                          expected=f"{_NAMES[alg]} PCR {pcr} in the quote",
                                          actual="not selected")
            if want != value:
                raise EventLogMismatch(f"{_NAMES[alg]} PCR {pcr} does not match the event log "
                                       "replay", rule="tpm.eventlog", expected=bytes(want).hex(),
                                       actual=value.hex())
        checked[alg] = bank
    if not checked:
        raise EventLogMismatch("the event log records none of the quoted banks",
                               rule="tpm.eventlog",
                               expected=", ".join(_NAMES.get(a, str(a)) for a in quoted),
                               actual=", ".join(_NAMES[a] for a in replayed))
    return checked
