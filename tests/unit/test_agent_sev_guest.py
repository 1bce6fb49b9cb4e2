"""/dev/sev-guest collector: structure layouts, response checks, cert-table trimming, probing.

No SEV-SNP hardware runs here, so the ioctl path is exercised only up to the kernel's refusal
(a regular file answers ENOTTY); the structures are checked through the pure functions.
"""

from __future__ import annotations

import ctypes
import hashlib
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.paths import VECTORS

from attester_agent.collectors import sev_guest as sg
from keybroker.errors import Category, KeybrokerError, Malformed

USER_DATA = hashlib.sha512(b"sev-guest").digest()
REPORT = VECTORS / "sev-snp/teekit-gcp-milan-v5/sev-gcp.bin"
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes


def _u32(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off:off + 4], "little")


def _u64(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off:off + 8], "little")


def test_ioctl_numbers() -> None:
    """The ioctl numbers are _IOWR('S', n, 32-byte struct)."""
    def iowr(nr: int) -> int:
        return (3 << 30) | (32 << 16) | (ord("S") << 8) | nr

    assert sg.SNP_GET_REPORT == iowr(0) == 0xC0205300
    assert sg.SNP_GET_EXT_REPORT == iowr(2) == 0xC0205302
    assert sg.GUEST_REQUEST_IOCTL.sizeof() == 32


def test_report_req_layout() -> None:
    """snp_report_req is 96 bytes: user_data @0, vmpl @64, zero reserved tail."""
    raw = sg.pack_report_req(USER_DATA, 2)
    assert len(raw) == 96
    assert raw[:64] == USER_DATA
    assert _u32(raw, 64) == 2
    assert raw[68:] == bytes(28)


def test_ext_report_req_layout_and_certs_len_roundtrip() -> None:
    """snp_ext_report_req is 112 bytes with certs_address @96 and certs_len @104."""
    raw = sg.pack_ext_report_req(USER_DATA, 0, 0x7F00_1234_5000, 0x4000)
    assert len(raw) == 112
    assert raw[:96] == sg.pack_report_req(USER_DATA, 0)
    assert _u64(raw, 96) == 0x7F00_1234_5000
    assert _u32(raw, 104) == 0x4000
    written_back = raw[:104] + (0x6000).to_bytes(4, "little") + raw[108:]
    assert sg.unpack_ext_certs_len(written_back) == 0x6000


def test_ext_report_req_refuses_unaligned_certs_len() -> None:
    """certs_len must be a page multiple."""
    with pytest.raises(ValueError, match="multiple of 4096"):
        sg.pack_ext_report_req(USER_DATA, 0, 0x1000, 5000)


def test_guest_request_layout_and_exitinfo2() -> None:
    """snp_guest_request_ioctl: msg_version 1 @0, req @8, resp @16, fw_error @24, vmm_error @28."""
    raw = sg.pack_guest_request(0x1111_2222, 0x3333_4444)
    assert len(raw) == 32
    assert raw[0] == 1
    assert raw[1:8] == bytes(7)
    assert _u64(raw, 8) == 0x1111_2222
    assert _u64(raw, 16) == 0x3333_4444
    assert raw[24:] == bytes(8)
    after = raw[:24] + (0x16).to_bytes(4, "little") + (1).to_bytes(4, "little")
    assert sg.unpack_guest_request(after) == sg.GuestRequestStatus(fw_error=0x16, vmm_error=1)


def test_guest_request_truncated_is_malformed() -> None:
    """A short ioctl argument does not parse (MALFORMED)."""
    with pytest.raises(KeybrokerError) as exc:
        sg.unpack_guest_request(bytes(20))
    assert exc.value.category is Category.MALFORMED


@pytest.mark.parametrize("vmpl", [-1, 4])
def test_vmpl_out_of_range_refused(vmpl: int) -> None:
    """VMPL is 0..3."""
    with pytest.raises(ValueError, match="vmpl"):
        sg.pack_report_req(USER_DATA, vmpl)


def test_user_data_must_be_64_bytes() -> None:
    """user_data other than 64 bytes is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        sg.pack_report_req(USER_DATA[:32], 0)
    assert exc.value.category is Category.MALFORMED


def _response(status: int, size: int, report: bytes) -> bytes:
    raw = status.to_bytes(4, "little") + size.to_bytes(4, "little") + bytes(24) + report
    return raw + bytes(sg.RESP_DATA_SIZE - len(raw))


def test_report_response_ok() -> None:
    """status 0 and report_size 1184 yield the report bytes."""
    report = REPORT.read_bytes()
    assert sg.parse_report_response(_response(0, 1184, report)) == report


@pytest.mark.parametrize("status", [0x16, 0x27, 1])
def test_report_response_nonzero_status_is_unavailable(status: int) -> None:
    """A firmware error status is UNAVAILABLE with the status as actual."""
    with pytest.raises(KeybrokerError) as exc:
        sg.parse_report_response(_response(status, 1184, REPORT.read_bytes()))
    assert exc.value.category is Category.UNAVAILABLE
    assert exc.value.actual == f"0x{status:x}"


@pytest.mark.parametrize("size", [0, 1000, 1183, 1185, 4000])
def test_report_response_wrong_size_is_malformed(size: int) -> None:
    """report_size other than 1184 is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        sg.parse_report_response(_response(0, size, REPORT.read_bytes()))
    assert exc.value.category is Category.MALFORMED
    assert exc.value.actual == str(size)


