"""HPKE sealing of released secrets (architecture section 4)."""

from __future__ import annotations

import pytest

from keybroker.errors import Category, KeybrokerError
from keybroker.wrapping import AgentKeyPair, Suite, load_public_key, release_info, seal

PUBLIC_KEY_SIZES = {
    Suite.X25519_HKDFSHA256_AES256GCM: 32,
    Suite.P384_HKDFSHA384_AES256GCM: 97,
    Suite.MLKEM768X25519_HKDFSHA256_AES256GCM: 1216,
}


@pytest.mark.parametrize("suite", list(Suite))
def test_seal_open_round_trip(suite: Suite) -> None:
    """Every suite seals to the agent's raw public key and opens with its private key."""
    agent = AgentKeyPair.generate(suite)
    assert len(agent.public_bytes) == PUBLIC_KEY_SIZES[suite]
    info = release_info("k", 3, "challenge-1")
    sealed = seal(suite, load_public_key(suite, agent.public_bytes), b"secret", info)
    assert agent.open(sealed, info) == b"secret"


@pytest.mark.parametrize("suite", list(Suite))
def test_other_key_or_info_cannot_open(suite: Suite) -> None:
    """A sealed secret opens neither with another key nor as another key/version/challenge."""
    agent, other = AgentKeyPair.generate(suite), AgentKeyPair.generate(suite)
    info = release_info("k", 1, "c1")
    sealed = seal(suite, load_public_key(suite, agent.public_bytes), b"secret", info)
    for wrong_key, wrong_info in ((other, info), (agent, release_info("k2", 1, "c1")),
                                  (agent, release_info("k", 2, "c1")),
                                  (agent, release_info("k", 1, "c2"))):
        with pytest.raises(KeybrokerError) as exc:
            wrong_key.open(sealed, wrong_info)
        assert exc.value.category is Category.BINDING


@pytest.mark.parametrize("suite", list(Suite))
def test_wrong_public_key_length_is_malformed(suite: Suite) -> None:
    """A public key of the wrong size for the suite is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        load_public_key(suite, b"\x04" * (PUBLIC_KEY_SIZES[suite] - 1))
    assert exc.value.category is Category.MALFORMED


def test_invalid_p384_point_is_malformed() -> None:
    """Bytes that are not a point on P-384 are MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        load_public_key(Suite.P384_HKDFSHA384_AES256GCM, b"\x04" + b"\x01" * 96)
    assert exc.value.category is Category.MALFORMED


def test_suite_identifiers() -> None:
    """Suite ids and wire numbers map both ways; unknown ones are MALFORMED."""
    for suite in Suite:
        assert Suite.from_id(suite.value) is suite
        assert Suite.from_wire(suite.wire) is suite
    for bad in (lambda: Suite.from_id("aes"), lambda: Suite.from_wire(0)):
        with pytest.raises(KeybrokerError) as exc:
            bad()
        assert exc.value.category is Category.MALFORMED


def test_info_layout() -> None:
    """info = label || key_id || 0x00 || u32be(version) || challenge_id."""
    assert release_info("a/b", 258, "cid") == (
        b"keybroker/v1/release\x00a/b\x00\x00\x00\x01\x02cid")
