"""Assembling TDX evidence (``TdxEvidence``: quote, CCEL, runtime log) around a quote source.

Invariants:
- The quote must parse as a TDX quote (``parse_tdx_quote``: MALFORMED otherwise, an SGX quote
  included) and carry exactly the requested report_data (BINDING otherwise, as for SNP).
- The runtime log sent is the one the quoted RTMR3 covers: the quote is produced while a shared
  lock on the log is held (``measure.runtime_log_snapshot``), so ``attester-agent measure``
  (exclusive lock across append + extend) cannot slip an event in between. If the log did not
  exist when the snapshot was taken but exists after quoting, the attempt is repeated (at most
  ``MAX_ATTEMPTS`` times, then UNAVAILABLE).
- The CCEL is attached when the guest has one (a ``CcelSource``: sysfs, or the simulator's);
  without a table the evidence carries no CCEL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.ccel import CcelReader, CcelSource
from attester_agent.measure import (
    DEFAULT_RUNTIME_LOG,
    runtime_log_exists,
    runtime_log_snapshot,
)
from keybroker.errors import BindingMismatch, Unavailable
from keybroker.evidence.dcap_quote import DcapQuote, parse_tdx_quote
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class TdxSources:
    """Where the TDX evidence besides the quote comes from (None = do not send a runtime log)."""

    ccel: CcelSource = field(default_factory=CcelReader)
    runtime_log: Path | None = DEFAULT_RUNTIME_LOG


def check_tdx_quote(quote: bytes, report_data: bytes, *, source: str) -> DcapQuote:
    """The parsed quote if it is a TDX quote for exactly ``report_data``."""
    parsed = parse_tdx_quote(quote)
    if parsed.td_report.report_data != report_data:
        raise BindingMismatch(f"{source} quote carries another report_data",
                              rule=f"{source} report_data", expected=report_data.hex(),
                              actual=parsed.td_report.report_data.hex())
    return parsed


def collect_tdx(
    quote_for: Callable[[bytes], bytes],
    report_data: bytes,
    sources: TdxSources,
    *,
    source: str,
) -> evidence_pb2.Evidence:
    """``TdxEvidence`` whose quote ``quote_for(report_data)`` produced (see the invariants)."""
    check_report_data(report_data)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with runtime_log_snapshot(sources.runtime_log) as runtime_log:
            quote = quote_for(report_data)
        if runtime_log is not None or not runtime_log_exists(sources.runtime_log):
            break
        logger.warning("runtime log %s appeared while quoting (attempt %d of %d); retrying",
                       sources.runtime_log, attempt, MAX_ATTEMPTS)
    else:
        raise Unavailable("the runtime log kept changing while quoting",
                          rule="runtime log snapshot", expected="a stable log",
                          actual=f"changed on all {MAX_ATTEMPTS} attempts")
    check_tdx_quote(quote, report_data, source=source)
    ccel = sources.ccel.read()
    logger.info("%s: TDX quote %d bytes, CCEL %s, runtime log %d bytes", source, len(quote),
                "present" if ccel else "absent", len(runtime_log or b""))
    return evidence_pb2.Evidence(tdx=evidence_pb2.TdxEvidence(
        quote=quote,
        ccel_table=ccel.table if ccel else b"",
        ccel_data=ccel.data if ccel else b"",
        runtime_log=runtime_log or b"",
    ))
