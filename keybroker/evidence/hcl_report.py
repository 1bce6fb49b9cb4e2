"""The Azure confidential VM "HCL report" (evidence-formats.md section 5.11), little-endian, in
construct: a 32-byte header, the hardware report area (an SNP attestation report, or a
TDREPORT padded to the same size), and the IGVM request data carrying the runtime-claims JSON.

Invariants:
- ``parse_hcl_report`` raises only ``Malformed``: the signature must be "HCLA", the report
  type SNP (2) or TDX (4), the hash type SHA-256 (1), the variable data within the bytes
  present and within ``MAX_VAR_DATA``; bytes after it are the NV index's padding and must be
  zero (or absent), so nothing can hide behind the runtime claims.
- The runtime claims are kept as exact bytes (their SHA-256 is what the hardware report binds);
  parsing them as JSON is the verifier's business.
- ``build_hcl_report`` is the exact inverse (plus zero padding up to ``pad_to``).
"""

from __future__ import annotations

from dataclasses import dataclass

import construct as c

from keybroker.errors import Malformed
from keybroker.evidence.content import refuse_foreign

HW_REPORT_SIZE = 1184
TDREPORT_SIZE = 1024
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
HASH_SHA256 = 1
MAX_VAR_DATA = 16 * 1024
MAX_REPORT = 64 * 1024
_SIGNATURE = b"HCLA"

_HCL = c.Struct(
    "signature" / c.Bytes(4),
    "version" / c.Int32ul,
    "report_size" / c.Int32ul,
    "request_type" / c.Int32ul,
    "status" / c.Int32ul,
    "reserved" / c.Bytes(12),
    "hw_report" / c.Bytes(HW_REPORT_SIZE),
    "data_size" / c.Int32ul,
    "igvm_version" / c.Int32ul,
    "report_type" / c.Int32ul,
    "hash_type" / c.Int32ul,
    "var_size" / c.Int32ul,
    "var_data" / c.Bytes(c.this.var_size),
    "padding" / c.GreedyBytes,
)


@dataclass(frozen=True)
class HclReport:
    """A parsed HCL report."""

    version: int
    report_size: int
    request_type: int
    status: int
    hw_report: bytes
    data_size: int
    igvm_version: int
    report_type: int
    hash_type: int
    runtime_claims: bytes

    @property
    def report_data(self) -> bytes:
        """The hardware report's 64-byte REPORT_DATA (SNP at 0x50, TDREPORT at 0x80)."""
        offset = 0x50 if self.report_type == REPORT_TYPE_SNP else 0x80
        return self.hw_report[offset:offset + 64]

    @property
    def snp_report(self) -> bytes:
        """The SNP attestation report (report type SNP only)."""
        return self.hw_report

    @property
    def tdreport(self) -> bytes:
        """The TDREPORT (report type TDX only)."""
        return self.hw_report[:TDREPORT_SIZE]


def parse_hcl_report(raw: bytes) -> HclReport:
    """Parse and structurally validate an HCL report (module invariants)."""
    raw = bytes(raw)
    if not 0x4D4 <= len(raw) <= MAX_REPORT or raw[:4] != _SIGNATURE:
        refuse_foreign(raw, "an Azure HCL report")
        raise Malformed("not an HCL report", expected=f'"HCLA" and 1236..{MAX_REPORT} bytes',
                        actual=f"{raw[:4]!r}, {len(raw)} bytes")
    try:
        f = _HCL.parse(raw)
    except (c.ConstructError, ValueError, OverflowError) as exc:
        raise Malformed("HCL report variable data runs past the bytes present",
                        expected="variable_data_size within the report",
                        actual=f"{len(raw)} bytes") from exc
    if f.report_type not in (REPORT_TYPE_SNP, REPORT_TYPE_TDX):
        raise Malformed("unknown HCL report type", expected="2 (SNP) or 4 (TDX)",
                        actual=str(f.report_type))
    if f.hash_type != HASH_SHA256:
        raise Malformed("unsupported runtime-claims hash type", expected="1 (SHA-256)",
                        actual=str(f.hash_type))
    if not 0 < f.var_size <= MAX_VAR_DATA:
        raise Malformed("runtime claims size out of range", expected=f"1..{MAX_VAR_DATA} bytes",
                        actual=f"{f.var_size} bytes")
    if any(f.padding):
        raise Malformed("non-zero bytes after the runtime claims", expected="zero padding",
                        actual=f"{sum(1 for b in f.padding if b)} non-zero bytes")
    return HclReport(version=f.version, report_size=f.report_size,
                     request_type=f.request_type, status=f.status, hw_report=f.hw_report,
                     data_size=f.data_size, igvm_version=f.igvm_version,
                     report_type=f.report_type, hash_type=f.hash_type,
                     runtime_claims=f.var_data)


def build_hcl_report(report: HclReport, *, pad_to: int = 0) -> bytes:
    """Serialise ``report`` (zero padding up to ``pad_to`` bytes)."""
    body = bytes(_HCL.build({
        "signature": _SIGNATURE, "version": report.version, "report_size": report.report_size,
        "request_type": report.request_type, "status": report.status, "reserved": bytes(12),
        "hw_report": report.hw_report, "data_size": report.data_size,
        "igvm_version": report.igvm_version, "report_type": report.report_type,
        "hash_type": report.hash_type, "var_size": len(report.runtime_claims),
        "var_data": report.runtime_claims, "padding": b""}))
    return body + bytes(max(0, pad_to - len(body)))
