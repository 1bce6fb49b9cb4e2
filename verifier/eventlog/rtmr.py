"""RTMR replay: the CC measurement-register events of a TCG log extended into RTMR0..3 and
compared with the RTMRs a TDX quote reports (evidence-formats.md section 2.13).

Invariants:
- RTMRs start as 48 zero bytes; every event except EV_NO_ACTION extends
  ``RTMR[i-1] = SHA-384(RTMR[i-1] || sha384_digest)`` for CC MR index i in 1..4. EV_NO_ACTION
  never extends. Every other event must land in an RTMR: an index outside 1..4 (0 is MRTD,
  which no log can replay) raises ``EventLogMismatch``, so every event is covered by the check;
  an extended event without a SHA-384 digest is ``Malformed``.
- ``check_rtmrs`` raises ``EventLogMismatch`` naming the first RTMR whose replayed value differs
  from the quoted one (expected = quoted, actual = replayed); on success it returns the events
  as typed records, which later code may interpret (after recomputing digests of event data).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from keybroker.errors import EventLogMismatch, Malformed
from keybroker.evidence.tcg_log import ALG_SHA384, EV_NO_ACTION, TcgEvent

RTMR_COUNT = 4
RTMR_SIZE = 48


@dataclass(frozen=True)
class RtmrEvent:
    """An event extended into an RTMR: CC MR index, RTMR number (0..3), type, SHA-384 digest
    as recorded, and the event data (not proven by the digest until recomputed)."""

    mr_index: int
    rtmr: int
    event_type: int
    digest: bytes
    data: bytes


def rtmr_events(events: Iterable[TcgEvent]) -> tuple[RtmrEvent, ...]:
    """The events that extend an RTMR, in log order (EV_NO_ACTION events are skipped)."""
    out: list[RtmrEvent] = []
    for position, ev in enumerate(events):
        if ev.event_type == EV_NO_ACTION:
            continue
        if not 1 <= ev.index <= RTMR_COUNT:
            raise EventLogMismatch(
                "event targets a measurement register no RTMR replay covers",
                rule="ccel.rtmr_replay", expected="CC MR index 1..4",
                actual=f"event {position}: index {ev.index}, type {ev.event_type:#x}")
        digest = ev.digest(ALG_SHA384)
        if digest is None:
            raise Malformed("extended event has no SHA-384 digest", expected="SHA-384 digest",
                            actual=f"event {position}: algorithms {[a for a, _ in ev.digests]}")
        out.append(RtmrEvent(ev.index, ev.index - 1, ev.event_type, digest, ev.data))
    return tuple(out)


def replay_rtmrs(events: Iterable[TcgEvent]) -> list[bytes]:
    """Replay ``events`` into RTMR0..RTMR3 (SHA-384 extend from zero)."""
    registers = [bytes(RTMR_SIZE)] * RTMR_COUNT
    for ev in rtmr_events(events):
        registers[ev.rtmr] = hashlib.sha384(registers[ev.rtmr] + ev.digest).digest()
    return registers


def check_rtmrs(events: Sequence[TcgEvent], quoted: Sequence[bytes]) -> tuple[RtmrEvent, ...]:
    """Replay and compare with the quoted RTMR0..3; returns the replayed events on a match."""
    if len(quoted) != RTMR_COUNT or any(len(r) != RTMR_SIZE for r in quoted):
        raise Malformed("quoted RTMRs must be four 48-byte values",
                        expected=f"{RTMR_COUNT} x {RTMR_SIZE} bytes",
                        actual=str([len(r) for r in quoted]))
    replayed = replay_rtmrs(events)
    for i, (want, got) in enumerate(zip(quoted, replayed, strict=True)):
        if want != got:
            raise EventLogMismatch(f"RTMR{i} does not match the event log replay",
                                   rule="ccel.rtmr_replay", expected=bytes(want).hex(),
                                   actual=got.hex())
    return rtmr_events(events)
