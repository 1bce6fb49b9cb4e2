"""The Nitro attestation document parser (keybroker.evidence.nitro_document): strict CBOR
(definite lengths, shortest heads, no duplicate keys, no trailing bytes), bounded sizes, the
payload's field rules, and hypothesis properties: build/parse round trip, arbitrary bytes
raise only MALFORMED."""

from __future__ import annotations

import contextlib
import dataclasses

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import VECTORS

from keybroker.errors import Malformed
from keybroker.evidence.nitro_document import (
    MAX_DOCUMENT,
    CoseSign1,
    NitroPayload,
    build_document,
    build_payload,
    decode_document,
    parse_payload,
)

REAL = (VECTORS / "nitro" / "evervault-2022-10-13-nondebug.cbor").read_bytes()
COSE = decode_document(REAL)
PAYLOAD = parse_payload(COSE.payload)


def test_nitro_real_document_round_trips() -> None:
    """The parser and the builders are exact inverses on a real document."""
    assert build_document(COSE) == REAL
    assert build_payload(PAYLOAD) == COSE.payload
    assert (COSE.protected, dict(COSE.unprotected), COSE.tagged) == (
        bytes.fromhex("a1013822"), {}, False)


def test_nitro_tagged_document_is_accepted() -> None:
    """CBOR tag 18 around the same array (as AWS's docs describe it) decodes the same."""
    tagged = build_document(dataclasses.replace(COSE, tagged=True))
    assert tagged[:1] == b"\xd2"
    again = decode_document(tagged)
    assert again.tagged and again.payload == COSE.payload


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "not a Nitro attestation document"),
    (REAL[:-1], "not well-formed CBOR"),  # truncated
    (REAL[:2000], "not well-formed CBOR"),
    (REAL + b"\x00", "strict CBOR"),  # trailing byte
    (b"\x84" + bytes(MAX_DOCUMENT), "not a Nitro attestation document"),  # oversize
    (b"\xd3" + REAL, "not a Nitro attestation document"),  # another tag
    (bytes(cbor2.dumps(cbor2.CBORTag(19, [])))[:1] + REAL, "not a Nitro"),
    (b"\x9f" + REAL[1:] + b"\xff", "not a Nitro attestation document"),  # indefinite array
    (b"\x84\xba\xff\xff\xff\xff", "not well-formed CBOR"),  # a map claiming 2^32 entries
    (bytes(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""]))), "not a COSE_Sign1 array"),
])
def test_nitro_malformed_envelopes(raw: bytes, words: str) -> None:
    """Empty, truncated, trailing data, oversize, other tags, indefinite lengths, lying
    lengths (rows 1, 2, 4, 5): MALFORMED naming what was expected."""
    with pytest.raises(Malformed) as exc:
        decode_document(raw)
    assert words in exc.value.reason


def _with_payload(**changes: object) -> bytes:
    """The real payload map re-encoded with ``changes`` (None removes a key)."""
    doc = dict(cbor2.loads(COSE.payload))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return bytes(cbor2.dumps(doc))


@pytest.mark.parametrize(("changes", "words"), [
    ({"digest": "SHA256"}, "digest is not SHA384"),
    ({"module_id": ""}, "module_id"),
    ({"timestamp": 0}, "timestamp out of range"),
    ({"timestamp": True}, "timestamp out of range"),
    ({"pcrs": {}}, "pcrs out of range"),
    ({"pcrs": {0: bytes(47)}}, "PCR0 is not a SHA-384 value"),
    ({"pcrs": {32: bytes(48)}}, "PCR index out of range"),
    ({"pcrs": {"0": bytes(48)}}, "PCR index out of range"),
    ({"certificate": b""}, "certificate out of range"),
    ({"cabundle": []}, "cabundle out of range"),
    ({"cabundle": [b"x" * 1025]}, "cabundle item out of range"),
    ({"nonce": b"n" * 513}, "nonce out of range"),
    ({"user_data": "text"}, "user_data out of range"),
    ({"public_key": b""}, "public_key out of range"),
    ({"extra": b"smuggled"}, "payload keys are not the NSM's"),
    ({"pcrs": None}, "payload keys are not the NSM's"),
])
def test_nitro_payload_field_rules(changes: dict[str, object], words: str) -> None:
    """Every payload field is type- and length-checked; unknown and missing keys refused."""
    with pytest.raises(Malformed) as exc:
        parse_payload(_with_payload(**changes))
    assert words in exc.value.reason


def test_nitro_null_optional_fields_are_absent() -> None:
    """A null public_key / user_data / nonce (how the NSM encodes an absent one) is None."""
    parsed = parse_payload(_with_payload())
    assert parsed.public_key is None and parsed.user_data is None and parsed.nonce is not None


def test_nitro_duplicate_and_non_minimal_encodings_are_refused() -> None:
    """A duplicated map key, or an integer in a longer head than needed, does not re-encode to
    the same bytes: MALFORMED (the NSM never produces them)."""
    duplicate = b"\xa2\x01\x01\x01\x02"  # {1: 1, 1: 2}
    with pytest.raises(Malformed, match="strict CBOR"):
        parse_payload(duplicate)
    long_head = b"\xa1\x18\x01\x01"  # {1: 1} with the key in a one-byte-extension head
    with pytest.raises(Malformed, match="strict CBOR"):
        parse_payload(long_head)


_BYTES = st.binary(min_size=0, max_size=64)
_PAYLOADS = st.builds(
    NitroPayload,
    module_id=st.text(min_size=1, max_size=40),
    digest=st.just("SHA384"),
    timestamp_ms=st.integers(1, (1 << 64) - 1),
    pcrs=st.dictionaries(st.integers(0, 31), st.binary(min_size=48, max_size=48),
                         min_size=1, max_size=32),
    certificate=st.binary(min_size=1, max_size=1024),
    cabundle=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8).map(tuple),
    public_key=st.none() | st.binary(min_size=1, max_size=64),
    user_data=st.none() | _BYTES,
    nonce=st.none() | _BYTES,
)


@settings(max_examples=200, deadline=None)
@given(_PAYLOADS, st.binary(min_size=96, max_size=96), st.booleans())
def test_nitro_build_parse_round_trip(payload: NitroPayload, signature: bytes,
                                      tagged: bool) -> None:
    """Whatever the builders make, the parsers read back exactly."""
    raw_payload = build_payload(payload)
    assert parse_payload(raw_payload) == payload
    cose = CoseSign1(bytes.fromhex("a1013822"), {1: -35}, {}, raw_payload, signature, tagged)
    assert decode_document(build_document(cose)) == cose


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_nitro_arbitrary_bytes_raise_only_malformed(raw: bytes) -> None:
    """Arbitrary bytes, as a document or as a payload: parsed, or MALFORMED, nothing else."""
    for parse in (decode_document, parse_payload):
        with contextlib.suppress(Malformed):
            parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=16)
                    | st.text(max_size=16),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
                    max_leaves=12))
def test_nitro_arbitrary_cbor_values_raise_only_malformed(value: object) -> None:
    """Well-formed CBOR of any shape in the document or payload position: MALFORMED."""
    encoded = bytes(cbor2.dumps(value))
    for raw in (encoded, b"\x84" + encoded[1:]):
        with contextlib.suppress(Malformed):
            decode_document(raw)
    with contextlib.suppress(Malformed):
        parse_payload(encoded)
