"""The Nitro claims view: ``nitro_claims_from_dict``, the exact inverse of
``NitroClaims.as_dict()``, and the sample claims policies are type-checked against.

Invariants:
- ``nitro_claims_from_dict(c.as_dict()) == c``. Input is untrusted: ``verifier.claim_fields``
  rules (every key, no unknown key, no coercion, ``Malformed`` naming the dotted path).
- ``debug`` is derived from the PCRs; a dict whose ``debug`` disagrees with its PCRs is
  refused, never believed.
- ``sample_nitro_claims`` is a realistic, fully populated value (a production enclave with a
  signed image): a type template for CEL conditions, not evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from verifier.claim_fields import U64, ClaimFields, describe
from verifier.nitro.claims import PLATFORM_NITRO, NitroClaims
from verifier.nitro.policy import PCR_LIMIT

_KEYS = frozenset({"platform", "module_id", "timestamp_ms", "pcrs", "debug", "public_key",
                   "user_data", "nonce", "leaf_subject", "leaf_not_after", "insecure_root"})
_HEX_RE = re.compile(r"(?:[0-9a-f]{2}){0,1024}")


def _pcrs(fields: ClaimFields) -> dict[int, bytes]:
    value = fields.raw("pcrs")
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise fields.fail("pcrs", "a map of PCR index to hex", describe(value))
    sub = ClaimFields(value, f"{fields.path}.pcrs", value.keys())
    out: dict[int, bytes] = {}
    for key in value:
        if not key.isdigit() or int(key) >= PCR_LIMIT or str(int(key)) != key:
            raise sub.fail(key, f"PCR index 0..{PCR_LIMIT - 1}", key)
        out[int(key)] = sub.hex_bytes(key, 48)
    return out


def _optional(fields: ClaimFields, key: str) -> bytes | None:
    if fields.is_null(key):
        return None
    return bytes.fromhex(fields.string(key, pattern=_HEX_RE, what="lowercase hex"))


def nitro_claims_from_dict(evidence: Mapping[str, object]) -> NitroClaims:
    """The exact inverse of ``NitroClaims.as_dict()`` (see the module invariants)."""
    f = ClaimFields(evidence, "evidence", _KEYS)
    f.string("platform", choices=(PLATFORM_NITRO,))
    claims = NitroClaims(
        module_id=f.string("module_id"), timestamp_ms=f.integer("timestamp_ms", U64),
        pcrs=_pcrs(f), public_key=_optional(f, "public_key"),
        user_data=_optional(f, "user_data"), nonce=_optional(f, "nonce"),
        leaf_subject=f.string("leaf_subject"), leaf_not_after=f.integer("leaf_not_after", U64),
        insecure=f.boolean("insecure_root"))
    if f.boolean("debug") != claims.debug:
        raise f.fail("debug", f"{claims.debug} (derived from PCR0-2)", evidence.get("debug"))
    return claims


def sample_nitro_claims() -> NitroClaims:
    """Realistic, fully populated claims of a production enclave."""
    pcrs = {i: bytes(48) for i in range(16)}
    pcrs.update({0: bytes.fromhex("f4" * 48), 1: bytes.fromhex("bc" * 48),
                 2: bytes.fromhex("d8" * 48), 3: bytes.fromhex("4a" * 48),
                 4: bytes.fromhex("1f" * 48), 8: bytes.fromhex("87" * 48)})
    return NitroClaims(
        module_id="i-020b6af9246d90e92-enc0183d09086c24190", timestamp_ms=1_665_651_482_136,
        pcrs=pcrs, public_key=bytes.fromhex("04" + "2a" * 32),
        user_data=bytes.fromhex("33" * 64), nonce=bytes.fromhex("55" * 32),
        leaf_subject="i-020b6af9246d90e92-enc0183d09086c24190.us-east-1.aws",
        leaf_not_after=1_665_662_282, insecure=False)
