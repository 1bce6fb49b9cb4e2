"""Intel PCS signed documents as served (evidence-formats.md section 2.8): a JSON body
``{<member>, "signature"}`` whose signature covers the exact bytes of the member, and the
RFC 3339 dates PCS writes.

Invariants:
- ``split_signed_body`` walks the body member by member at the top level only, so a nested or
  string occurrence of the name can never be taken; the body must be exactly
  {<member>, "signature"} with unique names, UTF-8, at most ``MAX_BODY`` bytes. The member's
  bytes are returned exactly as served (never re-serialized); the signature is 64 bytes r||s.
- Nothing here verifies a signature or trusts a field: the verifier checks the signature over
  ``SignedMember.raw`` before it parses it. Every failure is ``Malformed``.
- ``parse_date`` accepts only "YYYY-MM-DDTHH:MM:SSZ"-style UTC dates ("Z" suffix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from keybroker.errors import Malformed

MAX_BODY = 1024 * 1024
_WS = " \t\r\n"


@dataclass(frozen=True)
class SignedMember:
    """The exact bytes of a signed JSON member and its 64-byte r||s signature."""

    raw: bytes
    signature: bytes

    @classmethod
    def from_hex(cls, raw: bytes, signature_hex: str) -> SignedMember:
        """From member bytes and the hex signature (how some collateral bundles store them)."""
        try:
            sig = bytes.fromhex(signature_hex)
        except ValueError as exc:
            raise Malformed("collateral signature is not hex", actual=signature_hex[:40]) from exc
        if len(sig) != 64:
            raise Malformed("collateral signature is not 64 bytes (r||s)", expected="64",
                            actual=str(len(sig)))
        return cls(raw=bytes(raw), signature=sig)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _scan_members(text: str) -> dict[str, tuple[int, int]]:
    """Walk one JSON object's top level; raises ``ValueError`` on anything else."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    i = _skip(text, 0)
    if text[i:i + 1] != "{":
        raise ValueError("not an object")
    i = _skip(text, i + 1)
    if text[i:i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise ValueError("member name expected")
            key, i = decoder.raw_decode(text, i)
            i = _skip(text, i)
            if text[i:i + 1] != ":":
                raise ValueError("':' expected")
            start = _skip(text, i + 1)
            _, end = decoder.raw_decode(text, start)
            if key in spans:
                raise ValueError(f"duplicate member {key!r}")
            spans[key] = (start, end)
            i = _skip(text, end)
            if text[i:i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i:i + 1] != "}":
                raise ValueError("',' or '}' expected")
            i += 1
            break
    if _skip(text, i) != len(text):
        raise ValueError("trailing data")
    return spans


def top_level_members(text: str) -> dict[str, tuple[int, int]]:
    """(start, end) character spans of every top-level member value of a JSON object text;
    ``Malformed`` on anything that is not one object with unique member names."""
    try:
        return _scan_members(text)
    except (ValueError, RecursionError) as exc:
        raise Malformed("collateral body is not one JSON object", actual=str(exc)[:80]) from exc


def split_signed_body(body: bytes, member: str) -> SignedMember:
    """The raw ``member`` bytes and signature of a PCS response body {member, "signature"}."""
    if len(body) > MAX_BODY:
        raise Malformed("collateral body too large", expected=f"<= {MAX_BODY}",
                        actual=str(len(body)))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("collateral body is not UTF-8") from exc
    spans = top_level_members(text)
    if set(spans) != {member, "signature"}:
        raise Malformed("collateral body has the wrong members",
                        expected=f"{member}, signature", actual=", ".join(sorted(spans)))
    sig_start, sig_end = spans["signature"]
    signature = json.loads(text[sig_start:sig_end])
    if not isinstance(signature, str):
        raise Malformed("collateral signature is not a string")
    start, end = spans[member]
    return SignedMember.from_hex(text[start:end].encode("utf-8"), signature)


def parse_date(text: str, what: str) -> datetime:
    """RFC 3339 UTC with a "Z" suffix, as PCS writes it."""
    expected = "YYYY-MM-DDTHH:MM:SSZ"
    if not text.endswith("Z") or "T" not in text:
        raise Malformed(f"{what} is not an RFC 3339 UTC date", expected=expected,
                        actual=text[:40])
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError as exc:
        raise Malformed(f"{what} is not an RFC 3339 UTC date", expected=expected,
                        actual=text[:40]) from exc
    return value.astimezone(UTC)
