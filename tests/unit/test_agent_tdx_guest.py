"""/dev/tdx_guest: ioctl numbers and structures, TDREPORT parsing, GET_QUOTE buffers, error paths.

No TDX hardware here: the ioctls are exercised on regular files (the kernel answers ENOTTY, as
a device without the command would) and through ``DriverModel``, which plays the driver's part
of the ABI (it reads the request structures and writes the answers through the pointers the
collector passed) with a TD simulated by the DCAP simulator.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
from pathlib import Path

import pytest
from support.paths import VECTORS

from attester_agent.collectors import tdx_guest as tg
from attester_agent.collectors.ccel import CcelReader
from attester_agent.collectors.tdx_evidence import TdxSources
from attester_agent.simulator.dcap import DcapTestCa, TdxSimulator
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence import tdreport
from keybroker.evidence.dcap_quote import TdReportBody, parse_tdx_quote

REPORT_DATA = hashlib.sha512(b"tdx-guest").digest()
SGX_QUOTE = VECTORS / "sgx/dcapqvl-sgx-v3/sgx_quote"


@pytest.fixture(scope="module")
def simulator() -> TdxSimulator:
    """A simulated TD under a fresh DCAP test CA."""
    return TdxSimulator(DcapTestCa.generate(), mr_config_id=hashlib.sha384(b"cfg").digest())


def td_body(simulator: TdxSimulator, report_data: bytes = REPORT_DATA) -> TdReportBody:
    """The simulated TD's report body for ``report_data``."""
    return simulator.template(report_data).td_report


class DriverModel(tg.TdxGuestCollector):
    """The collector with the tdx_guest driver's side of the ioctls played by a simulated TD."""

    def __init__(self, device: Path, simulator: TdxSimulator, *, get_quote: bool = True,
                 status: int = 0, quote: bytes | None = None, tdreport: bytes | None = None,
                 out_len: int | None = None, accepted: tuple[int, ...] = (tg.TDX_CMD_GET_QUOTE,),
                 sources: TdxSources | None = None) -> None:
        super().__init__(device, tdx_sources=sources or TdxSources(
            ccel=CcelReader(device.parent / "no-acpi"), runtime_log=None))
        self.simulator = simulator
        self.get_quote = get_quote
        self.status = status
        self.fixed_quote = quote
        self.fixed_tdreport = tdreport
        self.out_len = out_len
        self.accepted = accepted
        self.requests: list[int] = []
        self.submitted: bytes = b""

    def _ioctl(self, fd: int, request: int, arg: bytearray) -> None:
        self.requests.append(request)
        if request == tg.TDX_CMD_GET_REPORT0:
            req = tg.TDX_REPORT_REQ.parse(bytes(arg))
            report = self.fixed_tdreport or tdreport.build_tdreport(td_body(self.simulator,
                                                                      req.reportdata))
            arg[64:] = report
            return
        if request in self.accepted and self.get_quote:
            req = tg.TDX_QUOTE_REQ.parse(bytes(arg))
            buf = ctypes.string_at(req.buf, req.len)
            hdr = tg.TDX_QUOTE_HDR.parse(buf)
            assert (hdr.version, hdr.status, hdr.in_len) == (1, 0, tdreport.TDREPORT_SIZE)
            self.submitted = buf[24:24 + hdr.in_len]
            submitted = tdreport.parse_tdreport(self.submitted)
            quote = self.fixed_quote or self.simulator.quote(submitted.report_data)
            out = tg.TDX_QUOTE_HDR.build({
                "version": 1, "status": self.status, "in_len": hdr.in_len,
                "out_len": len(quote) if self.out_len is None else self.out_len})
            ctypes.memmove(req.buf, out + quote, len(out) + len(quote))
            return
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


# --- ABI constants and structures ------------------------------------------------------------

def test_ioctl_numbers_match_the_kernel_abi() -> None:
    """GET_REPORT0 is _IOWR('T', 1, 1088); GET_QUOTE _IOWR/_IOR('T', 2, 16)."""
    assert tg.TDX_CMD_GET_REPORT0 == 0xC4405401
    assert tg.TDX_CMD_GET_QUOTE == 0xC0105402
    assert tg.TDX_CMD_GET_QUOTE_IOR == 0x80105402
    assert tg.TDX_REPORT_REQ.sizeof() == 64 + 1024
    assert tg.TDX_QUOTE_REQ.sizeof() == 16
    assert tg.TDX_QUOTE_HDR.sizeof() == 24


