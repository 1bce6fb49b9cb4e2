"""The TDREPORT_STRUCT the TDX module returns to a TD (``TDG.MR.REPORT``; evidence-formats.md
section 2.11): REPORTMACSTRUCT, TEE_TCB_INFO and TD_INFO, in construct, and its builder.

Invariants:
- ``parse_tdreport`` accepts exactly 1024 bytes of REPORTTYPE.type 0x81 and raises only
  ``Malformed``; ``build_tdreport`` is its inverse for the fields a quote's TD report body
  carries (hashes computed, MAC as given).
- The TEE_TCB_INFO and TD_INFO fields are the quote's field groups
  (``keybroker.evidence.dcap_quote.TEE_TCB_FIELDS`` / ``TD_INFO_FIELDS``), so the TD layout is
  declared once.
- A TDREPORT is MAC'd by the CPU, not signed: it is no evidence for a remote verifier; the agent
  uses it to ask for a quote and to check that the quote describes the same TD.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import construct as c

from keybroker.errors import Malformed
from keybroker.evidence.dcap_quote import TD_INFO_FIELDS, TEE_TCB_FIELDS, TdReportBody

REPORTDATA_SIZE: Final = 64
TDREPORT_SIZE: Final = 1024
REPORT_TYPE_TDX: Final = 0x81

_REPORT_MAC = c.Struct(
    "report_type" / c.Int8ul,
    "report_subtype" / c.Int8ul,
    "report_version" / c.Int8ul,
    "reserved_type" / c.Int8ul,
    "reserved1" / c.Bytes(12),
    "cpu_svn" / c.Bytes(16),
    "tee_tcb_info_hash" / c.Bytes(48),
    "tee_info_hash" / c.Bytes(48),
    "report_data" / c.Bytes(REPORTDATA_SIZE),
    "reserved2" / c.Bytes(32),
    "mac" / c.Bytes(32),
)
_TEE_TCB_INFO = c.Struct(
    "valid" / c.Bytes(8),
    *TEE_TCB_FIELDS,
    "tee_tcb_svn2" / c.Bytes(16),
    "reserved" / c.Bytes(95),
)
_TD_INFO = c.Struct(
    *TD_INFO_FIELDS,
    "servtd_hash" / c.Bytes(48),
    "reserved" / c.Bytes(64),
)
_TDREPORT = c.Struct(
    "mac" / _REPORT_MAC,
    "tee_tcb_info" / c.Bytes(239),
    "reserved" / c.Bytes(17),
    "td_info" / c.Bytes(512),
)
assert _REPORT_MAC.sizeof() == 256
assert _TEE_TCB_INFO.sizeof() == 239
assert _TD_INFO.sizeof() == 512
assert _TDREPORT.sizeof() == TDREPORT_SIZE


@dataclass(frozen=True)
class TdReport:
    """The fields of a TDREPORT_STRUCT this agent uses; ``raw`` is the 1024 bytes."""

    report_type: int
    cpu_svn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    report_data: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    td_attributes: int
    xfam: int
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, ...]
    raw: bytes

    @property
    def hashes_consistent(self) -> bool:
        """Whether TEE_TCB_INFO_HASH and TEE_INFO_HASH match the bytes they cover."""
        tcb_info = self.raw[0x100:0x100 + 239]
        td_info = self.raw[0x200:0x400]
        return (hashlib.sha384(tcb_info).digest() == self.tee_tcb_info_hash
                and hashlib.sha384(td_info).digest() == self.tee_info_hash)

    def mismatches(self, body: TdReportBody) -> list[str]:
        """Names of the TD fields in which a quote's TD report body differs from this report."""
        pairs = {
            "mr_td": (self.mr_td, body.mr_td),
            "rtmrs": (self.rtmrs, body.rtmrs),
            "td_attributes": (self.td_attributes, body.td_attributes),
            "xfam": (self.xfam, body.xfam),
            "mr_config_id": (self.mr_config_id, body.mr_config_id),
            "mr_owner": (self.mr_owner, body.mr_owner),
            "mr_owner_config": (self.mr_owner_config, body.mr_owner_config),
            "mr_seam": (self.mr_seam, body.mr_seam),
            "report_data": (self.report_data, body.report_data),
        }
        return [name for name, (ours, theirs) in pairs.items() if ours != theirs]


