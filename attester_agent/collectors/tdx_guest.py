"""TDX evidence through the ``/dev/tdx_guest`` character device (evidence-formats.md sections
2.11 and 6.2).

``TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req {u8 reportdata[64];
u8 tdreport[1024];})`` returns a TDREPORT_STRUCT: MAC'd by the CPU, not signed, so it is no
evidence for a remote verifier. Upstream kernels produce quotes through configfs-tsm only.
Some older (pre-configfs) kernels also had ``TDX_CMD_GET_QUOTE`` taking
``struct tdx_quote_req {u64 buf; u64 len;}`` pointing at a ``tdx_quote_hdr {u64 version;
u64 status; u32 in_len; u32 out_len; u8 data[];}`` buffer that carries the TDREPORT in and the
quote out (the layout go-tdx-guest's client uses, with ``_IOWR('T', 2, 16)``; the kernel patch
series declared it ``_IOR('T', 2, 16)``, which is tried when the first number is unknown).

Invariants:
- The TDREPORT is parsed with construct (exactly 1024 bytes, REPORTTYPE.type 0x81) and must
  carry the requested REPORTDATA (BINDING otherwise).
- Quotes come only from GET_QUOTE: a kernel without it is UNAVAILABLE with a pointer to
  configfs-tsm, never a TDREPORT passed off as evidence.
- The quote must lie inside the buffer (``out_len``), parse as a TDX quote, carry the requested
  report_data and describe the same TD as the TDREPORT it was made from (MRTD, RTMRs,
  attributes, MRCONFIGID...); otherwise MALFORMED / BINDING.
- A GET_QUOTE status other than success is UNAVAILABLE, named (in flight, error, service
  unavailable).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import construct as c

from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.tdx_evidence import TdxSources, check_tdx_quote, collect_tdx
from keybroker.errors import BindingMismatch, Malformed, Unavailable
from keybroker.evidence.dcap_quote import TdReportBody
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

DEFAULT_DEVICE: Final = Path("/dev/tdx_guest")
REPORTDATA_SIZE: Final = 64
TDREPORT_SIZE: Final = 1024
REPORT_TYPE_TDX: Final = 0x81

_IOC_WRITE: Final = 1
_IOC_READ: Final = 2


def ioc(direction: int, kind: str, number: int, size: int) -> int:
    """Linux ``_IOC(dir, type, nr, size)`` (asm-generic layout, as on x86)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


TDX_REPORT_REQ = c.Struct("reportdata" / c.Bytes(REPORTDATA_SIZE),
                          "tdreport" / c.Bytes(TDREPORT_SIZE))
TDX_QUOTE_REQ = c.Struct("buf" / c.Int64ul, "len" / c.Int64ul)
TDX_QUOTE_HDR = c.Struct("version" / c.Int64ul, "status" / c.Int64ul,
                         "in_len" / c.Int32ul, "out_len" / c.Int32ul)
TDX_CMD_GET_REPORT0: Final = ioc(_IOC_READ | _IOC_WRITE, "T", 1, TDX_REPORT_REQ.sizeof())
TDX_CMD_GET_QUOTE: Final = ioc(_IOC_READ | _IOC_WRITE, "T", 2, TDX_QUOTE_REQ.sizeof())
TDX_CMD_GET_QUOTE_IOR: Final = ioc(_IOC_READ, "T", 2, TDX_QUOTE_REQ.sizeof())
assert TDX_CMD_GET_REPORT0 == 0xC4405401
assert TDX_CMD_GET_QUOTE == 0xC0105402
assert TDX_CMD_GET_QUOTE_IOR == 0x80105402

