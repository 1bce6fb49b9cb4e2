"""Intel DCAP quotes: TDX v4 and v5, SGX v3 (evidence-formats.md sections 2.1-2.5 and 3), in
construct. The signature data and the SGX report body are in ``dcap_signature``.

Invariants enforced by ``parse_quote``:
- at most ``MAX_QUOTE_SIZE`` bytes, refused before parsing;
- header version is 3 (SGX), 4 or 5 (TDX); att_key_type is 2 (ECDSA-256-with-P-256);
  tee_type is 0x00 (SGX) for version 3 and 0x81 (TDX) for versions 4 and 5;
- version 4 carries a TD report 1.0 body (584 bytes); version 5 declares body type 2 (TD report
  1.0, 584 bytes) or 3 (TD report 1.5, 648 bytes) with exactly that size (an SGX body in a v5
  quote is refused); version 3 carries an SGX report body (384 bytes);
- the signature data is exactly ``signature_data_len`` bytes and well formed (see
  ``dcap_signature``: nested type-6 certification data for v4/v5, a type-5 PCK chain always);
- bytes after the signature data are tolerated only if all zero (cloud buffer padding); one
  non-zero trailing byte is refused;
- every length field is checked against the bytes present: construct reads from the in-memory
  input, so a lying length never reads or allocates more than the input holds.
Any violation raises ``Malformed`` (only ``Malformed``, whatever the input bytes). The QE vendor
ID, attributes and measurements are policy, checked by the verifier, not here.
``signed_bytes`` is header + body (v5: with body type and size) as received; ``build_quote`` is
the exact inverse, trailing zero padding included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import construct as c

from keybroker.errors import Malformed
from keybroker.evidence.content import refuse_foreign
from keybroker.evidence.dcap_signature import (
    SGX_REPORT_BODY_SIZE,
    EcdsaSignatureData,
    SgxReportBody,
    build_sgx_report_body,
    build_signature_data,
    parse_sgx_report_body,
    parse_signature_data,
)

MAX_QUOTE_SIZE = 1 << 20
HEADER_SIZE = 48
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
SUPPORTED_VERSIONS = (3, 4, 5)
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TD_ATTRIBUTES_DEBUG = 1 << 0
_TEE_FOR_VERSION = {3: TEE_TYPE_SGX, 4: TEE_TYPE_TDX, 5: TEE_TYPE_TDX}
_BODY_SIZES = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}

_HEADER = c.Struct(
    "version" / c.Int16ul,
    "att_key_type" / c.Int16ul,
    "tee_type" / c.Int32ul,
    "qe_svn" / c.Int16ul,
    "pce_svn" / c.Int16ul,
    "qe_vendor_id" / c.Bytes(16),
    "user_data" / c.Bytes(20),
)
assert _HEADER.sizeof() == HEADER_SIZE

# The field groups a TD report body shares with the TDREPORT (``keybroker.evidence.tdreport``):
# TEE_TCB_INFO after its VALID mask, and TD_INFO up to SERVTD_HASH.
TEE_TCB_FIELDS = (
    "tee_tcb_svn" / c.Bytes(16),
    "mr_seam" / c.Bytes(48),
    "mr_signer_seam" / c.Bytes(48),
    "seam_attributes" / c.Bytes(8),
)
TD_INFO_FIELDS = (
    "td_attributes" / c.Int64ul,
    "xfam" / c.Int64ul,
    "mr_td" / c.Bytes(48),
    "mr_config_id" / c.Bytes(48),
    "mr_owner" / c.Bytes(48),
    "mr_owner_config" / c.Bytes(48),
    "rtmrs" / c.Array(4, c.Bytes(48)),
)
_TD10_FIELDS = (*TEE_TCB_FIELDS, *TD_INFO_FIELDS, "report_data" / c.Bytes(64))
_TD10 = c.Struct(*_TD10_FIELDS)
_TD15 = c.Struct(*_TD10_FIELDS, "tee_tcb_svn2" / c.Bytes(16), "mr_service_td" / c.Bytes(48))
assert _TD10.sizeof() == TD10_BODY_SIZE
assert _TD15.sizeof() == TD15_BODY_SIZE

_SIG = "signature_data" / c.Prefixed(c.Int32ul, c.GreedyBytes)
_PAD = "padding" / c.GreedyBytes
_QUOTE_V3 = c.Struct("header" / _HEADER, "body" / c.Bytes(SGX_REPORT_BODY_SIZE), _SIG, _PAD)
_QUOTE_V4 = c.Struct("header" / _HEADER, "body" / c.Bytes(TD10_BODY_SIZE), _SIG, _PAD)
_QUOTE_V5 = c.Struct("header" / _HEADER, "body_type" / c.Int16ul,
                     "body" / c.Prefixed(c.Int32ul, c.GreedyBytes), _SIG, _PAD)


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header. qe_svn and pce_svn are reserved (0) in TDX quotes."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """A TD report body; ``tee_tcb_svn2`` and ``mr_service_td`` are set only for TD report 1.5.
    ``rtmrs`` holds RTMR0..RTMR3 in order."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: int
    xfam: int
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, ...]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def is_td15(self) -> bool:
        """True for a TD report 1.5 body (quote v5 body type 3)."""
        return self.tee_tcb_svn2 is not None

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.DEBUG: the host can read and modify the TD."""
        return bool(self.td_attributes & TD_ATTRIBUTES_DEBUG)


@dataclass(frozen=True)
class DcapQuote:
    """Every field of a parsed quote. ``body_type`` is 1 (SGX), 2 (TD 1.0) or 3 (TD 1.5) for
    every version; ``padding_length`` counts the zero bytes after the signature data."""

    header: QuoteHeader
    body_type: int
    body: TdReportBody | SgxReportBody
    signature_data: EcdsaSignatureData
    signed_bytes: bytes = dataclasses.field(repr=False, default=b"")
    padding_length: int = 0

    @property
    def is_tdx(self) -> bool:
        """True for a TDX quote (tee_type 0x81 with a TD report body)."""
        return isinstance(self.body, TdReportBody)

    @property
    def td_report(self) -> TdReportBody:
        """The TD report body; ``Malformed`` if this is an SGX quote (type confusion)."""
        if not isinstance(self.body, TdReportBody):
            raise Malformed("expected a TDX quote", expected=f"tee_type {TEE_TYPE_TDX:#x}",
                            actual=f"tee_type {self.header.tee_type:#x}")
        return self.body

    @property
    def sgx_report(self) -> SgxReportBody:
        """The SGX enclave report body; ``Malformed`` if this is a TDX quote."""
        if not isinstance(self.body, SgxReportBody):
            raise Malformed("expected an SGX quote", expected=f"tee_type {TEE_TYPE_SGX:#x}",
                            actual=f"tee_type {self.header.tee_type:#x}")
        return self.body

    def with_changes(self, **changes: object) -> DcapQuote:
        """A copy with fields replaced (simulator and tests); signed_bytes is recomputed."""
        updated = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(updated, signed_bytes=_signed_part(updated))


def _check_header(h: QuoteHeader) -> None:
    if h.version not in SUPPORTED_VERSIONS:
        raise Malformed("unsupported quote version", expected=f"one of {SUPPORTED_VERSIONS}",
                        actual=str(h.version))
    if h.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise Malformed("unsupported attestation key type",
                        expected="2 (ECDSA-256-with-P-256)", actual=str(h.att_key_type))
    if h.tee_type != _TEE_FOR_VERSION[h.version]:
        raise Malformed("tee_type does not match the quote version",
                        expected=f"{_TEE_FOR_VERSION[h.version]:#x} for version {h.version}",
                        actual=f"{h.tee_type:#x}")


def _parse_td_body(raw: bytes, body_type: int) -> TdReportBody:
    f = (_TD15 if body_type == BODY_TYPE_TD15 else _TD10).parse(raw)
    return TdReportBody(
        tee_tcb_svn=f.tee_tcb_svn, mr_seam=f.mr_seam, mr_signer_seam=f.mr_signer_seam,
        seam_attributes=f.seam_attributes, td_attributes=f.td_attributes, xfam=f.xfam,
        mr_td=f.mr_td, mr_config_id=f.mr_config_id, mr_owner=f.mr_owner,
        mr_owner_config=f.mr_owner_config, rtmrs=tuple(f.rtmrs), report_data=f.report_data,
        tee_tcb_svn2=f.get("tee_tcb_svn2"), mr_service_td=f.get("mr_service_td"),
    )


def parse_quote(raw: bytes) -> DcapQuote:
    """Parse and structurally validate a DCAP quote; raises only ``Malformed``."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise Malformed("quote must be bytes", expected="bytes", actual=type(raw).__name__)
    raw = bytes(raw)
    if len(raw) < HEADER_SIZE or int.from_bytes(raw[:2], "little") not in SUPPORTED_VERSIONS:
        refuse_foreign(raw, "a binary DCAP quote (version 3, 4 or 5)")
    if not HEADER_SIZE <= len(raw) <= MAX_QUOTE_SIZE:
        raise Malformed("quote size out of range",
                        expected=f"{HEADER_SIZE}..{MAX_QUOTE_SIZE} bytes",
                        actual=f"{len(raw)} bytes")
    h = _HEADER.parse(raw[:HEADER_SIZE])
    header = QuoteHeader(**{fld.name: h[fld.name] for fld in dataclasses.fields(QuoteHeader)})
    _check_header(header)
    layout = {3: _QUOTE_V3, 4: _QUOTE_V4, 5: _QUOTE_V5}[header.version]
    try:
        f = layout.parse(raw)
    except c.ConstructError as exc:
        raise Malformed("quote is truncated or a length field exceeds the bytes present",
                        expected="lengths consistent with the data", actual=f"{len(raw)} bytes"
                        ) from exc
    body_type = f.get("body_type", BODY_TYPE_SGX if header.version == 3 else BODY_TYPE_TD10)
    if header.version == 5 and _BODY_SIZES.get(body_type) != len(f.body):
        raise Malformed("v5 body type and size are not a TD report",
                        expected="type 2 with 584 bytes or type 3 with 648 bytes",
                        actual=f"type {body_type} with {len(f.body)} bytes")
    if any(f.padding):
        raise Malformed("non-zero bytes after the signature data", expected="zero padding only",
                        actual=f"{sum(1 for b in f.padding if b)} non-zero of {len(f.padding)}")
    body: TdReportBody | SgxReportBody = (
        parse_sgx_report_body(f.body) if body_type == BODY_TYPE_SGX
        else _parse_td_body(f.body, body_type)
    )
    signed_len = len(raw) - 4 - len(f.signature_data) - len(f.padding)
    return DcapQuote(
        header=header,
        body_type=body_type,
        body=body,
        signature_data=parse_signature_data(f.signature_data, nested=header.version != 3),
        signed_bytes=raw[:signed_len],
        padding_length=len(f.padding),
    )


