"""The AWS Nitro Enclaves attestation document (evidence-formats.md section 4): a COSE_Sign1
(CBOR tag 18, or the untagged 4-array the NSM emits) whose payload is the NSM's CBOR map.

Invariants:
- ``decode_document`` and ``parse_payload`` raise only ``Malformed``, for any bytes.
- Strict CBOR (cbor2): at most ``MAX_DOCUMENT`` bytes, and the bytes must be exactly the
  encoding of what they decode to: definite lengths, shortest heads, no duplicate map keys, no
  trailing bytes (the form the NSM produces; anything else is not an NSM document).
- The protected header is kept as the exact bytes received (the signature covers them) next to
  its decoded map; judging the algorithm is the verifier's business, not the parser's.
- Payload fields are type- and length-checked (AWS's syntactical validation): module_id a
  non-empty text, digest "SHA384", timestamp > 0 (ms since the epoch), 1..32 PCRs of index
  0..31 and 48 bytes each, certificate 1..1024 bytes, cabundle 1..``MAX_BUNDLE`` items of
  1..1024 bytes, public_key 1..1024, user_data and nonce 0..512; optional fields may be null
  (absent); no other key.
- ``build_payload`` / ``build_document`` are the exact inverses (the NSM's key order, null for
  absent optional fields); ``sig_structure`` is RFC 9052's Signature1 structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from keybroker.errors import Malformed
from keybroker.evidence.content import refuse_foreign

MAX_DOCUMENT = 32 * 1024
MAX_BUNDLE = 8
PCR_SIZE = 48
COSE_TAG = 18
ALG_ES384 = -35
_KEYS = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key",
         "user_data", "nonce")
_OPTIONAL = {"public_key": (1, 1024), "user_data": (0, 512), "nonce": (0, 512)}


@dataclass(frozen=True)
class CoseSign1:
    """The four parts of a COSE_Sign1, the protected header as received."""

    protected: bytes
    protected_header: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool


@dataclass(frozen=True)
class NitroPayload:
    """The NSM's attestation document payload."""

    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]  # root first
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None


def _strict_loads(raw: bytes, what: str) -> Any:
    """Decode ``raw``; MALFORMED unless its encoding is exactly the canonical one of what it
    decodes to (module invariants)."""
    try:
        value = cbor2.loads(raw)
        again = cbor2.dumps(value)
    except Exception as exc:  # cbor2 raises many types (decode, value, memory, recursion)
        raise Malformed(f"{what} is not well-formed CBOR", expected="definite-length CBOR",
                        actual=f"{type(exc).__name__}: {str(exc)[:120]}") from None
    if again != raw:
        raise Malformed(f"{what} is not in the NSM's strict CBOR encoding",
                        expected="definite lengths, shortest heads, no duplicate keys, no "
                                 "trailing bytes",
                        actual=f"{len(raw)} bytes re-encode to {len(again)} bytes")
    return value


def decode_document(raw: bytes) -> CoseSign1:
    """The COSE_Sign1 of an attestation document (module invariants)."""
    raw = bytes(raw)
    if not raw or len(raw) > MAX_DOCUMENT or raw[0] not in (0x84, 0xD2):
        if raw and len(raw) <= MAX_DOCUMENT:
            refuse_foreign(raw, "a Nitro attestation document")
        raise Malformed("not a Nitro attestation document",
                        expected=f"a COSE_Sign1 (0x84 or tag 18), 1..{MAX_DOCUMENT} bytes",
                        actual=f"{len(raw)} bytes" + (f" starting {raw[:1].hex()}" if raw
                                                      else ""))
    value = _strict_loads(raw, "the document")
    tagged = isinstance(value, cbor2.CBORTag)
    if tagged:
        if value.tag != COSE_TAG:
            raise Malformed("unexpected CBOR tag", expected=f"tag {COSE_TAG} (COSE_Sign1)",
                            actual=f"tag {value.tag}")
        value = value.value
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise Malformed("the document is not a COSE_Sign1 array",
                        expected="[protected, unprotected, payload, signature]",
                        actual=type(value).__name__)
    protected, unprotected, payload, signature = value
    for part, name in ((protected, "protected header"), (payload, "payload"),
                       (signature, "signature")):
        if not isinstance(part, bytes):
            raise Malformed(f"COSE_Sign1 {name} is not a byte string",
                            actual=type(part).__name__)
    if not isinstance(unprotected, Mapping):  # under a tag cbor2 gives an immutable map
        raise Malformed("COSE_Sign1 unprotected header is not a map",
                        actual=type(unprotected).__name__)
    header = _strict_loads(protected, "the protected header") if protected else {}
    if not isinstance(header, Mapping):
        raise Malformed("COSE_Sign1 protected header is not a map", actual=type(header).__name__)
    return CoseSign1(protected, header, unprotected, payload, signature, tagged)


