"""Intel DCAP ECDSA quote signature data and the SGX report body (evidence-formats.md
sections 2.6, 3.1 and 3.2), in construct.

The SGX report body (384 bytes) lives here because it is both the SGX enclave body of a v3
quote and the QE report nested in every quote's signature data.

Invariants enforced by ``parse_signature_data``:
- the data is exactly: quote signature (64) | attestation key (64) | certification data, with
  no byte left over at any nesting level (every size field equals the remaining length);
- ``nested=True`` (quote v4/v5): the outer certification data type is 6 (QE report
  certification data) and wraps QE report (384) | QE report signature (64) | u16-prefixed QE
  auth data | inner certification data; ``nested=False`` (quote v3): those fields follow the
  attestation key directly;
- the innermost certification data type is 5 (PCK certificate chain, PEM); types 1..4 cannot be
  verified and are refused;
- a declared length larger than the bytes present is refused before anything is read for it.
Any violation raises ``Malformed`` (only ``Malformed``, whatever the input bytes). The raw QE
report bytes are kept because the PCK signature covers them as received.
``build_signature_data`` and ``build_sgx_report_body`` are the exact inverses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import construct as c

from keybroker.errors import Malformed

SGX_REPORT_BODY_SIZE = 384
ECDSA_SIGNATURE_SIZE = 64
ATTESTATION_KEY_SIZE = 64
CERT_TYPE_PCK_CERT_CHAIN = 5
CERT_TYPE_QE_REPORT_CERT_DATA = 6
SGX_FLAGS_DEBUG = 1 << 1

_SGX_REPORT_BODY = c.Struct(
    "cpu_svn" / c.Bytes(16),
    "misc_select" / c.Int32ul,
    "reserved1" / c.Bytes(12),
    "isv_ext_prod_id" / c.Bytes(16),
    "attributes" / c.Bytes(16),
    "mr_enclave" / c.Bytes(32),
    "reserved2" / c.Bytes(32),
    "mr_signer" / c.Bytes(32),
    "reserved3" / c.Bytes(32),
    "config_id" / c.Bytes(64),
    "isv_prod_id" / c.Int16ul,
    "isv_svn" / c.Int16ul,
    "config_svn" / c.Int16ul,
    "reserved4" / c.Bytes(42),
    "isv_family_id" / c.Bytes(16),
    "report_data" / c.Bytes(64),
)
assert _SGX_REPORT_BODY.sizeof() == SGX_REPORT_BODY_SIZE

_CERT_DATA = c.Struct("cert_type" / c.Int16ul, "data" / c.Prefixed(c.Int32ul, c.GreedyBytes))
_QE_FIELDS = (
    "qe_report" / c.Bytes(SGX_REPORT_BODY_SIZE),
    "qe_report_signature" / c.Bytes(ECDSA_SIGNATURE_SIZE),
    "qe_auth_data" / c.Prefixed(c.Int16ul, c.GreedyBytes),
    "pck" / _CERT_DATA,
)
_KEY_FIELDS = (
    "signature" / c.Bytes(ECDSA_SIGNATURE_SIZE),
    "attestation_key" / c.Bytes(ATTESTATION_KEY_SIZE),
)
_SIG_DATA_V3 = c.Struct(*_KEY_FIELDS, *_QE_FIELDS, c.Terminated)
_SIG_DATA_V4 = c.Struct(*_KEY_FIELDS, "outer" / _CERT_DATA, c.Terminated)
_QE_REPORT_CERT_DATA = c.Struct(*_QE_FIELDS, c.Terminated)
_SIG_DATA_V4_HEAD = c.Struct(*_KEY_FIELDS, "cert_type" / c.Int16ul, "size" / c.Int32ul)
_HEAD_SIZE = _SIG_DATA_V4_HEAD.sizeof()


@dataclass(frozen=True)
class SgxReportBody:
    """Every field of an SGX report body. ``attributes`` is FLAGS (u64 LE) then XFRM (u64 LE);
    the reserved ranges are kept as received so that the body rebuilds byte for byte."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    reserved1: bytes = bytes(12)
    reserved2: bytes = bytes(32)
    reserved3: bytes = bytes(32)
    reserved4: bytes = bytes(42)

    @property
    def flags(self) -> int:
        """ATTRIBUTES.FLAGS (bit 1 = DEBUG)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def xfrm(self) -> int:
        """ATTRIBUTES.XFRM."""
        return int.from_bytes(self.attributes[8:], "little")

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.FLAGS.DEBUG: the enclave's memory is readable by the host."""
        return bool(self.flags & SGX_FLAGS_DEBUG)


@dataclass(frozen=True)
class CertificationData:
    """A certification data record: type and payload (for type 5 a PEM chain)."""

    cert_type: int
    data: bytes

    @property
    def pem_chain(self) -> bytes:
        """The PEM payload without the trailing NUL bytes some quoting enclaves append."""
        return self.data.rstrip(b"\x00")


