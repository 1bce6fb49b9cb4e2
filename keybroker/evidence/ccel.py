"""TDX Confidential Computing Event Log: the CCEL ACPI table, RTMR replay and the check against
the RTMRs in a quote (evidence-formats.md section 2.13), in construct.

Invariants:
- ``parse_ccel_table``: exactly 56 bytes, signature "CCEL", Length field 56, ACPI checksum
  (byte sum mod 256) zero, reserved bytes zero, CC type 1 (SEV) or 2 (TDX); else ``Malformed``.
- ``parse_ccel_log``: the log area is no longer than the table's LAML (when a table is given),
  is a crypto-agile TCG log (see ``tcg``) and its Spec ID table includes SHA-384; else
  ``Malformed``.
- Replay: RTMRs start as 48 zero bytes; every event except EV_NO_ACTION extends
  ``RTMR[i-1] = SHA-384(RTMR[i-1] || sha384_digest)`` for CC MR index i in 1..4. EV_NO_ACTION
  never extends. Every other event must land in an RTMR: an index outside 1..4 (0 is MRTD,
  which no log can replay) raises ``EventLogMismatch``, so every event is covered by the check;
  an extended event without a SHA-384 digest is ``Malformed``.
- ``check_rtmrs`` raises ``EventLogMismatch`` naming the first RTMR whose replayed value differs
  from the quoted one (expected = quoted, actual = replayed); on success it returns the events
  as typed records, which later code may interpret (after recomputing digests of event data).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import construct as c

from keybroker.errors import EventLogMismatch, Malformed
from keybroker.evidence.tcg_log import ALG_SHA384, EV_NO_ACTION, EventLog, TcgEvent, parse_event_log

CCEL_SIGNATURE = b"CCEL"
CCEL_TABLE_SIZE = 56
CC_TYPE_SEV = 1
CC_TYPE_TDX = 2
RTMR_COUNT = 4
RTMR_SIZE = 48

_TABLE = c.Struct(
    "signature" / c.Bytes(4),
    "length" / c.Int32ul,
    "revision" / c.Int8ul,
    "checksum" / c.Int8ul,
    "oem_id" / c.Bytes(6),
    "oem_table_id" / c.Bytes(8),
    "oem_revision" / c.Int32ul,
    "creator_id" / c.Bytes(4),
    "creator_revision" / c.Int32ul,
    "cc_type" / c.Int8ul,
    "cc_subtype" / c.Int8ul,
    "reserved" / c.Bytes(2),
    "laml" / c.Int64ul,
    "lasa" / c.Int64ul,
)
assert _TABLE.sizeof() == CCEL_TABLE_SIZE


@dataclass(frozen=True)
class CcelTable:
    """The CCEL ACPI table: LAML is the log area length, LASA its guest-physical address."""

    revision: int
    checksum: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int
    creator_id: bytes
    creator_revision: int
    cc_type: int
    cc_subtype: int
    laml: int
    lasa: int


@dataclass(frozen=True)
class RtmrEvent:
    """An event extended into an RTMR: CC MR index, RTMR number (0..3), type, SHA-384 digest
    as recorded, and the event data (not proven by the digest until recomputed)."""

    mr_index: int
    rtmr: int
    event_type: int
    digest: bytes
    data: bytes


def parse_ccel_table(raw: bytes) -> CcelTable:
    """Parse the 56-byte CCEL ACPI table; raises only ``Malformed``."""
    if len(raw) != CCEL_TABLE_SIZE:
        raise Malformed("CCEL table has the wrong size", expected=f"{CCEL_TABLE_SIZE} bytes",
                        actual=f"{len(raw)} bytes")
    f = _TABLE.parse(raw)
    if f.signature != CCEL_SIGNATURE or f.length != CCEL_TABLE_SIZE:
        raise Malformed("not a CCEL table", expected=f"signature CCEL, length {CCEL_TABLE_SIZE}",
                        actual=f"signature {bytes(f.signature)!r}, length {f.length}")
    if sum(raw) % 256:
        raise Malformed("CCEL table checksum is wrong", expected="byte sum 0 mod 256",
                        actual=str(sum(raw) % 256))
    if any(f.reserved) or f.cc_type not in (CC_TYPE_SEV, CC_TYPE_TDX):
        raise Malformed("CCEL table CC type or reserved bytes invalid",
                        expected="CC type 1 or 2, reserved zero",
                        actual=f"CC type {f.cc_type}, reserved {bytes(f.reserved).hex()}")
    return CcelTable(
        revision=f.revision, checksum=f.checksum, oem_id=f.oem_id, oem_table_id=f.oem_table_id,
        oem_revision=f.oem_revision, creator_id=f.creator_id,
        creator_revision=f.creator_revision, cc_type=f.cc_type, cc_subtype=f.cc_subtype,
        laml=f.laml, lasa=f.lasa,
    )


def build_ccel_table(table: CcelTable) -> bytes:
    """The 56 bytes of ``table`` with the ACPI checksum recomputed (``table.checksum`` is
    ignored); ``parse_ccel_table`` of the result gives ``table`` back with that checksum."""
    fields = {**dataclasses.asdict(table), "signature": CCEL_SIGNATURE,
              "length": CCEL_TABLE_SIZE, "checksum": 0, "reserved": bytes(2)}
    try:
        unsummed: bytes = _TABLE.build(fields)
        out: bytes = _TABLE.build({**fields, "checksum": -sum(unsummed) % 256})
    except (c.ConstructError, ValueError, TypeError) as exc:
        raise Malformed("CCEL table fields do not fit the layout", actual=str(exc)) from None
    return out


def parse_ccel_log(data: bytes, table: CcelTable | None = None) -> EventLog:
    """Parse a CCEL log area (optionally bounded by ``table``); raises only ``Malformed``."""
    if table is not None and len(data) > table.laml:
        raise Malformed("CCEL log area is longer than the table's LAML",
                        expected=f"<= {table.laml} bytes", actual=f"{len(data)} bytes")
    log = parse_event_log(data)
    if all(a.alg_id != ALG_SHA384 for a in log.spec_id.algorithms):
        raise Malformed("CCEL log has no SHA-384 bank", expected="SHA-384 (0x000c)",
                        actual=str([a.alg_id for a in log.spec_id.algorithms]))
    return log


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
