"""Signed reference-value manifests from providers (JWS compact serialisation, ES256/ES384).

Invariants:
- A provider is configured with a name, one EC public key (P-256 or P-384) and the fnmatch
  patterns of the set names it may publish. Nothing else is trusted: there is no key in the
  token (``jwk``, ``jku``, ``x5c``, ``x5u`` headers are refused) and no ``crit`` extension.
- The header ``alg`` must be ES256 or ES384 and match the curve of the key it is verified with
  (ES256 with P-256, ES384 with P-384); ``none``, HMAC and RSA algorithms are refused before
  any key is tried. A ``kid``, when present, must be the RFC 7638 thumbprint of a configured
  provider key; without one every provider key of the right curve is tried.
- Bad signature or unknown key -> ``SignatureInvalid``; a verified manifest whose set name is
  not covered by its provider's patterns -> ``ChainUntrusted``; structure -> ``Malformed``.
- The returned payload is the document bytes (JSON, which the YAML document loader accepts);
  provenance is ``jws:<provider>:<sha256 hex of the exact token>``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.api_jws import PyJWS

from keybroker.errors import ChainUntrusted, Malformed, SignatureInvalid

MAX_TOKEN_BYTES = 2 * 1024 * 1024
_CURVES: dict[str, tuple[str, str, int]] = {  # curve name -> (alg, JWK crv, coordinate size)
    "secp256r1": ("ES256", "P-256", 32),
    "secp384r1": ("ES384", "P-384", 48),
}
_ALGS = frozenset(alg for alg, _, _ in _CURVES.values())
_HEADER_KEYS = frozenset({"alg", "kid", "typ", "cty"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url, no padding) of an EC public key."""
    _, crv, size = _CURVES[key.curve.name]
    numbers = key.public_numbers()
    members = {"crv": crv, "kty": "EC", "x": _b64url(numbers.x.to_bytes(size, "big")),
               "y": _b64url(numbers.y.to_bytes(size, "big"))}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class Provider:
    """A configured reference-value provider."""

    name: str
    public_key: ec.EllipticCurvePublicKey
    sets: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, ec.EllipticCurvePublicKey) or (
                self.public_key.curve.name not in _CURVES):
            raise Malformed(f"provider {self.name}: key is not a P-256 or P-384 public key",
                            rule="refvalues.provider", expected="EC P-256 or P-384 public key",
                            actual=type(self.public_key).__name__)

    @property
    def alg(self) -> str:
        """The JWS algorithm this provider's key verifies (ES256 or ES384)."""
        return _CURVES[self.public_key.curve.name][0]

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the provider key."""
        return jwk_thumbprint(self.public_key)

    def covers(self, set_name: str) -> bool:
        """True when one of the provider's patterns matches ``set_name`` (case-sensitive)."""
        return any(fnmatch.fnmatchcase(set_name, pattern) for pattern in self.sets)


def load_provider(name: str, key_path: Path, sets: Sequence[str]) -> Provider:
    """A provider from a PEM public key file; unreadable or wrong key type -> Malformed."""
    try:
        pem = key_path.read_bytes()
    except OSError as exc:
        raise Malformed(f"provider {name}: cannot read key {key_path}",
                        rule="refvalues.provider", expected="a readable PEM public key",
                        actual=type(exc).__name__) from exc
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise Malformed(f"provider {name}: {key_path} is not a PEM public key",
                        rule="refvalues.provider", expected="PEM public key",
                        actual=type(exc).__name__) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Malformed(f"provider {name}: {key_path} is not an EC public key",
                        rule="refvalues.provider", expected="EC P-256 or P-384 public key",
                        actual=type(key).__name__)
    return Provider(name=name, public_key=key, sets=tuple(sets))


def manifest_provenance(token: bytes, provider: Provider) -> str:
    """``jws:<provider name>:<sha256 hex of the compact token>`` (surrounding white space
    such as a file's final newline is not part of the token)."""
    return f"jws:{provider.name}:{hashlib.sha256(token.strip()).hexdigest()}"


def _header(token: bytes) -> dict[str, object]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Malformed("manifest is not a JWS compact token", rule="refvalues.manifest",
                        expected="header.payload.signature", actual=str(exc)) from exc
    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:
        raise Malformed("manifest header has unsupported fields", rule="refvalues.manifest",
                        expected="only " + ", ".join(sorted(_HEADER_KEYS)),
                        actual=", ".join(unknown))
    return dict(header)


def _set_name(payload: bytes) -> str:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed("manifest payload is not JSON", rule="refvalues.manifest",
                        expected="a ReferenceValues JSON document",
                        actual=type(exc).__name__) from exc
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise Malformed("manifest payload has no set name", rule="refvalues.manifest",
                        expected="a ReferenceValues document with a name",
                        actual=type(data).__name__)
    return name


def verify_manifest(token: bytes, providers: Sequence[Provider]) -> tuple[bytes, Provider]:
    """Verify a JWS manifest against ``providers``; return (payload bytes, signing provider)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise Malformed("manifest too large", rule="refvalues.manifest",
                        expected=f"at most {MAX_TOKEN_BYTES} bytes", actual=f"{len(token)} bytes")
    compact = token.strip()
    header = _header(compact)
    alg = header.get("alg")
    if alg not in _ALGS:
        raise SignatureInvalid("manifest algorithm not allowed", rule="refvalues.manifest.alg",
                               expected="ES256 or ES384", actual=repr(alg))
    kid = header.get("kid")
    if kid is not None:
        keyed = [p for p in providers if p.kid == kid]
        if not keyed:
            raise SignatureInvalid("manifest signed by an unknown key",
                                   rule="refvalues.manifest.kid",
                                   expected="the thumbprint of a configured provider key",
                                   actual=str(kid))
        candidates = [p for p in keyed if p.alg == alg]
        if not candidates:
            raise SignatureInvalid("manifest algorithm does not match the provider key",
                                   rule="refvalues.manifest.alg",
                                   expected=" or ".join(sorted({p.alg for p in keyed})),
                                   actual=str(alg))
    else:
        candidates = [p for p in providers if p.alg == alg]
        if not candidates:
            raise SignatureInvalid("no provider key for the manifest algorithm",
                                   rule="refvalues.manifest.kid",
                                   expected="a configured provider key for " + str(alg),
                                   actual="none")
    verifier = PyJWS(algorithms=[str(alg)])
    for provider in candidates:
        try:
            decoded = verifier.decode_complete(compact, key=provider.public_key,
                                               algorithms=[str(alg)])
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            raise Malformed("manifest is not a valid JWS", rule="refvalues.manifest",
                            expected="JWS compact serialisation", actual=str(exc)) from exc
        payload = decoded["payload"]
        if not isinstance(payload, bytes):  # pragma: no cover - pyjwt always returns bytes
            raise Malformed("manifest payload is not bytes", rule="refvalues.manifest")
        set_name = _set_name(payload)
        if not provider.covers(set_name):
            raise ChainUntrusted(f"provider {provider.name} may not publish set {set_name}",
                                 rule="refvalues.provider.sets",
                                 expected="a set matching " + (", ".join(provider.sets)
                                                               or "no pattern"),
                                 actual=set_name)
        return payload, provider
    raise SignatureInvalid("manifest signature does not verify", rule="refvalues.manifest.sig",
                           expected="a signature by " + ", ".join(p.name for p in candidates),
                           actual="no configured key verifies it")
