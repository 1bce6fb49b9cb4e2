"""TPM 2.0 quote structures (evidence-formats.md sections 5.1-5.3), big-endian, in construct:
TPMS_ATTEST with its quote info (TPML_PCR_SELECTION + pcrDigest) and TPMT_SIGNATURE.

Invariants:
- Parsers raise only ``Malformed``, whatever the bytes: sizes are bounded (``MAX_ATTEST``,
  ``MAX_SIGNATURE``), every TPM2B length is checked against the bytes present, nothing may
  follow the structure, and a PCR selection names at most ``MAX_SELECT_BYTES`` bytes per bank.
- ``parse_attest`` reads the generic TPMS_ATTEST header and keeps ``attested`` raw; the magic
  and type are reported, not judged (a foreign magic or type signed by the AK is a signature
  question for the verifier, hostile-evidence row 22). ``parse_quote_info`` reads the quote
  arm.
- Builders are the exact inverses (the simulator and tests use them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import construct as c

from keybroker.errors import Malformed
from keybroker.evidence.content import refuse_foreign

MAX_ATTEST = 4096
MAX_SIGNATURE = 1024
MAX_SELECT_BYTES = 8  # 64 PCRs; a PC Client TPM has 24 (3 bytes)
MAX_BANKS = 8
TPM_GENERATED = 0xFF544347
ST_ATTEST_QUOTE = 0x8018
ALG_RSASSA = 0x0014
ALG_RSAPSS = 0x0016
ALG_ECDSA = 0x0018
ALG_NULL = 0x0010

TPM2B = c.Prefixed(c.Int16ub, c.GreedyBytes)
_ATTEST = c.Struct(
    "magic" / c.Int32ub,
    "type" / c.Int16ub,
    "qualified_signer" / TPM2B,
    "extra_data" / TPM2B,
    "clock" / c.Int64ub,
    "reset_count" / c.Int32ub,
    "restart_count" / c.Int32ub,
    "safe" / c.Int8ub,
    "firmware_version" / c.Int64ub,
    "attested" / c.GreedyBytes,
)
_PCR_SELECTION = c.Struct("hash" / c.Int16ub, "select" / c.Prefixed(c.Int8ub, c.GreedyBytes))
_QUOTE_INFO = c.Struct(
    "pcr_select" / c.PrefixedArray(c.Int32ub, _PCR_SELECTION),
    "pcr_digest" / TPM2B,
    c.Terminated,
)
_SIGNATURE = c.Struct(
    "sig_alg" / c.Int16ub,
    "hash" / c.Int16ub,
    "first" / TPM2B,  # RSA: the signature; ECDSA: r
    "second" / c.If(c.this.sig_alg == ALG_ECDSA, TPM2B),  # ECDSA: s
    c.Terminated,
)


@dataclass(frozen=True)
class PcrSelection:
    """One bank of a TPML_PCR_SELECTION: its hash algorithm and the PCRs it selects."""

    hash_alg: int
    select: bytes  # the bitmap as sent (byte i, bit j: PCR 8i + j)

    @property
    def pcrs(self) -> tuple[int, ...]:
        """The selected PCR indexes, ascending."""
        return tuple(8 * i + bit for i, byte in enumerate(self.select) for bit in range(8)
                     if (byte >> bit) & 1)

    @classmethod
    def of(cls, hash_alg: int, pcrs: set[int] | frozenset[int] | tuple[int, ...]) -> PcrSelection:
        """The selection of ``pcrs`` in a bitmap of at least three bytes."""
        size = max(3, (max(pcrs, default=0) // 8) + 1)
        bitmap = bytearray(size)
        for pcr in pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        return cls(hash_alg, bytes(bitmap))


@dataclass(frozen=True)
class Attest:
    """A TPMS_ATTEST (the signed bytes are ``raw``); ``attested`` is the type's arm, raw."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: int
    firmware_version: int
    attested: bytes
    raw: bytes


