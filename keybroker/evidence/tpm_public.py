"""TPM 2.0 public areas (evidence-formats.md section 5.4): TPMT_PUBLIC for RSA and ECC keys,
in construct, big-endian; the key it holds, its object attributes and its Name.

Invariants:
- ``parse_public`` accepts a TPMT_PUBLIC or a TPM2B_PUBLIC (size-prefixed) and raises only
  ``Malformed``: unknown key types, symmetric or scheme algorithms with unknown parameters,
  curves other than P-256/P-384/P-521, RSA keys below 2048 bits, lengths past the bytes
  present and trailing bytes are all refused.
- ``name`` is nameAlg || H_nameAlg(TPMT_PUBLIC bytes), computed over the exact bytes given.
- ``build_public`` is the exact inverse of the parser (the simulator and tests use it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import construct as c
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.errors import Malformed
from keybroker.evidence.tcg_log import HASH_NAMES

ALG_RSA = 0x0001
ALG_ECC = 0x0023
ALG_NULL = 0x0010
ALG_ECDAA = 0x001A
HASHES = HASH_NAMES
CURVES: dict[int, ec.EllipticCurve] = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1(),
                                       0x0005: ec.SECP521R1()}
MAX_PUBLIC = 1024
# TPMA_OBJECT bits
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN = 1 << 18

_TPM2B = c.Prefixed(c.Int16ub, c.GreedyBytes)
_SYMMETRIC = c.Struct(
    "alg" / c.Int16ub,
    "details" / c.If(c.this.alg != ALG_NULL, c.Struct("key_bits" / c.Int16ub,
                                                      "mode" / c.Int16ub)),
)
_SCHEME = c.Struct(
    "alg" / c.Int16ub,
    "hash" / c.If(c.this.alg != ALG_NULL, c.Int16ub),
    "count" / c.If(c.this.alg == ALG_ECDAA, c.Int16ub),
)
_RSA_PARMS = c.Struct("symmetric" / _SYMMETRIC, "scheme" / _SCHEME,
                      "key_bits" / c.Int16ub, "exponent" / c.Int32ub)
_ECC_PARMS = c.Struct("symmetric" / _SYMMETRIC, "scheme" / _SCHEME, "curve" / c.Int16ub,
                      "kdf" / c.Struct("alg" / c.Int16ub,
                                       "hash" / c.If(c.this.alg != ALG_NULL, c.Int16ub)))
_PUBLIC = c.Struct(
    "type" / c.Int16ub,
    "name_alg" / c.Int16ub,
    "attributes" / c.Int32ub,
    "auth_policy" / _TPM2B,
    "parameters" / c.Switch(c.this.type, {ALG_RSA: _RSA_PARMS, ALG_ECC: _ECC_PARMS}),
    "unique" / c.Switch(c.this.type, {ALG_RSA: _TPM2B,
                                      ALG_ECC: c.Struct("x" / _TPM2B, "y" / _TPM2B)}),
    c.Terminated,
)


@dataclass(frozen=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC; ``raw`` holds its exact bytes (without a TPM2B prefix)."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    scheme: int  # ALG_NULL when the key leaves the scheme to the command
    scheme_hash: int | None
    key_bits: int  # RSA modulus bits; ECC: the curve's size
    exponent: int  # RSA only (0 means 65537)
    curve: int  # ECC only
    unique: bytes  # RSA: the modulus; ECC: x || y (each of the curve's size)
    raw: bytes
    symmetric: int = ALG_NULL
    kdf: int = ALG_NULL

    @property
    def name(self) -> bytes:
        """The TPM Name: nameAlg (u16 BE) || H_nameAlg(TPMT_PUBLIC)."""
        return self.name_alg.to_bytes(2, "big") + hashlib.new(
            HASHES[self.name_alg], self.raw).digest()

    def has(self, *bits: int) -> bool:
        """Whether every TPMA_OBJECT bit in ``bits`` is set."""
        return all(self.attributes & bit for bit in bits)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a cryptography object."""
        if self.type == ALG_RSA:
            return rsa.RSAPublicNumbers(self.exponent or 65537,
                                        int.from_bytes(self.unique, "big")).public_key()
        size = len(self.unique) // 2
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(self.unique[:size], "big"), int.from_bytes(self.unique[size:], "big"),
            CURVES[self.curve]).public_key()


def _fail(reason: str, expected: str, actual: str) -> Malformed:
    return Malformed(f"TPMT_PUBLIC: {reason}", expected=expected, actual=actual)


