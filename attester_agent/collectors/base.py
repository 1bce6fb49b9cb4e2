"""The evidence collector protocol shared by every guest interface.

Invariants:
- A collector produces evidence for exactly the 64 ``report_data`` bytes it is given
  (``check_report_data``); it never chooses or alters them.
- ``available()`` only probes (no report is generated); ``collect()`` either returns a
  complete ``Evidence`` message or raises a typed error from ``keybroker.errors``
  (``Unavailable`` when the interface cannot serve, ``Malformed`` when it answers with bytes
  of the wrong shape).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from keybroker.binding import REPORT_DATA_SIZE
from keybroker.errors import Malformed
from keybroker.v1 import evidence_pb2


class Collector(Protocol):
    """Gathers evidence from one guest interface."""

    @property
    def name(self) -> str:
        """Stable collector name used on the command line (e.g. ``configfs-tsm``)."""
        ...

    @property
    def tee(self) -> int:
        """The ``keybroker.v1.TeeType`` value of the evidence this collector produces."""
        ...

    def available(self) -> bool:
        """Whether the interface is present and usable by this process (probe only)."""
        ...

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """Evidence whose report carries exactly ``report_data`` (64 bytes)."""
        ...


@runtime_checkable
class RequestBound(Protocol):
    """A collector whose evidence carries parts of the request besides report_data (Nitro:
    the challenge nonce and the agent's public key); clients call ``collect_for``."""

    def collect_for(self, report_data: bytes, *, nonce: bytes,
                    public_key: bytes) -> evidence_pb2.Evidence:
        """Evidence for ``report_data`` that also carries ``nonce`` and ``public_key``."""
        ...


def collect_evidence(collector: Collector, report_data: bytes, *, nonce: bytes,
                     public_key: bytes) -> evidence_pb2.Evidence:
    """``collect_for`` when the collector binds the request, else ``collect``."""
    if isinstance(collector, RequestBound):
        return collector.collect_for(report_data, nonce=nonce, public_key=public_key)
    return collector.collect(report_data)


def check_report_data(report_data: bytes) -> None:
    """Refuse anything but exactly 64 bytes of report_data (MALFORMED)."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise Malformed("report_data must be exactly 64 bytes",
                        expected=f"{REPORT_DATA_SIZE} bytes", actual=f"{len(report_data)} bytes")