@dataclass(frozen=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO: the banks and PCRs quoted and the digest over their values."""

    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True)
class TpmSignature:
    """A TPMT_SIGNATURE of the RSASSA, RSAPSS or ECDSA scheme."""

    sig_alg: int
    hash_alg: int
    signature: bytes  # RSA: the signature; ECDSA: r
    s: bytes = b""  # ECDSA only


def _parse(layout: c.Construct[Any, Any], raw: bytes, what: str) -> Any:
    try:
        return layout.parse(raw)
    except (c.ConstructError, ValueError, OverflowError) as exc:
        raise Malformed(f"{what} does not parse (a length field exceeds the bytes present, or "
                        "bytes follow the structure)", expected=f"a well-formed {what}",
                        actual=f"{len(raw)} bytes") from exc


def parse_attest(raw: bytes) -> Attest:
    """The TPMS_ATTEST header; ``Malformed`` if it is not one (module invariants)."""
    raw = bytes(raw)
    if not 0 < len(raw) <= MAX_ATTEST:
        raise Malformed("TPMS_ATTEST size out of range", expected=f"1..{MAX_ATTEST} bytes",
                        actual=f"{len(raw)} bytes")
    if int.from_bytes(raw[:4], "big") != TPM_GENERATED:
        refuse_foreign(raw, "TPMS_ATTEST bytes (TPM2_Quote output)")
    f = _parse(_ATTEST, raw, "TPMS_ATTEST")
    return Attest(magic=f.magic, type=f.type, qualified_signer=f.qualified_signer,
                  extra_data=f.extra_data, clock=f.clock, reset_count=f.reset_count,
                  restart_count=f.restart_count, safe=f.safe,
                  firmware_version=f.firmware_version, attested=f.attested, raw=raw)


def parse_quote_info(attested: bytes) -> QuoteInfo:
    """The quote arm of a TPMS_ATTEST."""
    f = _parse(_QUOTE_INFO, attested, "TPMS_QUOTE_INFO")
    if not 1 <= len(f.pcr_select) <= MAX_BANKS:
        raise Malformed("quote selects no bank or too many", expected=f"1..{MAX_BANKS} banks",
                        actual=str(len(f.pcr_select)))
    selections = []
    for sel in f.pcr_select:
        if len(sel.select) > MAX_SELECT_BYTES:
            raise Malformed("PCR selection bitmap too long",
                            expected=f"<= {MAX_SELECT_BYTES} bytes", actual=str(len(sel.select)))
        selections.append(PcrSelection(sel.hash, sel.select))
    return QuoteInfo(tuple(selections), f.pcr_digest)


def parse_signature(raw: bytes) -> TpmSignature:
    """A TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA); other schemes are ``Malformed``."""
    raw = bytes(raw)
    if not 4 <= len(raw) <= MAX_SIGNATURE:
        raise Malformed("TPMT_SIGNATURE size out of range",
                        expected=f"4..{MAX_SIGNATURE} bytes", actual=f"{len(raw)} bytes")
    alg = int.from_bytes(raw[:2], "big")
    if alg not in (ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA):
        raise Malformed("unsupported TPM signature scheme",
                        expected="RSASSA (0x0014), RSAPSS (0x0016) or ECDSA (0x0018)",
                        actual=f"{alg:#06x}")
    f = _parse(_SIGNATURE, raw, "TPMT_SIGNATURE")
    return TpmSignature(f.sig_alg, f.hash, f.first, f.second or b"")


def build_attest(attest: Attest) -> bytes:
    """Serialise a TPMS_ATTEST (``raw`` is ignored)."""
    return bytes(_ATTEST.build({k: getattr(attest, k) for k in (
        "magic", "type", "qualified_signer", "extra_data", "clock", "reset_count",
        "restart_count", "safe", "firmware_version", "attested")}))


def build_quote_info(info: QuoteInfo) -> bytes:
    """Serialise a TPMS_QUOTE_INFO."""
    return bytes(_QUOTE_INFO.build({
        "pcr_select": [{"hash": s.hash_alg, "select": s.select} for s in info.selections],
        "pcr_digest": info.pcr_digest}))


def build_signature(sig: TpmSignature) -> bytes:
    """Serialise a TPMT_SIGNATURE."""
    return bytes(_SIGNATURE.build({"sig_alg": sig.sig_alg, "hash": sig.hash_alg,
                                   "first": sig.signature,
                                   "second": sig.s if sig.sig_alg == ALG_ECDSA else None}))
