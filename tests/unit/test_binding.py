"""The report_data binding (architecture section 3; hostile-evidence rows 27, 29)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybroker import binding
from keybroker.errors import Category, KeybrokerError

SUITE = "x25519-hkdfsha256-aes256gcm"


def test_layout_matches_the_specification() -> None:
    """report_data is SHA-512 over the domain label and four u16be length-prefixed fields."""
    nonce, pk, init = b"\x01" * 32, b"\x02" * 32, hashlib.sha384(b"init").digest()
    expected = hashlib.sha512(
        b"keybroker/v1/binding\x00"
        + (32).to_bytes(2, "big") + nonce
        + len(SUITE).to_bytes(2, "big") + SUITE.encode()
        + (32).to_bytes(2, "big") + pk
        + (48).to_bytes(2, "big") + init
    ).digest()
    assert binding.report_data(nonce, SUITE, pk, init) == expected
    assert len(expected) == binding.REPORT_DATA_SIZE


def test_boundary_shift_changes_the_binding() -> None:
    """Moving bytes between nonce and key (same concatenation) gives another binding (row 29)."""
    a = binding.report_data(b"nonce-AB", SUITE, b"CD-key", b"")
    b = binding.report_data(b"nonce-", SUITE, b"ABCD-key", b"")
    assert b"nonce-AB" + b"CD-key" == b"nonce-" + b"ABCD-key"
    assert a != b


def test_key_swap_changes_the_binding() -> None:
    """Another agent key under the same nonce gives another binding (row 27)."""
    nonce = b"\x07" * 32
    assert binding.report_data(nonce, SUITE, b"\x01" * 32, b"") != binding.report_data(
        nonce, SUITE, b"\x02" * 32, b"")


def test_init_data_digest() -> None:
    """The init-data digest is SHA-384 of the document, or empty without one."""
    assert binding.init_data_digest(b"") == b""
    assert binding.init_data_digest(b"doc") == hashlib.sha384(b"doc").digest()


def test_oversized_field_is_malformed() -> None:
    """A field longer than a u16 length can express is MALFORMED, not truncated."""
    with pytest.raises(KeybrokerError) as exc:
        binding.report_data(b"x" * 0x10000, SUITE, b"k", b"")
    assert exc.value.category is Category.MALFORMED


@given(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=64),
       st.binary(max_size=64))
def test_distinct_inputs_distinct_bindings(n1: bytes, k1: bytes, n2: bytes, k2: bytes) -> None:
    """Different (nonce, key) pairs never bind alike, whatever their boundaries."""
    if (n1, k1) != (n2, k2):
        assert binding.report_data(n1, SUITE, k1, b"") != binding.report_data(n2, SUITE, k2, b"")


def test_channel_binding_is_a_fifth_length_prefixed_field() -> None:
    """Over mutual TLS the client certificate digest follows as a fifth field; without one the
    input is the four-field form, and the two never coincide (hostile-evidence row 30)."""
    nonce, pk, init, channel = b"\x01" * 32, b"\x02" * 32, b"", b"\x03" * 32
    four = binding.report_data(nonce, SUITE, pk, init)
    five = binding.report_data(nonce, SUITE, pk, init, channel)
    expected = hashlib.sha512(
        b"keybroker/v1/binding\x00"
        + (32).to_bytes(2, "big") + nonce
        + len(SUITE).to_bytes(2, "big") + SUITE.encode()
        + (32).to_bytes(2, "big") + pk
        + (0).to_bytes(2, "big")
        + (32).to_bytes(2, "big") + channel
    ).digest()
    assert five == expected and five != four
    assert binding.report_data(nonce, SUITE, pk, init, b"") == four
    # The channel bytes moved into the init-data field do not give the same binding.
    shifted = (32).to_bytes(2, "big") + channel
    assert binding.report_data(nonce, SUITE, pk, shifted) != five
    assert binding.report_data(nonce, SUITE, pk, init, b"\x04" * 32) != five
