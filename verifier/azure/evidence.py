"""Azure confidential VM vTPM evidence as Trustee's ``az-snp-vtpm`` / ``az-tdx-vtpm`` JSON, in
both format versions (v0: byte arrays; v1: base64url strings), read into typed bytes.

Invariants:
- Recognised by content: v0 carries ``report`` (SNP) or ``hcl_report`` (TDX) as byte arrays
  and ``quote`` / ``tpm_quote`` as byte arrays; v1 carries ``"version": 1``, ``hcl_report``
  (and ``vcek``) as base64 or base64url, and ``tpm_quote`` fields as hex. Anything else is
  MALFORMED naming what was expected.
- Bounded: the document is at most ``MAX_DOCUMENT`` bytes; byte arrays hold integers 0..255;
  exactly 24 PCR values of 32 bytes (SHA-256 bank, PCR0..23) are required.
- Nothing here verifies anything: the VCEK (SNP) and the TD quote (TDX) are only carried.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from keybroker.errors import Malformed
from keybroker.evidence.content import looks_like

MAX_DOCUMENT = 1 << 20
PCR_COUNT = 24


@dataclass(frozen=True)
class AzureEvidence:
    """The parts of one Azure vTPM evidence document."""

    format: str  # "v0" | "v1"
    hcl_report: bytes
    tpm_message: bytes
    tpm_signature: bytes  # the raw RSASSA-PKCS1-v1_5 SHA-256 signature (not a TPMT_SIGNATURE)
    pcrs: tuple[bytes, ...]  # SHA-256 PCR0..23
    vcek: bytes | None  # SNP: the VCEK as given (PEM or DER)
    td_quote: bytes | None  # TDX: the TD quote


def _bytes(value: Any, field: str, *, b64: bool, hex_text: bool = False) -> bytes:
    if hex_text:
        try:
            return bytes.fromhex(value)
        except (TypeError, ValueError):
            raise Malformed(f"evidence field {field} is not hex",
                            actual=str(value)[:40]) from None
    if b64:
        if not isinstance(value, str):
            raise Malformed(f"evidence field {field} is not a base64url string",
                            actual=type(value).__name__)
        text = value.strip().replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise Malformed(f"evidence field {field} is not base64url",
                            actual=value[:40]) from None
    if not isinstance(value, list) or not all(isinstance(b, int) and not isinstance(b, bool)
                                               and 0 <= b <= 255 for b in value):
        raise Malformed(f"evidence field {field} is not a byte array",
                        expected="a list of integers 0..255", actual=type(value).__name__)
    return bytes(value)


def _field(doc: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in doc:
            return doc[name]
    raise Malformed(f"evidence lacks {' or '.join(names)}", expected=" or ".join(names),
                    actual=", ".join(sorted(doc))[:200])


def parse_azure_evidence(raw: bytes) -> AzureEvidence:
    """Parse one evidence document (module invariants)."""
    if len(raw) > MAX_DOCUMENT:
        raise Malformed("evidence document too large", expected=f"<= {MAX_DOCUMENT} bytes",
                        actual=f"{len(raw)} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise Malformed("input is not an Azure vTPM evidence document",
                        expected="Trustee az-snp-vtpm / az-tdx-vtpm evidence JSON",
                        actual=looks_like(raw) or "binary data") from None
    if not isinstance(doc, dict):
        raise Malformed("evidence is not a JSON object", actual=type(doc).__name__)
    b64 = doc.get("version") in (1, "1")
    quote = _field(doc, "tpm_quote", "quote")
    if not isinstance(quote, dict):
        raise Malformed("evidence tpm_quote is not an object", actual=type(quote).__name__)
    pcrs = _field(quote, "pcrs")
    if not isinstance(pcrs, list) or len(pcrs) != PCR_COUNT:
        raise Malformed("evidence must carry the 24 SHA-256 PCRs", expected="24 values",
                        actual=str(len(pcrs)) if isinstance(pcrs, list) else type(pcrs).__name__)
    values = tuple(_bytes(p, f"pcrs[{i}]", b64=b64, hex_text=b64) for i, p in enumerate(pcrs))
    if any(len(v) != 32 for v in values):
        raise Malformed("PCR values must be 32-byte SHA-256 values", expected="32 bytes",
                        actual=str(sorted({len(v) for v in values})))
    vcek = doc.get("vcek")
    td_quote = doc.get("td_quote")
    return AzureEvidence(
        format="v1" if b64 else "v0",
        hcl_report=_bytes(_field(doc, "hcl_report", "report"), "hcl_report", b64=b64),
        tpm_message=_bytes(_field(quote, "message"), "tpm_quote.message", b64=b64,
                           hex_text=b64),
        tpm_signature=_bytes(_field(quote, "signature"), "tpm_quote.signature", b64=b64,
                             hex_text=b64),
        pcrs=values,
        vcek=(None if vcek is None else vcek.encode() if isinstance(vcek, str)
              and vcek.lstrip().startswith("-----") else _bytes(vcek, "vcek", b64=True)
              if isinstance(vcek, str) else _bytes(vcek, "vcek", b64=False)),
        td_quote=None if td_quote is None else _bytes(td_quote, "td_quote", b64=b64),
    )
