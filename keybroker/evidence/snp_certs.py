"""AMD SEV-SNP certificate formats: the GHCB extended-report certificate table and the
VCEK/VLEK X.509 extensions (evidence-formats.md sections 1.8 and 1.11).

Invariants:
- ``parse_cert_table`` raises only ``Malformed``: the table ends with an all-zero entry within
  ``MAX_TABLE_ENTRIES`` entries; every entry points past the table (terminator included) and
  inside the buffer; GUIDs are read in RFC 4122 (big-endian) byte order and are unique.
  ``build_cert_table`` is its inverse for contiguous tables.
- AMD extensions are decoded strictly: SPLs and structVersion are canonical non-negative DER
  INTEGERs (0..255), productName/csp_id are DER IA5Strings, hwID is 64 raw bytes (8 for the
  Turin layout, structVersion 1) or the same wrapped in a DER OCTET STRING. Anything else
  raises ``ChainUntrusted`` (the certificate cannot be matched against a report).
- Each SPL extension maps to exactly one byte of the 8-byte TCB_VERSION of its layout, so
  comparing a certificate with REPORTED_TCB compares every byte the certificate states.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import construct as c
from cryptography import x509

from keybroker.errors import ChainUntrusted, Malformed
from keybroker.evidence import der

# --- GHCB certificate table -------------------------------------------------------------------

GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # ASK, also used for the ASVK
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")

ENTRY_SIZE = 24
MAX_TABLE_ENTRIES = 64
_ZERO_GUID = bytes(16)

CERT_ENTRY = c.Struct("guid" / c.Bytes(16), "offset" / c.Int32ul, "length" / c.Int32ul)
_TABLE = c.RepeatUntil(lambda entry, entries, _ctx: entry["guid"] == _ZERO_GUID
                       or len(entries) > MAX_TABLE_ENTRIES, CERT_ENTRY)


@dataclass(frozen=True)
class CertTable:
    """Parsed certificate table: (GUID, data) in table order."""

    entries: tuple[tuple[uuid.UUID, bytes], ...] = ()

    def get(self, guid: uuid.UUID) -> bytes | None:
        """The data of the entry with ``guid``, or None."""
        for entry_guid, data in self.entries:
            if entry_guid == guid:
                return data
        return None


def parse_cert_table(raw: bytes) -> CertTable:
    """Parse a GHCB certificate table (empty input = no table); raises only ``Malformed``."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise Malformed("certificate table must be bytes", actual=type(raw).__name__)
    raw = bytes(raw)
    if not raw:
        return CertTable()
    try:
        parsed = _TABLE.parse(raw)
    except c.ConstructError as exc:
        raise Malformed("certificate table has no terminating all-zero entry",
                        expected="24-byte entries ending with a zero GUID",
                        actual=f"{len(raw)} bytes") from exc
    terminator = parsed[-1]
    if terminator.guid != _ZERO_GUID:
        raise Malformed("certificate table has too many entries",
                        expected=f"at most {MAX_TABLE_ENTRIES}", actual="more")
    if terminator.offset or terminator.length:
        raise Malformed("certificate table terminator is not all zero", expected="0, 0",
                        actual=f"{terminator.offset}, {terminator.length}")
    table_size = ENTRY_SIZE * len(parsed)
    entries: list[tuple[uuid.UUID, bytes]] = []
    for entry in parsed[:-1]:
        guid = uuid.UUID(bytes=entry.guid)
        if entry.length == 0:
            raise Malformed("certificate table entry is empty", actual=str(guid))
        if entry.offset < table_size or entry.offset + entry.length > len(raw):
            raise Malformed("certificate table entry points outside the certificate data",
                            expected=f"{table_size} <= offset, offset + length <= {len(raw)}",
                            actual=f"offset={entry.offset} length={entry.length} ({guid})")
        if any(guid == seen for seen, _ in entries):
            raise Malformed("duplicate GUID in the certificate table", actual=str(guid))
        entries.append((guid, raw[entry.offset:entry.offset + entry.length]))
    return CertTable(tuple(entries))


