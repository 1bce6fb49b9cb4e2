"""What a byte string looks like, for error messages when a binary parser is given something
else (a JSON document, a JWT, CBOR, PEM, text).

Invariants:
- Only consulted after a binary layout has already refused the bytes: recognising content
  never makes anything acceptable, it only names what arrived.
- Pure and bounded: looks at no more than the first ``_SNIFF_LIMIT`` bytes (plus a JSON parse
  of at most that many bytes), never raises.
"""

from __future__ import annotations

import json
import re

from keybroker.errors import Malformed

_SNIFF_LIMIT = 64 * 1024
_JWT = re.compile(rb"\s*[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*\s*")
_COSE_SIGN1_TAG = b"\xd2"  # CBOR tag 18
_CBOR_ARRAY4 = b"\x84"


def looks_like(data: bytes) -> str | None:
    """A short description of recognised non-binary-evidence content, or None."""
    head = bytes(data[:_SNIFF_LIMIT])
    stripped = head.lstrip()
    if not stripped:
        return "an empty file" if not head else "only whitespace"
    if stripped.startswith(b"-----BEGIN "):
        label = stripped[11:].split(b"-----", 1)[0].decode("ascii", "replace")
        return f"PEM text ({label})"
    if stripped[:1] in (b"{", b"["):
        return _json_kind(stripped)
    if _JWT.fullmatch(head):
        return "a JWT (three base64url parts separated by dots)"
    if head[:1] == _COSE_SIGN1_TAG or head[:1] == _CBOR_ARRAY4:
        return "CBOR (a COSE_Sign1 document, for example a Nitro attestation document)"
    if stripped[:2] == b"\x30\x82":
        return "DER (an ASN.1 structure such as a certificate or CRL)"
    if _is_text(head):
        return "text"
    return None


def _json_kind(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return "JSON text" if len(data) >= _SNIFF_LIMIT else "text starting like JSON"
    if isinstance(doc, dict):
        keys = ", ".join(sorted(str(k) for k in doc)[:4])
        return f"a JSON document (keys: {keys})" if keys else "a JSON document (empty object)"
    return "a JSON document"


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def refuse_foreign(data: bytes, expected: str) -> None:
    """Raise ``Malformed`` naming what ``data`` looks like, if it is recognisably something
    other than ``expected`` (called by binary parsers that have already refused the bytes)."""
    kind = looks_like(data)
    if kind is not None:
        raise Malformed(f"input is {kind}, not {expected}")
