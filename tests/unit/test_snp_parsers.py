"""Parsers: SNP report and GHCB cert table (hypothesis round trips and arbitrary bytes), and
the strict decoding of AMD VCEK/VLEK extensions."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.errors import Category, ChainUntrusted, KeybrokerError, Malformed
from keybroker.evidence.der import der_octet_string, der_uint
from keybroker.evidence.snp_certs import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    MAX_TABLE_ENTRIES,
    AmdExtensions,
    build_cert_table,
    decode_amd_extensions,
    decode_der_small_integer,
    parse_cert_table,
)
from keybroker.evidence.snp_report import SnpReport, build_report, parse_report

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
sig = st.integers(0, (1 << 384) - 1)


def blob(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


@st.composite
def reports(draw: st.DrawFn) -> SnpReport:
    version = draw(st.sampled_from([2, 3, 4, 5]))
    v3 = version >= 3
    v5 = version >= 5
    return SnpReport(
        version=version, guest_svn=draw(u32),
        policy=(draw(st.integers(0, (1 << 26) - 1)) | 1 << 17), family_id=draw(blob(16)),
        image_id=draw(blob(16)), vmpl=draw(st.integers(0, 3)), signature_algo=1,
        current_tcb=draw(blob(8)),
        platform_info=draw(st.integers(0, 0xFF)) & 0xBF,
        signer_info=(draw(st.integers(0, 3)) | draw(st.sampled_from([0, 1, 7])) << 2),
        report_data=draw(blob(64)), measurement=draw(blob(48)), host_data=draw(blob(32)),
        id_key_digest=draw(blob(48)), author_key_digest=draw(blob(48)),
        report_id=draw(blob(32)), report_id_ma=draw(blob(32)), reported_tcb=draw(blob(8)),
        cpuid_fam_id=draw(u8) if v3 else 0, cpuid_mod_id=draw(u8) if v3 else 0,
        cpuid_step=draw(u8) if v3 else 0, chip_id=draw(blob(64)), committed_tcb=draw(blob(8)),
        current_build=draw(u8), current_minor=draw(u8), current_major=draw(u8),
        committed_build=draw(u8), committed_minor=draw(u8), committed_major=draw(u8),
        launch_tcb=draw(blob(8)), launch_mit_vector=draw(u64) if v5 else 0,
        current_mit_vector=draw(u64) if v5 else 0, signature_r=draw(sig), signature_s=draw(sig))


@settings(max_examples=200, deadline=None)
@given(reports())
def test_report_round_trip(report: SnpReport) -> None:
    """build(parse(x)) == x for valid reports made of arbitrary field values."""
    raw = build_report(report)
    parsed = parse_report(raw)
    assert build_report(parsed) == raw
    assert parsed.signed_bytes == raw[:0x2A0]
    assert parsed.measurement == report.measurement and parsed.signature_s == report.signature_s


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2048), blob(0x4A0)))
def test_report_arbitrary_bytes_only_malformed(raw: bytes) -> None:
    """Arbitrary bytes either parse or raise Malformed, nothing else."""
    try:
        parse_report(raw)
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


guids = st.uuids().filter(lambda g: g.int != 0)
tables = st.lists(st.tuples(guids, st.binary(min_size=1, max_size=64)), max_size=8,
                  unique_by=lambda e: e[0])


@settings(max_examples=200, deadline=None)
@given(tables)
def test_cert_table_round_trip(entries: list[tuple[uuid.UUID, bytes]]) -> None:
    """parse(build(entries)) == entries and build(parse(x)) == x."""
    raw = build_cert_table(entries)
    table = parse_cert_table(raw)
    assert list(table.entries) == entries
    assert build_cert_table(table.entries) == raw
    assert parse_cert_table(raw + bytes(4096)).entries == table.entries  # page padding


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=512),
                 tables.map(build_cert_table).flatmap(
                     lambda raw: st.integers(0, len(raw)).map(lambda n: raw[:n]))))
def test_cert_table_arbitrary_bytes_only_malformed(raw: bytes) -> None:
    """Arbitrary or truncated tables parse or raise Malformed, nothing else."""
    try:
        parse_cert_table(raw)
    except Malformed as exc:
        assert exc.category is Category.MALFORMED


def test_cert_table_guid_byte_order() -> None:
    """GUIDs are read in RFC 4122 (big-endian) byte order, as the GHCB table stores them."""
    raw = build_cert_table([(GUID_VCEK, b"x")])
    assert raw[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert parse_cert_table(raw).get(GUID_VCEK) == b"x"
    assert parse_cert_table(b"").entries == ()


@pytest.mark.parametrize("mutate", [
    lambda raw: raw[:16] + (200).to_bytes(4, "little") + raw[20:],      # offset past the end
    lambda raw: raw[:16] + (10).to_bytes(4, "little") + raw[20:],       # offset inside table
    lambda raw: raw[:20] + (0xFFFFFFFF).to_bytes(4, "little") + raw[24:],  # lying length
    lambda raw: raw[:24 + 16] + b"\x01" + raw[24 + 17:],                # junk in terminator
])
def test_cert_table_hostile_entries(mutate: object) -> None:
    """Entries pointing outside the data, junk terminators and duplicates are MALFORMED."""
    raw = build_cert_table([(GUID_ARK, b"a" * 10)])
    assert callable(mutate)
    with pytest.raises(Malformed):
        parse_cert_table(mutate(raw))


def test_cert_table_duplicate_guid() -> None:
    """Two entries with the same GUID are MALFORMED."""
    raw = build_cert_table([(GUID_ARK, b"a"), (GUID_ASK, b"b")])
    with pytest.raises(Malformed, match="duplicate"):
        parse_cert_table(raw[:24] + GUID_ARK.bytes + raw[40:])


def test_cert_table_entry_limit() -> None:
    """Tables are bounded: more than MAX_TABLE_ENTRIES entries is MALFORMED."""
    entries = [(uuid.UUID(int=i + 1), b"x") for i in range(MAX_TABLE_ENTRIES)]
    assert len(parse_cert_table(build_cert_table(entries)).entries) == MAX_TABLE_ENTRIES
    header = b"".join(uuid.UUID(int=i + 1).bytes + bytes(8) for i in range(MAX_TABLE_ENTRIES + 2))
    with pytest.raises(Malformed):
        parse_cert_table(header + bytes(24))


@pytest.mark.parametrize(("raw", "value"), [
    ("020100", 0), ("020144", 0x44), ("0201" + "7f", 0x7F), ("02020080", 0x80),
    ("020200db", 0xDB), ("020200ff", 0xFF)])
def test_spl_der_integers(raw: str, value: int) -> None:
    """SPLs are DER INTEGERs; values >= 0x80 take two bytes (02 02 00 xx)."""
    assert decode_der_small_integer(bytes.fromhex(raw), "spl") == value
    assert der_uint(value) == bytes.fromhex(raw)


@pytest.mark.parametrize("raw", [
    "020200db00", "02030000db", "0200", "0201", "0202000f", "0201ff", "02020100", "040100",
    "02810144", "02"])
def test_spl_der_integers_strict(raw: str) -> None:
    """Non-canonical, negative, oversized, truncated or mistyped SPLs are CHAIN_UNTRUSTED."""
    with pytest.raises(ChainUntrusted):
        decode_der_small_integer(bytes.fromhex(raw), "spl")


def _cert_with(extensions: list[tuple[str, bytes]]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "SEV-VCEK")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
               .not_valid_after(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), False)
    return builder.sign(key, hashes.SHA384())


def test_hwid_raw_or_octet_string() -> None:
    """hwID is accepted as raw bytes (AMD) or wrapped in a DER OCTET STRING."""
    chip = bytes(range(64))
    raw = decode_amd_extensions(_cert_with([("1.3.6.1.4.1.3704.1.4", chip)]))
    wrapped = decode_amd_extensions(_cert_with([("1.3.6.1.4.1.3704.1.4",
                                                 der_octet_string(chip))]))
    turin = decode_amd_extensions(_cert_with([("1.3.6.1.4.1.3704.1.4",
                                               der_octet_string(chip[:8]))]))
    assert raw.hw_id == wrapped.hw_id == chip
    assert turin.hw_id == chip[:8]
    with pytest.raises(ChainUntrusted):
        decode_amd_extensions(_cert_with([("1.3.6.1.4.1.3704.1.4", chip[:63])]))


def test_amd_extension_type_errors() -> None:
    """Wrongly typed productName or SPL, or an unknown SPL arc, are CHAIN_UNTRUSTED."""
    for oid, value in [("1.3.6.1.4.1.3704.1.2", b"\x04\x05Milan"),
                       ("1.3.6.1.4.1.3704.1.3.1", b"\x16\x01a"),
                       ("1.3.6.1.4.1.3704.1.3.12", b"\x02\x01\x00"),
                       ("1.3.6.1.4.1.3704.1.1", b"\x02\x01\x80")]:
        with pytest.raises(KeybrokerError) as exc:
            decode_amd_extensions(_cert_with([(oid, value)]))
        assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_spl_layouts() -> None:
    """Milan/Genoa and Turin SPLs map to their own TCB_VERSION bytes; gaps are reported."""
    milan = AmdExtensions(struct_version=0, product_name="Milan-B0",
                          spls={1: 3, 2: 0, 4: 0, 5: 0, 6: 0, 7: 0, 3: 8, 8: 0x73},
                          hw_id=None, csp_id=None)
    assert milan.spl_mismatches(bytes.fromhex("0300000000000873")) == []
    assert milan.spl_mismatches(bytes.fromhex("0300000000010873")) == [
        "spl_7: certificate=0 report=1"]
    turin_missing_fmc = AmdExtensions(struct_version=1, product_name="Turin",
                                      spls={1: 1, 2: 0, 3: 3, 8: 9}, hw_id=None, csp_id=None)
    assert turin_missing_fmc.spl_mismatches(bytes.fromhex("0001000300000009")) == [
        "fmcSPL: missing"]
    foreign = AmdExtensions(struct_version=1, product_name="Turin",
                            spls={9: 0, 1: 1, 2: 0, 3: 3, 4: 0, 8: 9}, hw_id=None, csp_id=None)
    assert foreign.spl_mismatches(bytes.fromhex("0001000300000009")) == [
        "spl_4: not part of this layout"]


def test_cert_table_get_ask() -> None:
    """CertTable.get returns the entry for a GUID or None."""
    table = parse_cert_table(build_cert_table([(GUID_ASK, b"ask"), (GUID_VCEK, b"vcek")]))
    assert table.get(GUID_ASK) == b"ask" and table.get(GUID_ARK) is None
