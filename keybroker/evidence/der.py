"""A minimal, strict, bounded DER reader and the matching writer, for the vendor X.509
extensions (the SGX extension of PCK certificates, AMD's VCEK/VLEK extensions).

Invariants:
- Only DER is accepted: single-byte tags (no high tag numbers), definite lengths in minimal form
  (short form below 128, no leading zero length octets, at most 4 length octets), and every
  value lies entirely inside its parent. ``children`` requires the TLVs to cover the parent's
  value exactly (no trailing bytes).
- INTEGERs are minimal two's complement; ``uint`` accepts only non-negative values up to
  ``MAX_UINT``. BOOLEANs are exactly 0x00 or 0xFF. OIDs are canonical (no 0x80 padding octets,
  last octet terminates).
- Every failure raises ``Malformed`` with what was expected and found; nothing else escapes.
- The writers (``der_tlv`` and the typed ``der_*`` helpers) emit exactly what the reader
  accepts: minimal lengths, minimal non-negative INTEGERs, canonical OIDs.
"""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.errors import Malformed

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_IA5STRING = 0x16
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30
MAX_UINT = 2**64 - 1
MAX_CHILDREN = 64


@dataclass(frozen=True)
class Tlv:
    """One DER element: its tag and its value bytes."""

    tag: int
    value: bytes

    def expect(self, tag: int, what: str) -> bytes:
        """The value, if the tag is ``tag``; else ``Malformed``."""
        if self.tag != tag:
            raise Malformed(f"{what}: wrong DER type", expected=f"tag 0x{tag:02x}",
                            actual=f"tag 0x{self.tag:02x}")
        return self.value


def _read(data: bytes, offset: int, what: str) -> tuple[Tlv, int]:
    if len(data) - offset < 2:
        raise Malformed(f"{what}: truncated DER element", actual=f"{len(data) - offset} bytes")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise Malformed(f"{what}: high-tag-number form not supported", actual=f"0x{tag:02x}")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(data) - pos < count:
            raise Malformed(f"{what}: bad DER length", actual=data[offset:offset + 6].hex())
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise Malformed(f"{what}: non-minimal DER length", actual=data[offset:pos + 4].hex())
        pos += count
    if length > len(data) - pos:
        raise Malformed(f"{what}: DER value runs past its container",
                        expected=f"<= {len(data) - pos}", actual=str(length))
    return Tlv(tag, data[pos:pos + length]), pos + length


def read_one(data: bytes, what: str) -> Tlv:
    """Exactly one TLV covering ``data``."""
    tlv, end = _read(data, 0, what)
    if end != len(data):
        raise Malformed(f"{what}: trailing bytes after the DER element",
                        expected=str(end), actual=str(len(data)))
    return tlv


def children(data: bytes, what: str) -> list[Tlv]:
    """The consecutive TLVs inside a constructed value, covering it exactly."""
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        if len(out) >= MAX_CHILDREN:
            raise Malformed(f"{what}: too many DER elements", expected=f"<= {MAX_CHILDREN}")
        tlv, pos = _read(data, pos, what)
        out.append(tlv)
    return out


def sequence(tlv: Tlv, what: str, count: int | None = None) -> list[Tlv]:
    """The children of a SEQUENCE (exactly ``count`` of them when given)."""
    items = children(tlv.expect(TAG_SEQUENCE, what), what)
    if count is not None and len(items) != count:
        raise Malformed(f"{what}: wrong number of SEQUENCE elements", expected=str(count),
                        actual=str(len(items)))
    return items


def uint(tlv: Tlv, what: str, tag: int = TAG_INTEGER) -> int:
    """A non-negative minimal INTEGER (or ENUMERATED with ``tag``) up to ``MAX_UINT``."""
    body = tlv.expect(tag, what)
    if not body:
        raise Malformed(f"{what}: empty INTEGER")
    if len(body) > 1 and ((body[0] == 0 and body[1] < 0x80)
                          or (body[0] == 0xFF and body[1] >= 0x80)):
        raise Malformed(f"{what}: non-minimal INTEGER", expected="minimal DER",
                        actual=body.hex())
    value = int.from_bytes(body, "big", signed=True)
    if not 0 <= value <= MAX_UINT:
        raise Malformed(f"{what}: INTEGER out of range", expected=f"0..{MAX_UINT}",
                        actual=str(value))
    return value


def boolean(tlv: Tlv, what: str) -> bool:
    """A DER BOOLEAN (0x00 or 0xFF)."""
    body = tlv.expect(TAG_BOOLEAN, what)
    if body not in (b"\x00", b"\xff"):
        raise Malformed(f"{what}: not a DER BOOLEAN", expected="00 or ff", actual=body.hex())
    return body == b"\xff"


def octets(tlv: Tlv, what: str, size: int | None = None) -> bytes:
    """An OCTET STRING (exactly ``size`` bytes when given)."""
    body = tlv.expect(TAG_OCTET_STRING, what)
    if size is not None and len(body) != size:
        raise Malformed(f"{what}: wrong OCTET STRING size", expected=str(size),
                        actual=str(len(body)))
    return body


def oid(tlv: Tlv, what: str) -> str:
    """An OBJECT IDENTIFIER in dotted form."""
    body = tlv.expect(TAG_OID, what)
    if not body or body[-1] & 0x80:
        raise Malformed(f"{what}: OID is empty or unterminated", actual=body.hex())
    arcs: list[int] = []
    value = 0
    start = True
    for byte in body:
        if start and byte == 0x80:
            raise Malformed(f"{what}: non-canonical OID arc", actual=body.hex())
        value = (value << 7) | (byte & 0x7F)
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


# --- writing -----------------------------------------------------------------------------------

def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, value: bytes) -> bytes:
    """One DER element."""
    return bytes([tag]) + _length(len(value)) + value


def der_oid(dotted: str) -> bytes:
    """A DER OBJECT IDENTIFIER."""
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return der_tlv(TAG_OID, bytes(body))


def der_uint(value: int, tag: int = TAG_INTEGER) -> bytes:
    """A minimal non-negative DER INTEGER (or ENUMERATED with ``tag`` 0x0A)."""
    return der_tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_ia5(text: str) -> bytes:
    """A DER IA5String."""
    return der_tlv(TAG_IA5STRING, text.encode("ascii"))


def der_octet_string(data: bytes) -> bytes:
    """A DER OCTET STRING."""
    return der_tlv(TAG_OCTET_STRING, data)