def parse_tdreport(raw: bytes) -> TdReport:
    """Parse a TDREPORT_STRUCT; anything but 1024 bytes of type 0x81 is MALFORMED."""
    if len(raw) != TDREPORT_SIZE:
        raise Malformed("TDREPORT has the wrong size", rule="TDREPORT size",
                        expected=f"{TDREPORT_SIZE} bytes", actual=f"{len(raw)} bytes")
    f = _TDREPORT.parse(raw)
    if f.mac.report_type != REPORT_TYPE_TDX:
        raise Malformed("TDREPORT is not a TDX report", rule="REPORTTYPE.type",
                        expected=f"{REPORT_TYPE_TDX:#x}", actual=f"{f.mac.report_type:#x}")
    tcb = _TEE_TCB_INFO.parse(f.tee_tcb_info)
    td = _TD_INFO.parse(f.td_info)
    return TdReport(
        report_type=f.mac.report_type, cpu_svn=f.mac.cpu_svn,
        tee_tcb_info_hash=f.mac.tee_tcb_info_hash, tee_info_hash=f.mac.tee_info_hash,
        report_data=f.mac.report_data, tee_tcb_svn=tcb.tee_tcb_svn, mr_seam=tcb.mr_seam,
        mr_signer_seam=tcb.mr_signer_seam, td_attributes=td.td_attributes, xfam=td.xfam,
        mr_td=td.mr_td, mr_config_id=td.mr_config_id, mr_owner=td.mr_owner,
        mr_owner_config=td.mr_owner_config, rtmrs=tuple(td.rtmrs), raw=bytes(raw),
    )


def build_tdreport(body: TdReportBody, *, cpu_svn: bytes = bytes(16),
                   mac: bytes = bytes(32)) -> bytes:
    """A TDREPORT_STRUCT describing the same TD as a quote's TD report body (hashes computed,
    MAC as given). For tests and simulators: a real TDREPORT comes from the TDX module."""
    tcb_info: bytes = _TEE_TCB_INFO.build({
        "valid": (0x301FF if body.is_td15 else 0x1FF).to_bytes(8, "little"),
        "tee_tcb_svn": body.tee_tcb_svn, "mr_seam": body.mr_seam,
        "mr_signer_seam": body.mr_signer_seam, "seam_attributes": body.seam_attributes,
        "tee_tcb_svn2": body.tee_tcb_svn2 or bytes(16), "reserved": bytes(95),
    })
    td_info: bytes = _TD_INFO.build({
        "td_attributes": body.td_attributes, "xfam": body.xfam, "mr_td": body.mr_td,
        "mr_config_id": body.mr_config_id, "mr_owner": body.mr_owner,
        "mr_owner_config": body.mr_owner_config, "rtmrs": list(body.rtmrs),
        "servtd_hash": body.mr_service_td or bytes(48), "reserved": bytes(64),
    })
    out: bytes = _TDREPORT.build({
        "mac": {
            "report_type": REPORT_TYPE_TDX, "report_subtype": 0,
            "report_version": 1 if body.is_td15 else 0, "reserved_type": 0,
            "reserved1": bytes(12), "cpu_svn": cpu_svn,
            "tee_tcb_info_hash": hashlib.sha384(tcb_info).digest(),
            "tee_info_hash": hashlib.sha384(td_info).digest(),
            "report_data": body.report_data, "reserved2": bytes(32), "mac": mac,
        },
        "tee_tcb_info": tcb_info, "reserved": bytes(17), "td_info": td_info,
    })
    return out
