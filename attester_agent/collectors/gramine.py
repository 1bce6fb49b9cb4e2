"""SGX evidence from inside a Gramine enclave through its ``/dev/attestation`` pseudo-files.

Protocol: ``attestation_type`` reads "dcap" when DCAP quotes are available; writing 64 bytes to
``user_report_data`` sets the enclave report's REPORTDATA; reading ``quote`` returns the DCAP
quote the quoting enclave made for it.

Invariants:
- Only ``attestation_type`` "dcap" is used ("none", "epid" or anything else is UNAVAILABLE).
- ``user_report_data`` receives exactly the 64 report_data bytes in one write; files are
  opened with ``O_NOFOLLOW``; the quote read is bounded by ``MAX_QUOTE_SIZE``.
- The quote must parse as an SGX quote v3 (``parse_sgx_quote``; a TDX quote is MALFORMED) and
  carry exactly the requested report_data. Another report_data (e.g. another thread of the
  enclave wrote ``user_report_data`` in between) is retried, at most ``max_attempts`` times,
  then BINDING.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.pseudo_file import read_bounded, write_once
from keybroker.errors import BindingMismatch, Malformed, Unavailable
from keybroker.evidence.dcap_quote import MAX_QUOTE_SIZE, parse_sgx_quote
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

DEFAULT_ROOT: Final = Path("/dev/attestation")
ATTESTATION_DCAP: Final = "dcap"
_MAX_TYPE_SIZE: Final = 64
_LOCK = threading.Lock()  # one user_report_data -> quote sequence at a time in this process


class GramineSgxCollector:
    """SGX DCAP quotes from Gramine's ``<root>/{attestation_type,user_report_data,quote}``."""

    name: Final = "gramine"
    tee: Final = evidence_pb2.TEE_TYPE_SGX

    def __init__(self, root: Path = DEFAULT_ROOT, *, max_attempts: int = 3) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.root = root
        self.max_attempts = max_attempts

    def attestation_type(self) -> str:
        """The content of ``attestation_type`` (UNAVAILABLE when it cannot be read)."""
        raw = self._read_file(self.root / "attestation_type", _MAX_TYPE_SIZE)
        return raw.decode("ascii", errors="replace").strip("\x00").strip()

    def available(self) -> bool:
        """True inside a Gramine enclave configured for DCAP attestation."""
        try:
            kind = self.attestation_type()
        except (Unavailable, Malformed) as exc:
            logger.info("Gramine attestation at %s not usable: %s", self.root, exc)
            return False
        if kind != ATTESTATION_DCAP:
            logger.info("Gramine attestation type is %r, not dcap", kind)
            return False
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """An SGX quote v3 carrying exactly ``report_data``."""
        check_report_data(report_data)
        kind = self.attestation_type()
        if kind != ATTESTATION_DCAP:
            raise Unavailable("Gramine is not configured for DCAP attestation",
                              rule="attestation_type", expected=ATTESTATION_DCAP,
                              actual=kind[:32])
        found = b""
        for attempt in range(1, self.max_attempts + 1):
            with _LOCK:
                self._write_file(self.root / "user_report_data", report_data)
                quote = self._read_file(self.root / "quote", MAX_QUOTE_SIZE)
            found = parse_sgx_quote(quote).sgx_report.report_data
            if found == report_data:
                logger.info("Gramine SGX quote collected (%d bytes, attempt %d)", len(quote),
                            attempt)
                return evidence_pb2.Evidence(sgx=evidence_pb2.SgxEvidence(quote=quote))
            logger.warning("Gramine quote carries another report_data (attempt %d of %d)",
                           attempt, self.max_attempts)
        raise BindingMismatch("Gramine quote carries another report_data",
                              rule="SGX report_data", expected=report_data.hex(),
                              actual=found.hex())

    # -- the pseudo-file operations (Gramine's interface) ----------------------------------

    def _write_file(self, path: Path, data: bytes) -> None:
        """Write ``data`` in a single write call."""
        write_once(path, data, what="Gramine")

    def _read_file(self, path: Path, limit: int) -> bytes:
        """Read a whole pseudo-file (at most ``limit`` bytes)."""
        return read_bounded(path, limit, what="Gramine")