def _bytes_field(doc: Mapping[str, Any], name: str, low: int, high: int) -> bytes:
    value = doc.get(name)
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise Malformed(f"payload field {name} out of range",
                        expected=f"a byte string of {low}..{high} bytes",
                        actual=(f"{len(value)} bytes" if isinstance(value, bytes)
                                else type(value).__name__))
    return value


def _pcrs(value: Any) -> dict[int, bytes]:
    if not isinstance(value, Mapping) or not 1 <= len(value) <= 32:
        raise Malformed("payload pcrs out of range", expected="a map of 1..32 PCRs",
                        actual=type(value).__name__ if not isinstance(value, Mapping)
                        else f"{len(value)} entries")
    out: dict[int, bytes] = {}
    for index, digest in value.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 32:
            raise Malformed("PCR index out of range", expected="0..31", actual=repr(index)[:40])
        if not isinstance(digest, bytes) or len(digest) != PCR_SIZE:
            raise Malformed(f"PCR{index} is not a SHA-384 value", expected=f"{PCR_SIZE} bytes",
                            actual=(f"{len(digest)} bytes" if isinstance(digest, bytes)
                                    else type(digest).__name__))
        out[index] = digest
    return out


def parse_payload(payload: bytes) -> NitroPayload:
    """The typed payload map (module invariants)."""
    doc = _strict_loads(payload, "the payload")
    if not isinstance(doc, Mapping):
        raise Malformed("payload is not a map", actual=type(doc).__name__)
    unknown = sorted(str(k)[:40] for k in doc if k not in _KEYS)
    missing = [k for k in _KEYS[:6] if k not in doc]
    if unknown or missing:
        raise Malformed("payload keys are not the NSM's", expected=", ".join(_KEYS),
                        actual=f"unknown {unknown}, missing {missing}")
    module_id, digest, timestamp = doc["module_id"], doc["digest"], doc["timestamp"]
    if not isinstance(module_id, str) or not 0 < len(module_id) <= 256:
        raise Malformed("payload module_id is not a non-empty text", actual=repr(module_id)[:60])
    if digest != "SHA384":
        raise Malformed("payload digest is not SHA384", expected="SHA384",
                        actual=repr(digest)[:40])
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 < timestamp < 1 << 64:
        raise Malformed("payload timestamp out of range", expected="milliseconds > 0",
                        actual=repr(timestamp)[:40])
    bundle = doc["cabundle"]
    if not isinstance(bundle, (list, tuple)) or not 1 <= len(bundle) <= MAX_BUNDLE:
        raise Malformed("payload cabundle out of range",
                        expected=f"1..{MAX_BUNDLE} certificates",
                        actual=type(bundle).__name__ if not isinstance(bundle, (list, tuple))
                        else f"{len(bundle)} items")
    cabundle = tuple(_bytes_field({"cabundle item": c}, "cabundle item", 1, 1024)
                     for c in bundle)
    optional = {name: None if doc.get(name) is None else _bytes_field(doc, name, low, high)
                for name, (low, high) in _OPTIONAL.items()}
    return NitroPayload(module_id=module_id, digest=digest, timestamp_ms=timestamp,
                        pcrs=_pcrs(doc["pcrs"]),
                        certificate=_bytes_field(doc, "certificate", 1, 1024),
                        cabundle=cabundle, **optional)


def build_payload(payload: NitroPayload) -> bytes:
    """The payload map in the NSM's key order (null for absent optional fields)."""
    return bytes(cbor2.dumps({
        "module_id": payload.module_id, "digest": payload.digest,
        "timestamp": payload.timestamp_ms, "pcrs": dict(payload.pcrs),
        "certificate": payload.certificate, "cabundle": list(payload.cabundle),
        "public_key": payload.public_key, "user_data": payload.user_data,
        "nonce": payload.nonce}))


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 Sig_structure for COSE_Sign1: ["Signature1", protected, b"", payload]."""
    return bytes(cbor2.dumps(["Signature1", protected, b"", payload]))


def build_document(cose: CoseSign1) -> bytes:
    """The COSE_Sign1 bytes (tagged when ``cose.tagged``)."""
    array = [cose.protected, dict(cose.unprotected), cose.payload, cose.signature]
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_TAG, array) if cose.tagged else array))
