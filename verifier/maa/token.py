"""Microsoft Azure Attestation (MAA) tokens as upstream evidence: an RS256 JWT signed by a key
of the MAA instance, verified with keys from configuration only.

Invariants:
- Keys come from a configured JWKS (``load_jwks``: each key's ``x5c[0]`` certificate, or its
  ``n``/``e``), never from the token: ``jku``, ``jwk`` and ``x5c`` headers are ignored
  (hostile-evidence row 56) and the ``kid`` must name a configured key.
- The algorithm is exactly RS256 (row 55: ``none``, HS256 or anything else is refused before
  any key is used). iat/nbf/exp are checked at the verification time passed in (with
  ``leeway`` seconds), never the wall clock; ``exp`` and ``iat`` are required.
- The issuer must equal the pinned instance URL when one is configured.
- Every refusal is TOKEN_INVALID except bytes that are not a JWT at all (MALFORMED).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.errors import Malformed, TokenInvalid
from keybroker.evidence.content import looks_like

ALGORITHM = "RS256"
MAX_TOKEN = 64 * 1024


@dataclass(frozen=True)
class MaaInstance:
    """A configured MAA instance: its signing keys by kid and (optionally) its issuer URL."""

    keys: Mapping[str, rsa.RSAPublicKey]
    issuer: str | None = None


def load_jwks(data: bytes) -> dict[str, rsa.RSAPublicKey]:
    """kid -> RSA public key from a JWKS document (``x5c[0]`` or ``n``/``e``)."""
    try:
        doc = json.loads(data)
        entries = doc["keys"]
        assert isinstance(entries, list)
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError):
        raise Malformed("not a JWKS document", expected='{"keys": [...]}',
                        actual=looks_like(data) or f"{len(data)} bytes") from None
    keys: dict[str, rsa.RSAPublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            raise Malformed("JWKS entry without a kid", expected="kid and x5c (or n, e)",
                            actual=str(entry)[:80])
        key: Any
        if entry.get("x5c"):
            try:
                cert = x509.load_der_x509_certificate(
                    base64.b64decode(entry["x5c"][0]))
            except ValueError as exc:
                raise Malformed(f"JWKS key {entry['kid']}: x5c[0] is not a certificate",
                                actual=str(exc)[:80]) from None
            key = cert.public_key()
        else:
            key = jwt.PyJWK(entry).key
        if not isinstance(key, rsa.RSAPublicKey):
            raise Malformed(f"JWKS key {entry['kid']} is not RSA", expected="an RSA key",
                            actual=type(key).__name__)
        keys[entry["kid"]] = key
    if not keys:
        raise Malformed("JWKS holds no key", expected=">= 1 key", actual="0")
    return keys


@dataclass(frozen=True)
class MaaToken:
    """A verified MAA token: its header kid, issuer and claims."""

    kid: str
    issuer: str
    claims: dict[str, Any]


def verify_maa_token(token: bytes | str, instance: MaaInstance, *, at: datetime,
                     leeway: int = 60) -> MaaToken:
    """Verify ``token`` against ``instance`` at ``at`` (module invariants)."""
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    text = text.strip()
    if len(text) > MAX_TOKEN or text.count(".") != 2:
        raise Malformed("not a JWT", expected="three base64url parts separated by dots",
                        actual=looks_like(text.encode()) or f"{len(text)} characters")
    try:
        header = jwt.get_unverified_header(text)
    except jwt.DecodeError as exc:
        raise Malformed("JWT header does not decode", actual=str(exc)[:120]) from None
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid("token algorithm not accepted", rule="maa.alg", expected=ALGORITHM,
                           actual=str(header.get("alg"))[:32])
    kid = header.get("kid")
    key = instance.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenInvalid("token signed by a key not in the configured JWKS", rule="maa.kid",
                           expected=", ".join(sorted(instance.keys))[:200],
                           actual=str(kid)[:80])
    try:
        claims = jwt.decode(text, key, algorithms=[ALGORITHM], options={
            "verify_exp": False, "verify_nbf": False, "verify_iat": False,
            "verify_aud": False, "verify_iss": False, "require": ["exp", "iat"]})
    except jwt.InvalidSignatureError:
        raise TokenInvalid("token signature does not verify", rule="maa.signature") from None
    except jwt.PyJWTError as exc:
        raise TokenInvalid("token does not verify", rule="maa.token",
                           actual=str(exc)[:160]) from None
    _check_times(claims, at, leeway)
    issuer = str(claims.get("iss", ""))
    if instance.issuer is not None and issuer != instance.issuer:
        raise TokenInvalid("token from another MAA instance", rule="maa.iss",
                           expected=instance.issuer, actual=issuer[:200])
    return MaaToken(kid=kid, issuer=issuer, claims=claims)  # type: ignore[arg-type]


def _check_times(claims: Mapping[str, Any], at: datetime, leeway: int) -> None:
    now = at.timestamp()
    for name in ("exp", "iat", "nbf"):
        if name in claims and not isinstance(claims[name], int | float):
            raise TokenInvalid(f"token {name} is not a number", rule=f"maa.{name}",
                               expected="seconds since 1970", actual=str(claims[name])[:40])
    if now > claims["exp"] + leeway:
        raise TokenInvalid("token expired", rule="maa.exp",
                           expected=f"verification before {claims['exp']}",
                           actual=f"{int(now)}")
    start = max(claims.get("nbf", claims["iat"]), claims["iat"])
    if now + leeway < start:
        raise TokenInvalid("token not yet valid", rule="maa.nbf",
                           expected=f"verification after {start}", actual=f"{int(now)}")