def test_report_response_truncated_is_malformed() -> None:
    """A response buffer shorter than header + report is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        sg.parse_report_response(bytes(100))
    assert exc.value.category is Category.MALFORMED


def _table(entries: list[tuple[bytes, bytes]], pad_to: int) -> bytes:
    header_size = (len(entries) + 1) * 24
    header, body, offset = b"", b"", header_size
    for guid, der in entries:
        header += guid + offset.to_bytes(4, "little") + len(der).to_bytes(4, "little")
        body += der
        offset += len(der)
    raw = header + bytes(24) + body
    return raw + bytes(pad_to - len(raw))


def test_cert_table_trimmed_after_last_certificate() -> None:
    """The page-sized buffer is cut right after the last certificate."""
    raw = _table([(VCEK_GUID, b"V" * 1300), (ASK_GUID, b"A" * 1500)], pad_to=0x4000)
    trimmed = sg.trim_cert_table(raw)
    assert len(trimmed) == 3 * 24 + 1300 + 1500
    assert trimmed == raw[: len(trimmed)]


def test_cert_table_all_zero_is_empty() -> None:
    """A buffer the host left empty means no certificates."""
    assert sg.trim_cert_table(bytes(0x4000)) == b""


def test_cert_table_entry_outside_buffer_is_malformed() -> None:
    """An entry reaching beyond the buffer is MALFORMED."""
    raw = bytearray(_table([(VCEK_GUID, b"V" * 100)], pad_to=4096))
    raw[20:24] = (5000).to_bytes(4, "little")
    with pytest.raises(KeybrokerError) as exc:
        sg.trim_cert_table(bytes(raw))
    assert exc.value.category is Category.MALFORMED


def test_cert_table_entry_overlapping_table_is_malformed() -> None:
    """An entry whose offset lies inside the table itself is MALFORMED."""
    raw = bytearray(_table([(VCEK_GUID, b"V" * 100)], pad_to=4096))
    raw[16:20] = (24).to_bytes(4, "little")
    with pytest.raises(KeybrokerError) as exc:
        sg.trim_cert_table(bytes(raw))
    assert exc.value.category is Category.MALFORMED


@given(st.binary(max_size=600))
def test_cert_table_arbitrary_bytes_only_malformed(raw: bytes) -> None:
    """Arbitrary bytes either trim to a prefix or raise only Malformed."""
    try:
        out = sg.trim_cert_table(raw)
    except Malformed:
        return
    assert raw.startswith(out)


def test_next_certs_len_rounds_to_pages_and_is_bounded() -> None:
    """The grown buffer is the kernel's size rounded up to pages, bounded by MAX_CERTS_LEN."""
    assert sg.next_certs_len(0x5001, 0x4000) == 0x6000
    assert sg.next_certs_len(0x5000, 0x4000) == 0x5000
    assert sg.next_certs_len(0, 0x4000) == 0x5000  # always grows
    with pytest.raises(KeybrokerError) as exc:
        sg.next_certs_len(sg.MAX_CERTS_LEN + 1, 0x4000)
    assert exc.value.category is Category.UNAVAILABLE


def test_available_false_when_device_absent(tmp_path: Path) -> None:
    """No device node, no collector."""
    assert sg.SevGuestCollector(tmp_path / "sev-guest").available() is False


def test_available_false_for_regular_file(tmp_path: Path) -> None:
    """A regular file is not a character device."""
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    assert sg.SevGuestCollector(path).available() is False


def test_collect_on_absent_device_is_unavailable(tmp_path: Path) -> None:
    """Collecting without the device is UNAVAILABLE."""
    with pytest.raises(KeybrokerError) as exc:
        sg.SevGuestCollector(tmp_path / "sev-guest").collect(USER_DATA)
    assert exc.value.category is Category.UNAVAILABLE


def test_collect_when_kernel_rejects_both_ioctls_is_unavailable(tmp_path: Path) -> None:
    """ENOTTY on the extended ioctl falls back to SNP_GET_REPORT, whose failure is UNAVAILABLE."""
    path = tmp_path / "not-a-device"
    path.write_bytes(b"")
    with pytest.raises(KeybrokerError) as exc:
        sg.SevGuestCollector(path).collect(USER_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert exc.value.rule == "SNP_GET_REPORT ioctl"
    assert "ENOTTY" in exc.value.actual


def test_ctypes_buffers_hold_packed_structs_exactly() -> None:
    """The ctypes buffers handed to the kernel carry the packed bytes, embedded NULs included."""
    for packed in (sg.pack_guest_request(0x1000, 0x2000),
                   sg.pack_ext_report_req(bytes(64), 0, 0x3000, 0x4000),
                   sg.pack_report_req(USER_DATA, 1)):
        buf = ctypes.create_string_buffer(packed, len(packed))
        assert buf.raw == packed
