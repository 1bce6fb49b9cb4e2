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
- The TDREPORT is parsed by ``keybroker.evidence.tdreport`` (exactly 1024 bytes,
  REPORTTYPE.type 0x81) and must carry the requested REPORTDATA (BINDING otherwise).
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
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

import construct as c

from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.tdx_evidence import TdxSources, check_tdx_quote, collect_tdx
from keybroker.errors import BindingMismatch, Malformed, Unavailable
from keybroker.evidence.tdreport import REPORTDATA_SIZE, TDREPORT_SIZE, parse_tdreport
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

DEFAULT_DEVICE: Final = Path("/dev/tdx_guest")

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
