"""The TDX Confidential Computing Event Log as the kernel exposes it in sysfs
(evidence-formats.md sections 2.13 and 6.2): ``<root>/CCEL`` (the 56-byte ACPI table) and
``<root>/data/CCEL`` (the log area), ``<root>`` being ``/sys/firmware/acpi/tables``.

Invariants:
- Both files are read with ``O_NOFOLLOW`` and bounded sizes (table ``MAX_TABLE_SIZE``, log area
  ``MAX_DATA_SIZE``, below the gRPC message limit); anything larger is MALFORMED, never
  truncated.
- The table must start with the signature "CCEL" and its Length field must equal the bytes read
  (MALFORMED otherwise); everything else is the verifier's to parse and judge.
- No table means no CCEL: ``read_ccel`` returns None and the evidence carries none (the verifier
  then cannot replay RTMR0-2 from events; its policy decides). A table without its log area
  (or the reverse) is UNAVAILABLE: half a CCEL is never sent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from attester_agent.collectors.pseudo_file import read_bounded
from keybroker.errors import Malformed, Unavailable
from keybroker.evidence.ccel import CCEL_SIGNATURE, TABLE_HEAD

logger = logging.getLogger(__name__)

DEFAULT_ACPI_TABLES: Final = Path("/sys/firmware/acpi/tables")
MAX_TABLE_SIZE: Final = 4096
MAX_DATA_SIZE: Final = 3 * 1024 * 1024



@dataclass(frozen=True)
class Ccel:
    """The raw CCEL table and log area, as read."""

    table: bytes
    data: bytes


class CcelSource(Protocol):
    """Anything that yields the guest's CCEL (the sysfs reader, or a simulator's)."""

    def read(self) -> Ccel | None:
        """The CCEL, or None when there is none."""
        ...


class CcelReader:
    """Reads the CCEL from an ACPI tables directory (configurable so tests use a temp tree)."""

    def __init__(self, root: Path = DEFAULT_ACPI_TABLES) -> None:
        self.root = root

    @property
    def table_path(self) -> Path:
        """``<root>/CCEL``."""
        return self.root / "CCEL"

    @property
    def data_path(self) -> Path:
        """``<root>/data/CCEL``."""
        return self.root / "data" / "CCEL"

    def read(self) -> Ccel | None:
        """The CCEL, or None when this guest has no CCEL table."""
        table = _read_bounded(self.table_path, MAX_TABLE_SIZE)
        if table is None:
            logger.info("no CCEL table at %s; evidence carries no CCEL", self.table_path)
            return None
        _check_table(table)
        data = _read_bounded(self.data_path, MAX_DATA_SIZE)
        if data is None:
            raise Unavailable("the CCEL table exists but its log area does not",
                              rule="CCEL log area", expected=f"readable {self.data_path}",
                              actual="absent")
        logger.info("CCEL read: table %d bytes, log area %d bytes", len(table), len(data))
        return Ccel(table=table, data=data)


def _check_table(table: bytes) -> None:
    if len(table) < TABLE_HEAD.sizeof():
        raise Malformed("the CCEL table is truncated", rule="CCEL table",
                        expected=">= 8 bytes", actual=f"{len(table)} bytes")
    head = TABLE_HEAD.parse(table)
    if head.signature != CCEL_SIGNATURE:
        raise Malformed("the CCEL table has the wrong signature", rule="CCEL table",
                        expected="CCEL", actual=bytes(head.signature).hex())
    if head.length != len(table):
        raise Malformed("the CCEL table length field does not match its size",
                        rule="CCEL table", expected=f"{len(table)}", actual=f"{head.length}")


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The whole file (None when it does not exist); larger than ``limit`` is MALFORMED."""
    if not os.path.lexists(path):
        return None
    return read_bounded(path, limit, what="CCEL", rule="CCEL size bound")