def test_tdreport_round_trip_from_a_simulated_td(simulator: TdxSimulator) -> None:
    """A TDREPORT built from a simulator TD body parses back to the same TD, hashes intact."""
    body = td_body(simulator)
    raw = tdreport.build_tdreport(body, cpu_svn=bytes(range(16)), mac=b"\x5a" * 32)
    assert len(raw) == tdreport.TDREPORT_SIZE
    report = tdreport.parse_tdreport(raw)
    assert raw[0x80:0xC0] == REPORT_DATA  # REPORTDATA at 0x80 (section 2.11)
    assert raw[0x210:0x240] == body.mr_td  # MRTD at 0x210
    assert raw[0x360:0x390] == body.rtmrs[3]  # RTMR3 at 0x360
    assert report.report_data == REPORT_DATA
    assert report.mr_td == body.mr_td
    assert report.rtmrs == body.rtmrs
    assert report.mr_config_id == body.mr_config_id
    assert report.td_attributes == body.td_attributes
    assert report.cpu_svn == bytes(range(16))
    assert report.hashes_consistent
    assert report.mismatches(body) == []


def test_tdreport_mismatches_name_the_differing_fields(simulator: TdxSimulator) -> None:
    """Comparing a TDREPORT with another TD's body names every differing field."""
    report = tdreport.parse_tdreport(tdreport.build_tdreport(td_body(simulator)))
    other = dataclasses.replace(td_body(simulator), mr_td=bytes(48), td_attributes=1)
    assert report.mismatches(other) == ["mr_td", "td_attributes"]


def test_tampered_tdreport_hashes_are_inconsistent(simulator: TdxSimulator) -> None:
    """Changing TDINFO after the fact breaks TEE_INFO_HASH."""
    raw = bytearray(tdreport.build_tdreport(td_body(simulator)))
    raw[0x210] ^= 1
    assert not tdreport.parse_tdreport(bytes(raw)).hashes_consistent


@pytest.mark.parametrize("raw", [b"", bytes(1023), bytes(1025), bytes(1024)],
                         ids=["empty", "short", "long", "type-0"])