QUOTE_HDR_VERSION: Final = 1
QUOTE_BUFFER_SIZE: Final = 16 * 1024
GET_QUOTE_SUCCESS: Final = 0
GET_QUOTE_STATUS: Final = {
    0xFFFFFFFFFFFFFFFF: "GET_QUOTE_IN_FLIGHT",
    0x8000000000000000: "GET_QUOTE_ERROR",
    0x8000000000000001: "GET_QUOTE_SERVICE_UNAVAILABLE",
}
_UNKNOWN_IOCTL: Final = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS})

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
    "tee_tcb_svn" / c.Bytes(16),
    "mr_seam" / c.Bytes(48),
    "mr_signer_seam" / c.Bytes(48),
    "seam_attributes" / c.Bytes(8),
    "tee_tcb_svn2" / c.Bytes(16),
    "reserved" / c.Bytes(95),
)
_TD_INFO = c.Struct(
    "td_attributes" / c.Int64ul,
    "xfam" / c.Int64ul,
    "mr_td" / c.Bytes(48),
    "mr_config_id" / c.Bytes(48),
    "mr_owner" / c.Bytes(48),
    "mr_owner_config" / c.Bytes(48),
    "rtmrs" / c.Array(4, c.Bytes(48)),
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


Ioctl = Callable[[int, int, bytearray], None]


def sys_ioctl(fd: int, request: int, arg: bytearray) -> None:
    """``ioctl(fd, request, arg)`` with ``arg`` passed by address and updated in place."""
    fcntl.ioctl(fd, request, arg, True)


def get_tdreport(fd: int, report_data: bytes, ioctl: Ioctl = sys_ioctl) -> bytes:
    """TDX_CMD_GET_REPORT0 on ``fd``: the 1024-byte TDREPORT (raises ``OSError``)."""
    check_report_data(report_data)
    buf = bytearray(TDX_REPORT_REQ.build({"reportdata": report_data,
                                          "tdreport": bytes(TDREPORT_SIZE)}))
    ioctl(fd, TDX_CMD_GET_REPORT0, buf)
    return bytes(TDX_REPORT_REQ.parse(bytes(buf)).tdreport)


def pack_quote_buffer(tdreport: bytes, size: int = QUOTE_BUFFER_SIZE) -> bytes:
    """The GET_QUOTE buffer: ``tdx_quote_hdr`` (version 1, in_len) then the TDREPORT, zero-padded
    to ``size``."""
    head: bytes = TDX_QUOTE_HDR.build({"version": QUOTE_HDR_VERSION, "status": 0,
                                       "in_len": len(tdreport), "out_len": 0})
    if len(head) + len(tdreport) > size:
        raise ValueError("the quote buffer cannot hold the TDREPORT")
    return head + tdreport + bytes(size - len(head) - len(tdreport))


def unpack_quote_buffer(buf: bytes) -> bytes:
    """The quote in a GET_QUOTE buffer after the call (see the module invariants)."""
    hdr_size = TDX_QUOTE_HDR.sizeof()
    if len(buf) < hdr_size:
        raise Malformed("GET_QUOTE buffer is truncated", expected=f">= {hdr_size} bytes",
                        actual=f"{len(buf)} bytes")
    hdr = TDX_QUOTE_HDR.parse(buf[:hdr_size])
    if hdr.status != GET_QUOTE_SUCCESS:
        name = GET_QUOTE_STATUS.get(hdr.status, "unknown status")
        raise Unavailable("the host did not produce a TD quote", rule="tdx_quote_hdr.status",
                          expected="0 (GET_QUOTE_SUCCESS)", actual=f"{hdr.status:#x} ({name})")
    if not 0 < hdr.out_len <= len(buf) - hdr_size:
        raise Malformed("GET_QUOTE out_len is outside the buffer", rule="tdx_quote_hdr.out_len",
                        expected=f"1..{len(buf) - hdr_size}", actual=str(hdr.out_len))
    return bytes(buf[hdr_size:hdr_size + hdr.out_len])


def get_quote(fd: int, tdreport: bytes, ioctl: Ioctl = sys_ioctl, *,
              size: int = QUOTE_BUFFER_SIZE) -> bytes:
    """TDX_CMD_GET_QUOTE on ``fd`` for ``tdreport``; ``OSError`` ENOTTY when the kernel has no
    GET_QUOTE under either known number."""
    buf = ctypes.create_string_buffer(pack_quote_buffer(tdreport, size), size)
    req = bytearray(TDX_QUOTE_REQ.build({"buf": ctypes.addressof(buf), "len": size}))
    last: OSError | None = None
    for request in (TDX_CMD_GET_QUOTE, TDX_CMD_GET_QUOTE_IOR):
        try:
            ioctl(fd, request, req)
        except OSError as exc:
            if exc.errno not in _UNKNOWN_IOCTL:
                raise
            last = exc
            continue
        return unpack_quote_buffer(buf.raw)
    assert last is not None
    raise last


class TdxGuestCollector:
    """TDX evidence from ``/dev/tdx_guest`` (TDREPORT via GET_REPORT0, quote via GET_QUOTE)."""

    name: Final = "tdx-guest"
    tee: Final = evidence_pb2.TEE_TYPE_TDX

    def __init__(self, device: Path = DEFAULT_DEVICE, *,
                 tdx_sources: TdxSources | None = None) -> None:
        self.device = device
        self.tdx_sources = tdx_sources if tdx_sources is not None else TdxSources()

    def available(self) -> bool:
        """True when the device node exists, is a character device, and is read-writable."""
        try:
            st = os.stat(self.device)
        except OSError:
            return False
        return stat.S_ISCHR(st.st_mode) and os.access(self.device, os.R_OK | os.W_OK)

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """A quote for ``report_data`` with the CCEL and the runtime log."""
        return collect_tdx(self._quote, report_data, self.tdx_sources, source="tdx-guest")

    def _quote(self, report_data: bytes) -> bytes:
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise Unavailable(f"cannot open {self.device}", actual=_errname(exc)) from exc
        try:
            return quote_from_device(fd, report_data, self._ioctl)
        finally:
            os.close(fd)

    def _ioctl(self, fd: int, request: int, arg: bytearray) -> None:
        """The device's ioctl (the kernel interface)."""
        sys_ioctl(fd, request, arg)


def quote_from_device(fd: int, report_data: bytes, ioctl: Ioctl = sys_ioctl) -> bytes:
    """GET_REPORT0 then GET_QUOTE on an open ``/dev/tdx_guest``; typed errors only."""
    try:
        raw = get_tdreport(fd, report_data, ioctl)
    except OSError as exc:
        raise Unavailable("TDX_CMD_GET_REPORT0 failed", rule="TDX_CMD_GET_REPORT0 ioctl",
                          expected="success", actual=_errname(exc)) from exc
    report = parse_tdreport(raw)
    if report.report_data != report_data:
        raise BindingMismatch("TDREPORT carries another REPORTDATA", rule="TDREPORT.REPORTDATA",
                              expected=report_data.hex(), actual=report.report_data.hex())
    try:
        quote = get_quote(fd, raw, ioctl)
    except OSError as exc:
        if exc.errno in _UNKNOWN_IOCTL:
            raise Unavailable(
                "this kernel's /dev/tdx_guest makes TDREPORTs but no quotes (no "
                "TDX_CMD_GET_QUOTE); use configfs-tsm (--collector configfs-tsm, Linux >= 6.7)",
                rule="TDX_CMD_GET_QUOTE ioctl", expected="supported",
                actual=_errname(exc)) from exc
        raise Unavailable("TDX_CMD_GET_QUOTE failed", rule="TDX_CMD_GET_QUOTE ioctl",
                          expected="success", actual=_errname(exc)) from exc
    parsed = check_tdx_quote(quote, report_data, source="tdx-guest")
    differing = report.mismatches(parsed.td_report)
    if differing:
        raise BindingMismatch("the quote describes another TD than our TDREPORT",
                              rule="quote body == TDREPORT", expected="same TD fields",
                              actual="differs in " + ", ".join(differing))
    return quote


def _errname(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    return f"{name}: {exc.strerror or exc}"
