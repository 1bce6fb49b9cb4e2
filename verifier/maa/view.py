"""The MAA claims view: ``maa_claims_from_dict``, the exact inverse of ``MaaClaims.as_dict()``,
and the sample claims policies are type-checked against.

Invariants:
- ``maa_claims_from_dict(c.as_dict()) == c`` for every claims value. Input is untrusted:
  ``verifier.claim_fields`` rules (every key, no unknown key, no coercion, ``Malformed`` rule
  ``claims.schema`` naming the dotted path). ``isolation_tee`` is MAA's own JSON object, kept
  as it is (a map or null).
- ``sample_maa_claims`` is a realistic, fully populated value (an SGX token that also carries
  the CVM keys): a type template for CEL conditions, not evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from verifier.claim_fields import U16, U64, ClaimFields, describe
from verifier.maa.claims import PLATFORM_MAA, MaaClaims

_KEYS = frozenset({"platform", "issuer", "kid", "issued_at", "expires_at", "attestation_type",
                   "sgx", "isolation_tee", "secure_boot", "runtime_nonce"})
_SGX_KEYS = frozenset({"mrenclave", "mrsigner", "product_id", "svn", "is_debuggable",
                       "report_data", "runtime_data"})
_HEX_RE = re.compile(r"(?:[0-9a-f]{2}){0,1024}")


def _hex(fields: ClaimFields, key: str) -> bytes:
    return bytes.fromhex(fields.string(key, pattern=_HEX_RE, what="lowercase hex"))


def _optional_bytes(raw: bytes) -> bytes | None:
    return raw or None


def _isolation_tee(fields: ClaimFields) -> dict[str, Any] | None:
    value = fields.raw("isolation_tee")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise fields.fail("isolation_tee", "a map or null", describe(value))
    return dict(value)


def maa_claims_from_dict(evidence: Mapping[str, object]) -> MaaClaims:
    """The exact inverse of ``MaaClaims.as_dict()`` (see the module invariants)."""
    f = ClaimFields(evidence, "evidence", _KEYS)
    f.string("platform", choices=(PLATFORM_MAA,))
    sgx = None if f.is_null("sgx") else f.sub("sgx", _SGX_KEYS)
    secure_boot = None if f.is_null("secure_boot") else f.boolean("secure_boot")
    nonce = None if f.is_null("runtime_nonce") else _hex(f, "runtime_nonce")
    return MaaClaims(
        issuer=f.string("issuer"), kid=f.string("kid"),
        issued_at=f.integer("issued_at", U64), expires_at=f.integer("expires_at", U64),
        attestation_type=f.string("attestation_type"),
        sgx_mrenclave=sgx.hex_bytes("mrenclave", 32) if sgx else None,
        sgx_mrsigner=_optional_bytes(_hex(sgx, "mrsigner")) if sgx else None,
        sgx_product_id=sgx.opt_integer("product_id", U16) if sgx else None,
        sgx_svn=sgx.opt_integer("svn", U16) if sgx else None,
        sgx_debuggable=(None if sgx is None or sgx.is_null("is_debuggable")
                        else sgx.boolean("is_debuggable")),
        sgx_report_data=_optional_bytes(_hex(sgx, "report_data")) if sgx else None,
        sgx_runtime_data=_optional_bytes(_hex(sgx, "runtime_data")) if sgx else None,
        isolation_tee=_isolation_tee(f), secure_boot=secure_boot, runtime_nonce=nonce,
    )


def sample_maa_claims() -> MaaClaims:
    """Realistic, fully populated claims of an SGX token."""
    return MaaClaims(
        issuer="https://sharedeus.eus.attest.azure.net", kid="dRKh+hBcWUfQimSl3Iv6ZhStW3TSOt0T",
        issued_at=1_700_000_000, expires_at=1_700_028_800, attestation_type="sgx",
        sgx_mrenclave=bytes.fromhex("9a" * 32), sgx_mrsigner=bytes.fromhex("79" * 32),
        sgx_product_id=1, sgx_svn=1, sgx_debuggable=False,
        sgx_report_data=bytes.fromhex("33" * 64), sgx_runtime_data=bytes.fromhex("44" * 64),
        isolation_tee={"x-ms-attestation-type": "sevsnpvm",
                       "x-ms-sevsnpvm-launchmeasurement": "5f" * 48},
        secure_boot=True, runtime_nonce=bytes.fromhex("55" * 64),
    )
