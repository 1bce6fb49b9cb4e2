"""HPKE sealing of released secrets (architecture section 4), via cryptography's hpke module.

Invariants:
- Only the three suites of the design exist; anything else is MALFORMED.
- Public keys travel as raw bytes whose exact length is checked per suite:
  X25519 32 bytes; P-384 an uncompressed SEC1 point (97 bytes);
  ML-KEM-768+X25519 the ML-KEM-768 encapsulation key (1184 bytes) followed by X25519 (32).
- ``info`` binds key id, version and challenge id, so a sealed secret cannot be replayed as
  another key or under another challenge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from keybroker.errors import BindingMismatch, Malformed

INFO_LABEL = b"keybroker/v1/release\x00"

_X25519_LEN = 32
_P384_POINT_LEN = 97
_MLKEM768_PK_LEN = 1184


class Suite(enum.Enum):
    """Supported HPKE suites; the value is the ASCII suite id used in the binding."""

    X25519_HKDFSHA256_AES256GCM = "x25519-hkdfsha256-aes256gcm"
    P384_HKDFSHA384_AES256GCM = "p384-hkdfsha384-aes256gcm"
    MLKEM768X25519_HKDFSHA256_AES256GCM = "mlkem768x25519-hkdfsha256-aes256gcm"

    @classmethod
    def from_id(cls, suite_id: str) -> Suite:
        """Look a suite up by its ASCII id; unknown ids are MALFORMED."""
        for suite in cls:
            if suite.value == suite_id:
                return suite
        raise Malformed("unknown HPKE suite", expected=" | ".join(s.value for s in cls),
                        actual=suite_id)

    @property
    def wire(self) -> int:
        """The keybroker.v1.HpkeSuite enum number."""
        return _WIRE[self]

    @classmethod
    def from_wire(cls, number: int) -> Suite:
        """Map a keybroker.v1.HpkeSuite number to a suite; 0 and unknown values are MALFORMED."""
        for suite, value in _WIRE.items():
            if value == number:
                return suite
        raise Malformed("unsupported HPKE suite number", expected="1, 2 or 3", actual=str(number))

    def _hpke(self) -> hpke.Suite:
        if self is Suite.X25519_HKDFSHA256_AES256GCM:
            return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
        if self is Suite.P384_HKDFSHA384_AES256GCM:
            return hpke.Suite(hpke.KEM.P384, hpke.KDF.HKDF_SHA384, hpke.AEAD.AES_256_GCM)
        return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


_WIRE = {
    Suite.X25519_HKDFSHA256_AES256GCM: 1,
    Suite.P384_HKDFSHA384_AES256GCM: 2,
    Suite.MLKEM768X25519_HKDFSHA256_AES256GCM: 3,
}

PublicKey: TypeAlias = (
    x25519.X25519PublicKey | ec.EllipticCurvePublicKey | hpke.MLKEM768X25519PublicKey
)
PrivateKey: TypeAlias = (
    x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey | hpke.MLKEM768X25519PrivateKey
)


@dataclass(frozen=True)
class AgentKeyPair:
    """An ephemeral HPKE key pair held by the agent for one request."""

    suite: Suite
    private_key: PrivateKey
    public_bytes: bytes

    @classmethod
    def generate(cls, suite: Suite) -> AgentKeyPair:
        """Make a fresh key pair for ``suite``."""
        if suite is Suite.X25519_HKDFSHA256_AES256GCM:
            xk = x25519.X25519PrivateKey.generate()
            return cls(suite, xk, xk.public_key().public_bytes_raw())
        if suite is Suite.P384_HKDFSHA384_AES256GCM:
            ek = ec.generate_private_key(ec.SECP384R1())
            raw = ek.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return cls(suite, ek, raw)
        mk = mlkem.MLKEM768PrivateKey.generate()
        xk = x25519.X25519PrivateKey.generate()
        raw = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        return cls(suite, hpke.MLKEM768X25519PrivateKey(mk, xk), raw)

    def open(self, sealed: bytes, info: bytes) -> bytes:
        """Open a sealed secret; a wrong key or info is a BINDING error."""
        try:
            return self.suite._hpke().decrypt(sealed, self.private_key, info=info)
        except (InvalidTag, ValueError) as exc:
            raise BindingMismatch("sealed secret does not open with this key and info") from exc


def load_public_key(suite: Suite, raw: bytes) -> PublicKey:
    """Parse raw public key bytes for ``suite``; wrong lengths or invalid points are MALFORMED."""
    try:
        if suite is Suite.X25519_HKDFSHA256_AES256GCM:
            _expect_len(raw, _X25519_LEN, suite)
            return x25519.X25519PublicKey.from_public_bytes(raw)
        if suite is Suite.P384_HKDFSHA384_AES256GCM:
            _expect_len(raw, _P384_POINT_LEN, suite)
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), raw)
        _expect_len(raw, _MLKEM768_PK_LEN + _X25519_LEN, suite)
        mk = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PK_LEN])
        xk = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PK_LEN:])
        return hpke.MLKEM768X25519PublicKey(mk, xk)
    except ValueError as exc:
        raise Malformed(f"invalid {suite.value} public key: {exc}") from exc


def _expect_len(raw: bytes, size: int, suite: Suite) -> None:
    if len(raw) != size:
        raise Malformed(f"{suite.value} public key has the wrong length",
                        expected=f"{size} bytes", actual=f"{len(raw)} bytes")


def release_info(key_id: str, version: int, challenge_id: str) -> bytes:
    """HPKE info: label || key_id || 0x00 || u32be(version) || challenge_id."""
    return (
        INFO_LABEL
        + key_id.encode("utf-8")
        + b"\x00"
        + version.to_bytes(4, "big")
        + challenge_id.encode("utf-8")
    )


def seal(suite: Suite, public_key: PublicKey, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode seal: returns enc || ciphertext."""
    return suite._hpke().encrypt(plaintext, public_key, info=info)
