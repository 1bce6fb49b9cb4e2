"""DCAP quote parser: every TDX/SGX vector parses to the README's expected values and rebuilds
byte for byte; hostile rows 1, 2, 4, 6 and 8 are MALFORMED; hypothesis round trips and
arbitrary bytes raise only Malformed."""

from __future__ import annotations

import base64
import dataclasses
import re
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.evidence.dcap_quote import (
    BODY_TYPE_SGX,
    BODY_TYPE_TD10,
    BODY_TYPE_TD15,
    DcapQuote,
    QuoteHeader,
    TdReportBody,
    build_quote,
    parse_quote,
    parse_sgx_quote,
    parse_tdx_quote,
)
from keybroker.evidence.dcap_signature import (
    CertificationData,
    EcdsaSignatureData,
    SgxReportBody,
    build_sgx_report_body,
)

README = (VECTORS / "README.md").read_text()
TDX_QUOTES = [
    "tdx/gotdx-spr-e4-v4/tdx_prod_quote_SPR_E4.dat",
    "tdx/trustee-spr-v4/tdx_quote_4.dat",
    "tdx/gotdx-emr-v5/quote_v5_sample.dat",
    "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated",
    "tdx/gotdx-gce-spr-v4-ccel/cos-113-tdx-quote.dat",
    "tdx/trustee-gnr-v4/tdx_quote_6.dat",
    "tdx/teekit-azure-spr-v4/tdx-v4-azure",
    "tdx/teekit-edgeless-spr-v4/tdx-v4-edgeless.dat",
    "tdx/teekit-zkdcap-spr-v4/tdx-v4-zkdcap.dat",
    "tdx/teekit-tappd-gnr-v4/tdx-v4-tappd.hex",
]
SGX_QUOTES = [
    "sgx/dcapqvl-sgx-v3/sgx_quote",
    "sgx/trustee-occlum-v3/occlum_quote.dat",
    "sgx/teekit-tlsn-v3/sgx-tlsn-quote9.dat",
    "sgx/teekit-occlum-v3/sgx-occlum.dat",
    "sgx/maa-signer-embedded-v3/maa_sharedeus_sgx_quote.bin",
]
SPR_E4 = TDX_QUOTES[0]
CLOUD_V4 = "tdx/gotdx-gce-spr-v4-ccel/cos-113-tdx-quote.dat"
V5 = "tdx/gotdx-emr-v5/quote_v5_sample.dat"
SPR_E4_TRAILER = b"\nextra bytes(only for testing purpose)\n"


def load(subpath: str) -> bytes:
    """The raw quote bytes (the README says which files are hex or base64 text)."""
    data = (VECTORS / subpath).read_bytes()
    if subpath.endswith(".hex"):
        return bytes.fromhex(data.decode().strip())
    if subpath.endswith("tdx-v4-azure"):
        return base64.b64decode(data)
    return data


def load_clean(subpath: str) -> bytes:
    """The quote without the non-zero test trailer the SPR E4 source project appended."""
    raw = load(subpath)
    if subpath == SPR_E4:
        assert raw.endswith(SPR_E4_TRAILER)
        return raw[: -len(SPR_E4_TRAILER)]
    return raw