def test_bad_tdreport_is_malformed(raw: bytes) -> None:
    """A TDREPORT of the wrong size or REPORTTYPE is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        tdreport.parse_tdreport(raw)
    assert exc.value.category is Category.MALFORMED


# --- GET_QUOTE buffer --------------------------------------------------------------------------

def test_quote_buffer_layout() -> None:
    """The request buffer is the header (version 1, in_len 1024) then the TDREPORT, padded."""
    report = bytes(range(256)) * 4
    buf = tg.pack_quote_buffer(report)
    assert len(buf) == tg.QUOTE_BUFFER_SIZE
    header = (1).to_bytes(8, "little") + bytes(8) + (1024).to_bytes(4, "little") + bytes(4)
    assert buf[:24] == header
    assert buf[24:24 + 1024] == report
    assert not any(buf[24 + 1024:])


def answer(status: int, quote: bytes, out_len: int | None = None) -> bytes:
    """A GET_QUOTE buffer as the host leaves it."""
    hdr = tg.TDX_QUOTE_HDR.build({"version": 1, "status": status, "in_len": 1024,
                                  "out_len": len(quote) if out_len is None else out_len})
    return (hdr + quote).ljust(tg.QUOTE_BUFFER_SIZE, b"\0")


def test_quote_buffer_answer_is_unpacked() -> None:
    """A successful answer yields exactly out_len bytes of quote."""
    assert tg.unpack_quote_buffer(answer(0, b"quote-bytes")) == b"quote-bytes"


@pytest.mark.parametrize(("status", "name"), [
    (0xFFFFFFFFFFFFFFFF, "GET_QUOTE_IN_FLIGHT"),
    (0x8000000000000000, "GET_QUOTE_ERROR"),
    (0x8000000000000001, "GET_QUOTE_SERVICE_UNAVAILABLE"),
    (0x1234, "unknown status"),
])
def test_quote_status_errors_are_unavailable(status: int, name: str) -> None:
    """A GET_QUOTE status other than success is UNAVAILABLE, named."""
    with pytest.raises(KeybrokerError) as exc:
        tg.unpack_quote_buffer(answer(status, b"x"))
    assert exc.value.category is Category.UNAVAILABLE
    assert name in exc.value.actual


@pytest.mark.parametrize("out_len", [0, tg.QUOTE_BUFFER_SIZE - 23, 0xFFFFFFFF])
def test_quote_out_len_outside_the_buffer_is_malformed(out_len: int) -> None:
    """out_len of zero or beyond the buffer is MALFORMED (never read past it)."""
    with pytest.raises(KeybrokerError) as exc:
        tg.unpack_quote_buffer(answer(0, b"x", out_len))
    assert exc.value.category is Category.MALFORMED


# --- ioctls on something that is not the device ------------------------------------------------

def test_get_report_ioctl_on_a_regular_file_is_enotty(tmp_path: Path) -> None:
    """The real ioctl wrapper on a regular file fails with ENOTTY (no such command)."""
    path = tmp_path / "not-a-device"
    path.write_bytes(b"")
    with path.open("r+b") as handle:
        with pytest.raises(OSError) as exc:
            tg.get_tdreport(handle.fileno(), REPORT_DATA)
        assert exc.value.errno == errno.ENOTTY
        with pytest.raises(OSError) as exc:
            tg.get_quote(handle.fileno(), bytes(1024))
        assert exc.value.errno == errno.ENOTTY


def test_collector_on_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    """Collecting from a path that is no tdx_guest device is UNAVAILABLE (GET_REPORT0 fails)."""
    path = tmp_path / "tdx_guest"
    path.write_bytes(b"")
    collector = tg.TdxGuestCollector(path, tdx_sources=TdxSources(runtime_log=None))
    assert collector.available() is False  # not a character device
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert "GET_REPORT0" in exc.value.reason


def test_missing_device_is_unavailable(tmp_path: Path) -> None:
    """Without the device node the collector is unavailable and collect says so."""
    collector = tg.TdxGuestCollector(tmp_path / "absent")
    assert collector.available() is False
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE


# --- the driver model ----------------------------------------------------------------------------

@pytest.fixture
def device(tmp_path: Path) -> Path:
    """A regular file standing in for the device node (opened, never ioctl'ed for real)."""
    path = tmp_path / "tdx_guest"
    path.write_bytes(b"")
    return path


def test_quote_through_get_report0_and_get_quote(device: Path, simulator: TdxSimulator) -> None:
    """GET_REPORT0 then GET_QUOTE yield the TD's quote; the TDREPORT went to the host as is."""
    collector = DriverModel(device, simulator)
    evidence = collector.collect(REPORT_DATA)
    quote = parse_tdx_quote(evidence.tdx.quote)
    assert quote.td_report.report_data == REPORT_DATA
    assert collector.requests == [tg.TDX_CMD_GET_REPORT0, tg.TDX_CMD_GET_QUOTE]
    assert tdreport.parse_tdreport(collector.submitted).report_data == REPORT_DATA


def test_get_quote_ior_number_is_tried_second(device: Path, simulator: TdxSimulator) -> None:
    """A kernel that knows GET_QUOTE only as _IOR('T', 2, 16) is served on the second try."""
    collector = DriverModel(device, simulator, accepted=(tg.TDX_CMD_GET_QUOTE_IOR,))
    collector.collect(REPORT_DATA)
    assert collector.requests == [tg.TDX_CMD_GET_REPORT0, tg.TDX_CMD_GET_QUOTE,
                                  tg.TDX_CMD_GET_QUOTE_IOR]


def test_kernel_without_get_quote_is_a_clear_unavailable(
    device: Path, simulator: TdxSimulator
) -> None:
    """GET_REPORT0 works but no GET_QUOTE: UNAVAILABLE pointing at configfs-tsm."""
    collector = DriverModel(device, simulator, get_quote=False)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert "configfs-tsm" in exc.value.reason


def test_host_error_status_is_unavailable(device: Path, simulator: TdxSimulator) -> None:
    """The host's GET_QUOTE_SERVICE_UNAVAILABLE becomes UNAVAILABLE."""
    collector = DriverModel(device, simulator, status=0x8000000000000001)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE


def test_tdreport_with_foreign_reportdata_is_binding(
    device: Path, simulator: TdxSimulator
) -> None:
    """A TDREPORT that does not carry our REPORTDATA is refused before quoting (BINDING)."""
    collector = DriverModel(device, simulator,
                            tdreport=tdreport.build_tdreport(td_body(simulator, bytes(64))))
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.BINDING
    assert collector.requests == [tg.TDX_CMD_GET_REPORT0]


def test_quote_for_another_td_is_binding(device: Path, simulator: TdxSimulator) -> None:
    """A quote (right report_data) of a TD other than our TDREPORT's is refused (BINDING)."""
    other = TdxSimulator(simulator.ca, mr_td=bytes(48))
    collector = DriverModel(device, simulator, quote=other.quote(REPORT_DATA))
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.BINDING
    assert "mr_td" in exc.value.actual


@pytest.mark.parametrize("bad", ["sgx", "garbage"])
def test_quote_that_is_no_tdx_quote_is_malformed(
    device: Path, simulator: TdxSimulator, bad: str
) -> None:
    """An SGX quote or garbage from GET_QUOTE is MALFORMED."""
    quote = SGX_QUOTE.read_bytes() if bad == "sgx" else b"\x04\x00\x02\x00" + bytes(60)
    collector = DriverModel(device, simulator, quote=quote)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED


def test_report_data_must_be_64_bytes(device: Path, simulator: TdxSimulator) -> None:
    """Anything but 64 bytes of report_data is MALFORMED before any ioctl."""
    collector = DriverModel(device, simulator)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(bytes(32))
    assert exc.value.category is Category.MALFORMED
    assert collector.requests == []
