"""Confidential Computing Event Log: the CCEL ACPI table and the log area it points at
(evidence-formats.md section 2.13), in construct; RTMR replay is the verifier's
(``verifier.eventlog.rtmr``).

Invariants:
- ``parse_ccel_table``: exactly 56 bytes, signature "CCEL", Length field 56, ACPI checksum
  (byte sum mod 256) zero, reserved bytes zero, CC type 1 (SEV) or 2 (TDX); else ``Malformed``.
- ``parse_ccel_log``: the log area is no longer than the table's LAML (when a table is given),
  is a crypto-agile TCG log (see ``tcg``) and its Spec ID table includes SHA-384; else
  ``Malformed``.
- ``build_ccel_table`` is the exact inverse of ``parse_ccel_table`` (checksum computed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import construct as c

from keybroker.errors import Malformed
from keybroker.evidence.tcg_log import ALG_SHA384, EventLog, parse_event_log

CCEL_SIGNATURE = b"CCEL"
CCEL_TABLE_SIZE = 56
CC_TYPE_SEV = 1
CC_TYPE_TDX = 2

# The ACPI header's first fields: enough to find and bound a table before reading it whole.
_HEAD_FIELDS = ("signature" / c.Bytes(4), "length" / c.Int32ul)
TABLE_HEAD = c.Struct(*_HEAD_FIELDS)
_TABLE = c.Struct(
    *_HEAD_FIELDS,
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