def parse_tdx_quote(raw: bytes) -> DcapQuote:
    """``parse_quote`` for the TDX path: an SGX quote is type confusion (``Malformed``)."""
    quote = parse_quote(raw)
    quote.td_report  # noqa: B018  (raises Malformed for an SGX quote)
    return quote


def parse_sgx_quote(raw: bytes) -> DcapQuote:
    """``parse_quote`` for the SGX path: a TDX quote is type confusion (``Malformed``)."""
    quote = parse_quote(raw)
    quote.sgx_report  # noqa: B018  (raises Malformed for a TDX quote)
    return quote


def _build_body(quote: DcapQuote) -> bytes:
    body = quote.body
    if isinstance(body, SgxReportBody):
        return build_sgx_report_body(body)
    fields = {fld.name: getattr(body, fld.name) for fld in dataclasses.fields(body)}
    fields["rtmrs"] = list(body.rtmrs)
    layout = _TD15 if body.is_td15 else _TD10
    try:
        out: bytes = layout.build(fields)
    except (c.ConstructError, OverflowError, TypeError) as exc:
        raise Malformed(f"cannot build TD report body: {exc}") from exc
    return out


def _layout_fields(quote: DcapQuote) -> tuple[c.Struct, dict[str, object]]:
    h = quote.header
    fields: dict[str, object] = {
        "header": dataclasses.asdict(h),
        "body": _build_body(quote),
        "signature_data": build_signature_data(
            quote.signature_data, nested=not isinstance(quote.body, SgxReportBody)),
        "padding": bytes(quote.padding_length),
    }
    if h.version == 5:
        fields["body_type"] = quote.body_type
        return _QUOTE_V5, fields
    return (_QUOTE_V3 if isinstance(quote.body, SgxReportBody) else _QUOTE_V4), fields


def build_quote(quote: DcapQuote) -> bytes:
    """Serialize ``quote`` exactly (the layout follows the version and the body kind)."""
    layout, fields = _layout_fields(quote)
    try:
        out: bytes = layout.build(fields)
    except (c.ConstructError, OverflowError, TypeError) as exc:
        raise Malformed(f"cannot build quote: {exc}") from exc
    return out


def _signed_part(quote: DcapQuote) -> bytes:
    body = _build_body(quote)
    head: bytes = _HEADER.build(dataclasses.asdict(quote.header))
    if quote.header.version == 5:
        return head + c.Int16ul.build(quote.body_type) + c.Int32ul.build(len(body)) + body
    return head + body