def build_cert_table(entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """Serialize entries as a contiguous table (data in entry order after the terminator)."""
    if len(entries) > MAX_TABLE_ENTRIES:
        raise Malformed("too many certificate table entries", expected=f"<= {MAX_TABLE_ENTRIES}",
                        actual=str(len(entries)))
    offset = ENTRY_SIZE * (len(entries) + 1)
    header: list[dict[str, Any] | None] = []
    for guid, data in entries:
        if not data or guid.bytes == _ZERO_GUID:
            raise Malformed("certificate table entries need a GUID and data")
        header.append({"guid": guid.bytes, "offset": offset, "length": len(data)})
        offset += len(data)
    header.append({"guid": _ZERO_GUID, "offset": 0, "length": 0})
    built: bytes = _TABLE.build(header)
    return built + b"".join(data for _, data in entries)


# --- AMD VCEK/VLEK extensions ------------------------------------------------------------------

AMD_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{AMD_ARC}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{AMD_ARC}.2")
OID_HW_ID = x509.ObjectIdentifier(f"{AMD_ARC}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{AMD_ARC}.5")
SPL_ARC = f"{AMD_ARC}.3."
SPL_NAMES = {1: "blSPL", 2: "teeSPL", 3: "snpSPL", 4: "spl_4", 5: "spl_5", 6: "spl_6",
             7: "spl_7", 8: "ucodeSPL", 9: "fmcSPL"}

# SPL arc -> byte of TCB_VERSION. Milan/Genoa: bl, tee, spl_4..7, snp, ucode.
# Turin (structVersion 1): fmc, bl, tee, snp, spl_5..7, ucode (no spl_4).
SPL_BYTES_LEGACY = {1: 0, 2: 1, 4: 2, 5: 3, 6: 4, 7: 5, 3: 6, 8: 7}
SPL_BYTES_TURIN = {9: 0, 1: 1, 2: 2, 3: 3, 5: 4, 6: 5, 7: 6, 8: 7}
_REQUIRED_LEGACY = frozenset({1, 2, 3, 8})
_REQUIRED_TURIN = frozenset({1, 2, 3, 8, 9})

def _der_body(raw: bytes, tag: int, what: str) -> bytes:
    """The body of exactly one definite-length, minimally encoded TLV with ``tag``."""
    if len(raw) < 2 or raw[0] != tag:
        raise ChainUntrusted(f"{what}: wrong DER type", expected=f"tag 0x{tag:02x}",
                             actual=raw[:2].hex())
    first = raw[1]
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(raw) < 2 + count:
            raise ChainUntrusted(f"{what}: bad DER length", actual=raw[:6].hex())
        length = int.from_bytes(raw[2:2 + count], "big")
        start = 2 + count
        if length < 0x80 or raw[2] == 0:
            raise ChainUntrusted(f"{what}: non-minimal DER length", actual=raw[:6].hex())
    if start + length != len(raw):
        raise ChainUntrusted(f"{what}: DER length does not cover the value exactly",
                             expected=str(len(raw) - start), actual=str(length))
    return raw[start:]


def decode_der_small_integer(raw: bytes, what: str) -> int:
    """A canonical DER INTEGER in 0..255 (SPLs, structVersion)."""
    body = _der_body(raw, der.TAG_INTEGER, what)
    if not body:
        raise ChainUntrusted(f"{what}: empty INTEGER")
    redundant_zero = body[0] == 0 and len(body) > 1 and body[1] < 0x80
    redundant_ones = body[0] == 0xFF and len(body) > 1 and body[1] >= 0x80
    if redundant_zero or redundant_ones:
        raise ChainUntrusted(f"{what}: non-canonical INTEGER encoding",
                             expected="minimal DER", actual=raw.hex())
    value = int.from_bytes(body, "big", signed=True)
    if not 0 <= value <= 0xFF:
        raise ChainUntrusted(f"{what}: value out of range", expected="0..255", actual=str(value))
    return value


def _decode_ia5(raw: bytes, what: str) -> str:
    body = _der_body(raw, der.TAG_IA5STRING, what)
    if any(b > 0x7F for b in body):
        raise ChainUntrusted(f"{what}: not an IA5String", actual=body.hex())
    return body.decode("ascii")


def _decode_hw_id(raw: bytes) -> bytes:
    if len(raw) in (8, 64):
        return raw  # as AMD issues it: raw bytes, no OCTET STRING tag
    if len(raw) in (10, 66):
        body = _der_body(raw, der.TAG_OCTET_STRING, "hwID")
        if len(body) in (8, 64):
            return body
    raise ChainUntrusted("hwID extension has an unexpected size",
                         expected="64 or 8 bytes (optionally as OCTET STRING)",
                         actual=f"{len(raw)} bytes")


@dataclass(frozen=True)
class AmdExtensions:
    """Decoded AMD extensions of a VCEK or VLEK (absent extensions are None / missing)."""

    struct_version: int | None
    product_name: str | None
    spls: Mapping[int, int]
    hw_id: bytes | None
    csp_id: str | None

    @property
    def product_line(self) -> str:
        """productName without the stepping ("Milan-B0" -> "Milan"); "" when absent."""
        return (self.product_name or "").split("-", 1)[0]

    @property
    def turin_layout(self) -> bool:
        """structVersion 1: fmcSPL, 8-byte hwID, no spl_4."""
        return self.struct_version == 1

    def spl_mismatches(self, tcb_raw: bytes) -> list[str]:
        """Differences between the certificate's SPLs and an 8-byte TCB_VERSION, as
        ``"<name>: certificate=<n> report=<m>"``; missing or foreign SPLs are differences too."""
        layout = SPL_BYTES_TURIN if self.turin_layout else SPL_BYTES_LEGACY
        required = _REQUIRED_TURIN if self.turin_layout else _REQUIRED_LEGACY
        out = [f"{SPL_NAMES[arc]}: missing" for arc in sorted(required - self.spls.keys())]
        for arc, value in sorted(self.spls.items()):
            if arc not in layout:
                out.append(f"{SPL_NAMES.get(arc, str(arc))}: not part of this layout")
            elif value != tcb_raw[layout[arc]]:
                out.append(f"{SPL_NAMES[arc]}: certificate={value} report={tcb_raw[layout[arc]]}")
        return out


def decode_amd_extensions(cert: x509.Certificate) -> AmdExtensions:
    """Decode the 1.3.6.1.4.1.3704.1.x extensions; raises ``ChainUntrusted`` on bad encodings."""
    try:
        extensions = list(cert.extensions)
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ChainUntrusted(f"certificate extensions do not parse: {exc}") from exc
    struct_version: int | None = None
    product_name: str | None = None
    hw_id: bytes | None = None
    csp_id: str | None = None
    spls: dict[int, int] = {}
    for ext in extensions:
        oid = ext.oid.dotted_string
        if not oid.startswith(AMD_ARC + "."):
            continue
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            continue
        raw = value.value
        if ext.oid == OID_STRUCT_VERSION:
            struct_version = decode_der_small_integer(raw, "structVersion")
        elif ext.oid == OID_PRODUCT_NAME:
            product_name = _decode_ia5(raw, "productName")
        elif ext.oid == OID_HW_ID:
            hw_id = _decode_hw_id(raw)
        elif ext.oid == OID_CSP_ID:
            csp_id = _decode_ia5(raw, "csp_id")
        elif oid.startswith(SPL_ARC) and oid[len(SPL_ARC):].isdigit():
            arc = int(oid[len(SPL_ARC):])
            if arc not in SPL_NAMES:
                raise ChainUntrusted("unknown SPL extension", actual=oid)
            spls[arc] = decode_der_small_integer(raw, SPL_NAMES[arc])
    return AmdExtensions(struct_version=struct_version, product_name=product_name, spls=spls,
                         hw_id=hw_id, csp_id=csp_id)
