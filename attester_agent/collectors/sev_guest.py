"""SEV-SNP evidence through the ``/dev/sev-guest`` ioctls (evidence-formats.md sections 6.1, 1.11).

Invariants:
- Request and response structures are laid out with ``construct`` (sizes fixed: request 96,
  extended request 112, ioctl argument 32, response header 32 + report 1184) and packed or
  parsed only by the pure functions below; the ioctl code only moves buffers.
- ``msg_version`` is always 1 and the reserved request bytes are always zero.
- A response is accepted only with ``status == 0`` and ``report_size == 1184``; a non-zero
  firmware status is UNAVAILABLE, a wrong size MALFORMED.
- The certificate buffer is a multiple of 4096 bytes. It grows only on ``vmm_error == 1``
  (INVALID_LEN) to the size the kernel reports, at most ``MAX_CERTS_LEN`` and
  ``MAX_CERT_ATTEMPTS`` times; then UNAVAILABLE.
- SNP_GET_REPORT (no certificates) is used only when the kernel does not support
  SNP_GET_EXT_REPORT; any other failure is UNAVAILABLE (the driver may have wiped the VMPCK,
  so a failure is never retried blindly).
- The returned certificate table is well formed (entries inside the buffer, zero terminator)
  and trimmed to its last certificate, like configfs-tsm's ``auxblob``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import construct as c

from attester_agent.collectors.base import check_report_data
from keybroker.errors import Malformed, Unavailable
from keybroker.evidence.snp_certs import CERT_ENTRY, ENTRY_SIZE
from keybroker.evidence.snp_report import REPORT_SIZE
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

DEFAULT_DEVICE: Final = Path("/dev/sev-guest")

SNP_GET_REPORT: Final = 0xC0205300
SNP_GET_EXT_REPORT: Final = 0xC0205302

MSG_VERSION: Final = 1
PAGE_SIZE: Final = 4096
RESP_DATA_SIZE: Final = 4000
INITIAL_CERTS_LEN: Final = 4 * PAGE_SIZE  # SEV_FW_BLOB_MAX_SIZE in most kernels
MAX_CERTS_LEN: Final = 64 * PAGE_SIZE
MAX_CERT_ATTEMPTS: Final = 3
VMM_ERR_INVALID_LEN: Final = 1
VMPL_MAX: Final = 3

# errno values with which a kernel says "no extended report here" (unknown ioctl / unsupported).
_EXT_UNSUPPORTED: Final = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS})

REPORT_REQ = c.Struct(
    "user_data" / c.Bytes(64),
    "vmpl" / c.Int32ul,
    "rsvd" / c.Const(bytes(28)),
)
EXT_REPORT_REQ = c.Struct(
    "data" / REPORT_REQ,
    "certs_address" / c.Int64ul,
    "certs_len" / c.Int32ul,
    "pad" / c.Const(bytes(4)),
)
GUEST_REQUEST_IOCTL = c.Struct(
    "msg_version" / c.Int8ul,
    "pad" / c.Const(bytes(7)),
    "req_data" / c.Int64ul,
    "resp_data" / c.Int64ul,
    "fw_error" / c.Int32ul,  # exitinfo2 low half
    "vmm_error" / c.Int32ul,  # exitinfo2 high half
)
REPORT_RSP = c.Struct(
    "status" / c.Int32ul,
    "report_size" / c.Int32ul,
    "reserved" / c.Bytes(24),
    "report" / c.Bytes(REPORT_SIZE),
)
_ZERO_ENTRY: Final = bytes(ENTRY_SIZE)


@dataclass(frozen=True)
class GuestRequestStatus:
    """The exitinfo2 halves the driver writes back into ``snp_guest_request_ioctl``."""

    fw_error: int
    vmm_error: int


def pack_report_req(user_data: bytes, vmpl: int) -> bytes:
    """``struct snp_report_req`` (96 bytes)."""
    check_report_data(user_data)
    _check_vmpl(vmpl)
    return REPORT_REQ.build({"user_data": user_data, "vmpl": vmpl})


def pack_ext_report_req(user_data: bytes, vmpl: int, certs_address: int, certs_len: int) -> bytes:
    """``struct snp_ext_report_req`` (112 bytes); ``certs_len`` must be a page multiple."""
    check_report_data(user_data)
    _check_vmpl(vmpl)
    if certs_len % PAGE_SIZE:
        raise ValueError(f"certs_len must be a multiple of {PAGE_SIZE}, got {certs_len}")
    return EXT_REPORT_REQ.build({
        "data": {"user_data": user_data, "vmpl": vmpl},
        "certs_address": certs_address,
        "certs_len": certs_len,
    })


def unpack_ext_certs_len(raw: bytes) -> int:
    """``certs_len`` as written back by the kernel into an extended request."""
    return int(EXT_REPORT_REQ.parse(raw[:EXT_REPORT_REQ.sizeof()]).certs_len)


def pack_guest_request(req_address: int, resp_address: int) -> bytes:
    """``struct snp_guest_request_ioctl`` (32 bytes) with msg_version 1 and exitinfo2 zero."""
    return GUEST_REQUEST_IOCTL.build({
        "msg_version": MSG_VERSION,
        "req_data": req_address,
        "resp_data": resp_address,
        "fw_error": 0,
        "vmm_error": 0,
    })


def unpack_guest_request(raw: bytes) -> GuestRequestStatus:
    """The firmware and VMM error codes of an ioctl argument after the call."""
    try:
        parsed = GUEST_REQUEST_IOCTL.parse(raw)
    except c.ConstructError as exc:
        raise Malformed("snp_guest_request_ioctl does not parse",
                        expected=f"{GUEST_REQUEST_IOCTL.sizeof()} bytes",
                        actual=f"{len(raw)} bytes") from exc
    return GuestRequestStatus(fw_error=int(parsed.fw_error), vmm_error=int(parsed.vmm_error))


def parse_report_response(raw: bytes) -> bytes:
    """The report inside MSG_REPORT_RSP; non-zero status UNAVAILABLE, wrong size MALFORMED."""
    if len(raw) < REPORT_RSP.sizeof():
        raise Malformed("MSG_REPORT_RSP is truncated", expected=f">= {REPORT_RSP.sizeof()} bytes",
                        actual=f"{len(raw)} bytes")
    parsed = REPORT_RSP.parse(raw[:REPORT_RSP.sizeof()])
    if parsed.status != 0:
        raise Unavailable("SEV-SNP firmware refused the report request",
                          rule="MSG_REPORT_RSP.status", expected="0",
                          actual=f"0x{parsed.status:x}")
    if parsed.report_size != REPORT_SIZE:
        raise Malformed("MSG_REPORT_RSP has an unexpected report size",
                        rule="MSG_REPORT_RSP.report_size", expected=str(REPORT_SIZE),
                        actual=str(parsed.report_size))
    return bytes(parsed.report)


def trim_cert_table(buf: bytes) -> bytes:
    """The GHCB certificate table in ``buf`` cut after its last certificate (b"" if empty).

    Each entry must lie beyond the table (including its zero terminator) and inside ``buf``.
    """
    count = 0
    while True:
        start = count * ENTRY_SIZE
        if start + ENTRY_SIZE > len(buf):
            if count == 0 and not any(buf):
                return b""
            raise Malformed("certificate table has no zero terminator",
                            expected="all-zero terminating entry",
                            actual=f"{count} entries fill {len(buf)} bytes")
        if buf[start:start + ENTRY_SIZE] == _ZERO_ENTRY:
            break
        count += 1
    if count == 0:
        return b""
    table_size = (count + 1) * ENTRY_SIZE
    end = table_size
    for index in range(count):
        entry = CERT_ENTRY.parse(buf[index * ENTRY_SIZE:(index + 1) * ENTRY_SIZE])
        if entry.offset < table_size or entry.offset + entry.length > len(buf):
            raise Malformed("certificate table entry points outside the buffer",
                            rule=f"cert table entry {index}",
                            expected=f"{table_size} <= offset, offset+length <= {len(buf)}",
                            actual=f"offset={entry.offset} length={entry.length}")
        end = max(end, entry.offset + entry.length)
    return buf[:end]


def next_certs_len(required: int, current: int) -> int:
    """Buffer size for the next attempt after INVALID_LEN: ``required`` rounded up to pages."""
    size = max(required, current + PAGE_SIZE)
    size = -(-size // PAGE_SIZE) * PAGE_SIZE
    if size > MAX_CERTS_LEN:
        raise Unavailable("SEV-SNP certificate buffer requirement is too large",
                          rule="certs_len bound", expected=f"<= {MAX_CERTS_LEN}",
                          actual=str(required))
    return size


def _check_vmpl(vmpl: int) -> None:
    if not 0 <= vmpl <= VMPL_MAX:
        raise ValueError(f"vmpl must be 0..{VMPL_MAX}, got {vmpl}")


class _ExtUnsupported(Exception):
    """SNP_GET_EXT_REPORT is not implemented by this kernel."""


class SevGuestCollector:
    """SEV-SNP evidence from the ``/dev/sev-guest`` character device."""

    name: Final = "sev-guest"
    tee: Final = evidence_pb2.TEE_TYPE_SEV_SNP

    def __init__(self, device: Path = DEFAULT_DEVICE, *, vmpl: int = 0) -> None:
        _check_vmpl(vmpl)
        self.device = device
        self.vmpl = vmpl

    def available(self) -> bool:
        """True when the device node exists, is a character device, and is read-writable."""
        try:
            st = os.stat(self.device)
        except OSError:
            return False
        return stat.S_ISCHR(st.st_mode) and os.access(self.device, os.R_OK | os.W_OK)

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """An extended report (report + certificate table), or a plain report without certs."""
        check_report_data(report_data)
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise Unavailable(f"cannot open {self.device}",
                              actual=errno.errorcode.get(exc.errno or 0, str(exc))) from exc
        try:
            try:
                report, certs = self._ext_report(fd, report_data)
            except _ExtUnsupported:
                logger.info("SNP_GET_EXT_REPORT unsupported; falling back to SNP_GET_REPORT")
                report, certs = self._report(fd, report_data), b""
        finally:
            os.close(fd)
        logger.info("sev-guest report collected (%d cert-table bytes)", len(certs))
        return evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(report=report, cert_table=certs))

    def _report(self, fd: int, report_data: bytes) -> bytes:
        req = ctypes.create_string_buffer(pack_report_req(report_data, self.vmpl),
                                          REPORT_REQ.sizeof())
        resp = ctypes.create_string_buffer(RESP_DATA_SIZE)
        arg = ctypes.create_string_buffer(
            pack_guest_request(ctypes.addressof(req), ctypes.addressof(resp)),
            GUEST_REQUEST_IOCTL.sizeof(),
        )
        try:
            fcntl.ioctl(fd, SNP_GET_REPORT, arg, True)
        except OSError as exc:
            raise _ioctl_failure("SNP_GET_REPORT", exc, unpack_guest_request(arg.raw)) from exc
        return parse_report_response(resp.raw)

    def _ext_report(self, fd: int, report_data: bytes) -> tuple[bytes, bytes]:
        certs_len = INITIAL_CERTS_LEN
        for _ in range(MAX_CERT_ATTEMPTS):
            certs = ctypes.create_string_buffer(certs_len)
            req = ctypes.create_string_buffer(
                pack_ext_report_req(report_data, self.vmpl, ctypes.addressof(certs), certs_len),
                EXT_REPORT_REQ.sizeof(),
            )
            resp = ctypes.create_string_buffer(RESP_DATA_SIZE)
            arg = ctypes.create_string_buffer(
                pack_guest_request(ctypes.addressof(req), ctypes.addressof(resp)),
                GUEST_REQUEST_IOCTL.sizeof(),
            )
            try:
                fcntl.ioctl(fd, SNP_GET_EXT_REPORT, arg, True)
            except OSError as exc:
                status = unpack_guest_request(arg.raw)
                if exc.errno == errno.EIO and status.vmm_error == VMM_ERR_INVALID_LEN:
                    required = unpack_ext_certs_len(req.raw)
                    logger.info("certificate buffer of %d bytes too small; kernel needs %d",
                                certs_len, required)
                    certs_len = next_certs_len(required, certs_len)
                    continue
                if exc.errno in _EXT_UNSUPPORTED:
                    raise _ExtUnsupported from exc
                raise _ioctl_failure("SNP_GET_EXT_REPORT", exc, status) from exc
            return parse_report_response(resp.raw), trim_cert_table(certs.raw)
        raise Unavailable("SEV-SNP certificate buffer kept being too small",
                          rule="certs_len retries", expected=f"<= {MAX_CERT_ATTEMPTS} attempts",
                          actual=f"last size {certs_len}")


def _ioctl_failure(what: str, exc: OSError, status: GuestRequestStatus) -> Unavailable:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return Unavailable(f"{what} failed", rule=f"{what} ioctl", expected="success",
                       actual=f"{code} fw_error=0x{status.fw_error:x} "
                              f"vmm_error=0x{status.vmm_error:x}")