@dataclass(frozen=True)
class EcdsaSignatureData:
    """ECDSA-256-with-P-256 signature data. ``signature`` is r||s and ``attestation_key`` is
    X||Y (both big-endian); ``qe_report_raw`` is the exact 384 bytes the PCK key signed."""

    signature: bytes
    attestation_key: bytes
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_cert_data: CertificationData
    qe_report_raw: bytes = dataclasses.field(repr=False, default=b"")


def parse_sgx_report_body(raw: bytes) -> SgxReportBody:
    """Parse exactly 384 bytes of SGX report body; raises only ``Malformed``."""
    if len(raw) != SGX_REPORT_BODY_SIZE:
        raise Malformed("SGX report body has the wrong size",
                        expected=f"{SGX_REPORT_BODY_SIZE} bytes", actual=f"{len(raw)} bytes")
    f = _SGX_REPORT_BODY.parse(raw)
    return SgxReportBody(**{fld.name: f[fld.name] for fld in dataclasses.fields(SgxReportBody)})


def build_sgx_report_body(body: SgxReportBody) -> bytes:
    """Serialize ``body`` to its exact 384 bytes."""
    fields = {fld.name: getattr(body, fld.name) for fld in dataclasses.fields(body)}
    try:
        out: bytes = _SGX_REPORT_BODY.build(fields)
    except (c.ConstructError, OverflowError, TypeError) as exc:
        raise Malformed(f"cannot build SGX report body: {exc}") from exc
    return out


def _check_declared(raw: bytes, *, nested: bool) -> None:
    """Refuse a lying outer certification-data size before construct reads the payload."""
    if not nested:
        return
    try:
        head = _SIG_DATA_V4_HEAD.parse(raw)
    except c.ConstructError as exc:
        raise Malformed("signature data is truncated", expected=f">= {_HEAD_SIZE} bytes",
                        actual=f"{len(raw)} bytes") from exc
    if head.size != len(raw) - _HEAD_SIZE:
        raise Malformed("certification data size does not match the signature data",
                        expected=str(len(raw) - _HEAD_SIZE), actual=str(head.size))


def parse_signature_data(raw: bytes, *, nested: bool) -> EcdsaSignatureData:
    """Parse quote signature data (``nested`` for v4/v5); raises only ``Malformed``."""
    _check_declared(raw, nested=nested)
    try:
        if nested:
            top = _SIG_DATA_V4.parse(raw)
            if top.outer.cert_type != CERT_TYPE_QE_REPORT_CERT_DATA:
                raise Malformed("outer certification data type is not QE report data",
                                expected=str(CERT_TYPE_QE_REPORT_CERT_DATA),
                                actual=str(top.outer.cert_type))
            qe = _QE_REPORT_CERT_DATA.parse(top.outer.data)
        else:
            top = qe = _SIG_DATA_V3.parse(raw)
    except c.ConstructError as exc:
        raise Malformed("signature data lengths are inconsistent",
                        expected="every size field equal to the bytes present",
                        actual=type(exc).__name__) from exc
    if qe.pck.cert_type != CERT_TYPE_PCK_CERT_CHAIN:
        raise Malformed("certification data is not a PCK certificate chain",
                        expected=str(CERT_TYPE_PCK_CERT_CHAIN), actual=str(qe.pck.cert_type))
    return EcdsaSignatureData(
        signature=top.signature,
        attestation_key=top.attestation_key,
        qe_report=parse_sgx_report_body(qe.qe_report),
        qe_report_signature=qe.qe_report_signature,
        qe_auth_data=qe.qe_auth_data,
        pck_cert_data=CertificationData(qe.pck.cert_type, qe.pck.data),
        qe_report_raw=qe.qe_report,
    )


def build_signature_data(sig: EcdsaSignatureData, *, nested: bool) -> bytes:
    """Serialize ``sig`` (v4/v5 layout when ``nested``); the QE report is rebuilt from fields."""
    qe = {
        "qe_report": build_sgx_report_body(sig.qe_report),
        "qe_report_signature": sig.qe_report_signature,
        "qe_auth_data": sig.qe_auth_data,
        "pck": {"cert_type": sig.pck_cert_data.cert_type, "data": sig.pck_cert_data.data},
    }
    keys = {"signature": sig.signature, "attestation_key": sig.attestation_key}
    try:
        if nested:
            inner = _QE_REPORT_CERT_DATA.build(qe)
            outer = {"cert_type": CERT_TYPE_QE_REPORT_CERT_DATA, "data": inner}
            out: bytes = _SIG_DATA_V4.build({**keys, "outer": outer})
        else:
            out = _SIG_DATA_V3.build({**keys, **qe})
    except (c.ConstructError, OverflowError, TypeError) as exc:
        raise Malformed(f"cannot build signature data: {exc}") from exc
    return out