def parse_public(raw: bytes) -> TpmPublic:
    """A TPMT_PUBLIC or TPM2B_PUBLIC (module invariants)."""
    raw = bytes(raw)
    if not 8 <= len(raw) <= MAX_PUBLIC:
        raise _fail("size out of range", f"8..{MAX_PUBLIC} bytes", f"{len(raw)} bytes")
    if int.from_bytes(raw[:2], "big") == len(raw) - 2:
        raw = raw[2:]  # a TPM2B_PUBLIC
    key_type, name_alg = int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:4], "big")
    if key_type not in (ALG_RSA, ALG_ECC):
        raise _fail("unsupported key type", "RSA (0x0001) or ECC (0x0023)", f"{key_type:#06x}")
    if name_alg not in HASHES:
        raise _fail("unsupported name algorithm", "SHA-1/256/384/512", f"{name_alg:#06x}")
    try:
        f = _PUBLIC.parse(raw)
    except (c.ConstructError, ValueError, OverflowError) as exc:
        raise _fail("does not parse (a length field exceeds the bytes present, or bytes "
                    "follow it)", "a well-formed TPMT_PUBLIC", f"{len(raw)} bytes") from exc
    p = f.parameters
    scheme_hash = p.scheme.hash
    if scheme_hash is not None and scheme_hash not in HASHES:
        raise _fail("unsupported scheme hash", "SHA-1/256/384/512", f"{scheme_hash:#06x}")
    if key_type == ALG_RSA:
        bits = len(f.unique) * 8
        if p.key_bits != bits or bits < 2048:
            raise _fail("RSA modulus size", "keyBits equal to the modulus, >= 2048",
                        f"keyBits {p.key_bits}, modulus {bits} bits")
        return TpmPublic(key_type, name_alg, f.attributes, f.auth_policy, p.scheme.alg,
                         scheme_hash, bits, p.exponent, 0, f.unique, raw, p.symmetric.alg)
    curve = CURVES.get(p.curve)
    size = (curve.key_size + 7) // 8 if curve else 0
    if curve is None or len(f.unique.x) != size or len(f.unique.y) != size:
        raise _fail("unsupported curve or point size", "P-256/P-384/P-521 with full-size x, y",
                    f"curve {p.curve:#06x}, x {len(f.unique.x)} y {len(f.unique.y)} bytes")
    return TpmPublic(key_type, name_alg, f.attributes, f.auth_policy, p.scheme.alg,
                     scheme_hash, curve.key_size, 0, p.curve, f.unique.x + f.unique.y, raw,
                     p.symmetric.alg, p.kdf.alg)


def build_public(public: TpmPublic) -> bytes:
    """Serialise ``public`` (its fields, not ``raw``) as a TPMT_PUBLIC."""
    symmetric: dict[str, Any] = {"alg": public.symmetric, "details": None}
    if public.symmetric != ALG_NULL:
        symmetric["details"] = {"key_bits": 128, "mode": 0x0043}
    scheme = {"alg": public.scheme, "hash": public.scheme_hash, "count": None}
    if public.type == ALG_RSA:
        parameters: dict[str, Any] = {"symmetric": symmetric, "scheme": scheme,
                                      "key_bits": public.key_bits, "exponent": public.exponent}
        unique: Any = public.unique
    else:
        parameters = {"symmetric": symmetric, "scheme": scheme, "curve": public.curve,
                      "kdf": {"alg": public.kdf, "hash": None}}
        half = len(public.unique) // 2
        unique = {"x": public.unique[:half], "y": public.unique[half:]}
    return bytes(_PUBLIC.build({"type": public.type, "name_alg": public.name_alg,
                                "attributes": public.attributes,
                                "auth_policy": public.auth_policy, "parameters": parameters,
                                "unique": unique}))


def public_from_key(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> TpmPublic:
    """A TPMT_PUBLIC holding ``key`` with no scheme restriction and no attributes, for keys
    given outside a TPM structure (PEM): its Name identifies nothing in a TPM."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        size = (key.key_size + 7) // 8
        draft = TpmPublic(ALG_RSA, 0x000B, 0, b"", ALG_NULL, None, key.key_size,
                          0 if numbers.e == 65537 else numbers.e, 0,
                          numbers.n.to_bytes(size, "big"), b"")
    else:
        curve = next((cid for cid, c in CURVES.items() if c.name == key.curve.name), None)
        if curve is None:
            raise _fail("unsupported curve", "P-256/P-384/P-521", key.curve.name)
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        draft = TpmPublic(ALG_ECC, 0x000B, 0, b"", ALG_NULL, None, key.curve.key_size, 0,
                          curve, point.x.to_bytes(size, "big") + point.y.to_bytes(size, "big"),
                          b"")
    return parse_public(build_public(draft))