def expected_fields(subpath: str) -> dict[str, str]:
    """key=value pairs of the README 'Expected:' line of ``subpath`` (up to the PCK part)."""
    section = README.split(f"#### `{subpath}`", 1)[1].split("\n#### ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("* Expected: quote v"))
    version = re.search(r"quote v(\d)", line)
    assert version is not None
    fields = dict(re.findall(r"(\w+)=(0x[0-9a-f]+|[0-9a-f]+)", line.split("; PCK:")[0]))
    fields["version"] = version.group(1)
    return fields


def actual_fields(q: DcapQuote) -> dict[str, str]:
    """The parsed quote rendered with the README's key names and encodings."""
    sig = q.signature_data
    out = {
        "version": str(q.header.version), "tee_type": hex(q.header.tee_type),
        "att_key_type": str(q.header.att_key_type), "qe_vendor_id": q.header.qe_vendor_id.hex(),
        "mrenclave": sig.qe_report.mr_enclave.hex(), "mrsigner": sig.qe_report.mr_signer.hex(),
        "isvprodid": str(sig.qe_report.isv_prod_id), "isvsvn": str(sig.qe_report.isv_svn),
    }
    body = q.body
    if isinstance(body, TdReportBody):
        out |= {
            "body_type": str(q.body_type), "size": str(len(q.signed_bytes) - 54),
            "tee_tcb_svn": body.tee_tcb_svn.hex(), "mr_seam": body.mr_seam.hex(),
            "mr_signer_seam": body.mr_signer_seam.hex(),
            "seam_attributes": body.seam_attributes.hex(),
            "td_attributes": body.td_attributes.to_bytes(8, "little").hex(),
            "xfam": body.xfam.to_bytes(8, "little").hex(), "mr_td": body.mr_td.hex(),
            "mr_config_id": body.mr_config_id.hex(), "mr_owner": body.mr_owner.hex(),
            "mr_owner_config": body.mr_owner_config.hex(),
            "report_data": body.report_data.hex(),
            **{f"rtmr{i}": r.hex() for i, r in enumerate(body.rtmrs)},
        }
        if body.tee_tcb_svn2 is not None and body.mr_service_td is not None:
            out |= {"tee_tcb_svn2": body.tee_tcb_svn2.hex(),
                    "mr_service_td": body.mr_service_td.hex()}
    else:
        out |= {
            "cpu_svn": body.cpu_svn.hex(),
            "misc_select": body.misc_select.to_bytes(4, "little").hex(),
            "attributes": body.attributes.hex(), "mr_enclave": body.mr_enclave.hex(),
            "mr_signer": body.mr_signer.hex(), "isv_prod_id": str(body.isv_prod_id),
            "isv_svn": str(body.isv_svn), "report_data": body.report_data.hex(),
        }
    return out


def malformed(raw: bytes) -> Malformed:
    """Parse ``raw`` and return the Malformed it must raise."""
    with pytest.raises(Malformed) as exc:
        parse_quote(raw)
    assert exc.value.category is Category.MALFORMED
    return exc.value


def patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``raw`` with one little-endian integer overwritten (hostile construction)."""
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("subpath", TDX_QUOTES + SGX_QUOTES)
def test_vector_fields_match_readme(subpath: str) -> None:
    """Each vector parses to every expected value its README entry states."""
    want = expected_fields(subpath)
    got = actual_fields(parse_quote(load_clean(subpath)))
    assert len(want) >= (23 if subpath.startswith("tdx") else 16)
    assert {k: got.get(k) for k in want} == want


@pytest.mark.parametrize("subpath", TDX_QUOTES + SGX_QUOTES)
def test_vector_rebuilds_byte_for_byte(subpath: str) -> None:
    """build_quote(parse_quote(raw)) == raw, padding included; signed bytes are header+body."""
    raw = load_clean(subpath)
    q = parse_quote(raw)
    assert build_quote(q) == raw
    expected_len = {3: 48 + 384, 4: 48 + 584, 5: 48 + 6 + 648}[q.header.version]
    assert q.signed_bytes == raw[:expected_len]
    assert q.signature_data.qe_report_raw == build_sgx_report_body(q.signature_data.qe_report)
    assert q.signature_data.pck_cert_data.pem_chain.endswith(b"-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("subpath", TDX_QUOTES)
def test_tdx_path_accepts_tdx_and_sgx_path_refuses(subpath: str) -> None:
    """A TDX quote passes the TDX path and is type confusion on the SGX path (row 8)."""
    raw = load_clean(subpath)
    assert parse_tdx_quote(raw).is_tdx
    with pytest.raises(Malformed):
        parse_sgx_quote(raw)


@pytest.mark.parametrize("subpath", SGX_QUOTES)
def test_sgx_path_accepts_sgx_and_tdx_path_refuses(subpath: str) -> None:
    """An SGX quote passes the SGX path and is type confusion on the TDX path (row 8)."""
    raw = load_clean(subpath)
    body = parse_sgx_quote(raw).sgx_report
    assert body.debug == bool(body.attributes[0] & 0x02)
    with pytest.raises(Malformed) as exc:
        parse_tdx_quote(raw)
    assert exc.value.category is Category.MALFORMED


def test_spr_e4_quote_with_nonzero_trailer_is_malformed() -> None:
    """The SPR E4 quote as shipped (non-zero bytes appended) is MALFORMED."""
    err = malformed(load(SPR_E4))
    assert "non-zero" in err.reason


@pytest.mark.parametrize("subpath", [CLOUD_V4, V5, SGX_QUOTES[0]])
def test_one_nonzero_appended_byte_is_malformed(subpath: str) -> None:
    """Appending one non-zero byte after the signature data (or after padding) is MALFORMED."""
    raw = load_clean(subpath)
    malformed(raw + b"\x01")
    malformed(raw + bytes(100) + b"\x80")


@pytest.mark.parametrize("subpath", [SPR_E4, V5, SGX_QUOTES[0]])
def test_zero_padding_is_tolerated(subpath: str) -> None:
    """Zero bytes after the signature data are buffer padding and are accepted."""
    raw = load_clean(subpath)
    q = parse_quote(raw + bytes(8000 - len(raw)))
    assert q.padding_length == 8000 - len(raw)
    assert q == dataclasses.replace(parse_quote(raw), padding_length=q.padding_length)


@pytest.mark.parametrize("subpath", [CLOUD_V4, V5, SGX_QUOTES[0]])
def test_row1_empty_is_malformed(subpath: str) -> None:
    """Row 1: zero bytes are MALFORMED on every path."""
    for parse in (parse_quote, parse_tdx_quote, parse_sgx_quote):
        with pytest.raises(Malformed):
            parse(b"")


@pytest.mark.parametrize("cut", [1, 47, 48, 0x277, 0x278, 0x27B, 0x2FC, 0x302, 0x400, 0x4C3,
                                 0x4C4 + 40, 0x1000])
def test_row2_truncated_tdx_is_malformed(cut: int) -> None:
    """Row 2: a TDX quote cut in the header, at 0x278 or inside cert data is MALFORMED."""
    malformed(load_clean(SPR_E4)[:cut])


@pytest.mark.parametrize("cut", [0x1B0, 0x1B4, 0x300, 0x3F5, 0x500])
def test_row2_truncated_sgx_and_v5_are_malformed(cut: int) -> None:
    """Row 2: truncated SGX v3 and TDX v5 quotes are MALFORMED."""
    malformed(load_clean(SGX_QUOTES[0])[:cut])
    malformed(load_clean(V5)[: cut + 0x100])


@pytest.mark.parametrize(("offset", "fmt", "value"), [
    (0x2FE, "<I", 0xFFFF_FFFF),   # v4 outer certification data size
    (0x278, "<I", 0xFFFF_FFFF),   # signature_data_len
    (0x4C2, "<H", 0xFFFF),        # QE auth data size
    (0x4C4 + 32 + 2, "<I", 0xFFFF_FFFF),  # inner PCK chain size
    (0x2FE, "<I", 0),             # too short a size is a lie as well
])
def test_row4_lying_lengths_are_malformed_without_allocation(offset: int, fmt: str,
                                                             value: int) -> None:
    """Row 4: lying TDX length fields are MALFORMED and nothing near their size is allocated."""
    raw = patched(load_clean(SPR_E4), offset, fmt, value)
    tracemalloc.start()
    try:
        malformed(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_row4_lying_v5_body_size_is_malformed() -> None:
    """Row 4: a v5 body size of 0xFFFFFFFF or of the wrong type's size is MALFORMED."""
    raw = load_clean(V5)
    malformed(patched(raw, 0x32, "<I", 0xFFFF_FFFF))
    malformed(patched(raw, 0x32, "<I", 584))


@pytest.mark.parametrize("version", [0, 1, 2, 3, 6, 0xFFFF])
def test_row6_unknown_tdx_version_is_malformed(version: int) -> None:
    """Row 6: TDX header version 3 (SGX), 6 and others are MALFORMED."""
    malformed(patched(load_clean(CLOUD_V4), 0, "<H", version))


@pytest.mark.parametrize("subpath", [CLOUD_V4, V5, SGX_QUOTES[0]])
@pytest.mark.parametrize("key_type", [0, 1, 3, 0xFFFF])
def test_row6_attestation_key_type_not_2_is_malformed(subpath: str, key_type: int) -> None:
    """Row 6: att_key_type other than 2 (ECDSA-256-with-P-256) is MALFORMED."""
    err = malformed(patched(load_clean(subpath), 2, "<H", key_type))
    assert err.actual == str(key_type)


@pytest.mark.parametrize("subpath", [CLOUD_V4, V5])
def test_row8_tdx_header_with_sgx_tee_type_is_malformed(subpath: str) -> None:
    """Row 8: a TDX quote whose header says tee_type 0x00 (SGX) is MALFORMED on every path."""
    raw = patched(load_clean(subpath), 4, "<I", 0)
    malformed(raw)
    with pytest.raises(Malformed):
        parse_tdx_quote(raw)


def test_row8_other_type_confusions_are_malformed() -> None:
    """Row 8: SGX v3 labelled TDX, v5 body type 1 and SNP bytes are MALFORMED."""
    malformed(patched(load_clean(SGX_QUOTES[0]), 4, "<I", 0x81))
    malformed(patched(load_clean(V5), 0x30, "<H", BODY_TYPE_SGX))
    malformed(patched(load_clean(V5), 0x30, "<H", BODY_TYPE_TD10))
    snp = (VECTORS / "sev-snp").rglob("*.bin")
    for path in list(snp)[:3]:
        malformed(path.read_bytes())


def test_certification_data_types_are_enforced() -> None:
    """Outer certification type must be 6 and the inner one 5 (PCK chain)."""
    raw = load_clean(SPR_E4)
    assert malformed(patched(raw, 0x2FC, "<H", 5)).actual == "5"
    assert malformed(patched(raw, 0x4C4 + 32, "<H", 4)).actual == "4"
    sgx = load_clean(SGX_QUOTES[0])
    assert malformed(patched(sgx, 0x3F6 + 32, "<H", 6)).actual == "6"


def test_with_changes_recomputes_signed_bytes() -> None:
    """with_changes rebuilds signed_bytes from the new fields."""
    q = parse_quote(load_clean(V5))
    body = q.td_report
    changed = q.with_changes(body=dataclasses.replace(body, report_data=b"\x01" * 64))
    assert changed.signed_bytes[-64 - 16 - 48:-16 - 48] == b"\x01" * 64
    assert parse_quote(build_quote(changed)) == changed


# --- hypothesis -------------------------------------------------------------------------------

def blob(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)

sgx_bodies = st.builds(
    SgxReportBody, cpu_svn=blob(16), misc_select=u32, isv_ext_prod_id=blob(16),
    attributes=blob(16), mr_enclave=blob(32), mr_signer=blob(32), config_id=blob(64),
    isv_prod_id=u16, isv_svn=u16, config_svn=u16, isv_family_id=blob(16), report_data=blob(64),
    reserved1=blob(12), reserved2=blob(32), reserved3=blob(32), reserved4=blob(42),
)
signatures = st.builds(
    EcdsaSignatureData, signature=blob(64), attestation_key=blob(64), qe_report=sgx_bodies,
    qe_report_signature=blob(64), qe_auth_data=st.binary(max_size=64),
    pck_cert_data=st.builds(CertificationData, cert_type=st.just(5), data=st.binary(max_size=300)),
).map(lambda s: dataclasses.replace(s, qe_report_raw=build_sgx_report_body(s.qe_report)))


@st.composite
def quotes(draw: st.DrawFn) -> DcapQuote:
    """A random well-formed quote of any supported version and body type."""
    kind = draw(st.sampled_from([(3, 0, BODY_TYPE_SGX), (4, 0x81, BODY_TYPE_TD10),
                                 (5, 0x81, BODY_TYPE_TD10), (5, 0x81, BODY_TYPE_TD15)]))
    version, tee_type, body_type = kind
    header = QuoteHeader(version, 2, tee_type, draw(u16), draw(u16), draw(blob(16)), draw(blob(20)))
    td15 = body_type == BODY_TYPE_TD15
    body: TdReportBody | SgxReportBody = draw(sgx_bodies) if body_type == BODY_TYPE_SGX else (
        TdReportBody(
            tee_tcb_svn=draw(blob(16)), mr_seam=draw(blob(48)), mr_signer_seam=draw(blob(48)),
            seam_attributes=draw(blob(8)), td_attributes=draw(u64), xfam=draw(u64),
            mr_td=draw(blob(48)), mr_config_id=draw(blob(48)), mr_owner=draw(blob(48)),
            mr_owner_config=draw(blob(48)), rtmrs=tuple(draw(blob(48)) for _ in range(4)),
            report_data=draw(blob(64)), tee_tcb_svn2=draw(blob(16)) if td15 else None,
            mr_service_td=draw(blob(48)) if td15 else None))
    q = DcapQuote(header, body_type, body, draw(signatures),
                  padding_length=draw(st.integers(0, 100)))
    return q.with_changes()


@given(quotes())
@settings(max_examples=150, deadline=None)
def test_hypothesis_round_trip(q: DcapQuote) -> None:
    """parse_quote(build_quote(q)) == q for random well-formed quotes."""
    raw = build_quote(q)
    parsed = parse_quote(raw)
    assert parsed == q
    assert parsed.signed_bytes == q.signed_bytes
    assert build_quote(parsed) == raw


@given(st.binary(max_size=6000))
@settings(max_examples=300, deadline=None)
def test_hypothesis_arbitrary_bytes_raise_only_malformed(raw: bytes) -> None:
    """Arbitrary bytes either parse or raise Malformed, nothing else."""
    try:
        parse_quote(raw)
    except KeybrokerError as exc:
        assert exc.category is Category.MALFORMED


@given(st.sampled_from(TDX_QUOTES + SGX_QUOTES), st.data())
@settings(max_examples=300, deadline=None)
def test_hypothesis_mutated_vectors_raise_only_malformed(subpath: str, data: st.DataObject) -> None:
    """Real quotes with random bytes overwritten or cut raise only Malformed (or parse)."""
    raw = bytearray(load_clean(subpath))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        parse_quote(bytes(raw[:cut]))
    except KeybrokerError as exc:
        assert exc.category is Category.MALFORMED
