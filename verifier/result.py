"""EAR attestation-result tokens: the verifier's signing key, the JWT it issues, its JWKS.

Invariants:
- The result key is an EC private key in PKCS8 PEM: P-256 signs ES256, P-384 signs ES384;
  any other key type or curve is refused when the key is loaded.
- The JWT header is exactly ``{"alg", "typ": "JWT", "kid"}`` with ``kid`` the RFC 7638 JWK
  thumbprint (SHA-256, base64url without padding) of the public key.
- A token is only ever issued for passed appraisals (a rejection is an RPC error, not a token);
  ``iat == nbf`` and ``exp = iat + ttl`` are integers from the caller's clock.
- The JWKS written for the broker holds the public key only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keybroker.errors import Malformed
from verifier.verdict import Appraisal

logger = logging.getLogger(__name__)

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
DEFAULT_AUDIENCE = "keybroker-broker"
DEFAULT_TTL_SECONDS = 60
_ALG_FOR_CURVE: Mapping[str, tuple[str, str, int]] = {
    "secp256r1": ("ES256", "P-256", 32),
    "secp384r1": ("ES384", "P-384", 48),
}
_CURVE_FOR_ALG: Mapping[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _verifier_build() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415 - only needed once

        return f"keybroker-verifier {version('keybroker')}"
    except Exception:  # pragma: no cover - not installed as a distribution
        return "keybroker-verifier unknown"


class ResultSigner:
    """Signs EAR JWTs with the verifier's result key."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        audience: str = DEFAULT_AUDIENCE,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> None:
        curve = key.curve.name
        if curve not in _ALG_FOR_CURVE:
            raise Malformed("unsupported result key curve", rule="result_key",
                            expected="P-256 or P-384", actual=curve)
        if ttl_seconds <= 0:
            raise Malformed("result token TTL must be positive", rule="result_ttl_seconds",
                            expected="> 0", actual=str(ttl_seconds))
        self._key = key
        self.alg, self._crv, self._size = _ALG_FOR_CURVE[curve]
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self.kid = self._thumbprint()
        self._build = _verifier_build()

    @classmethod
    def generate(
        cls,
        alg: str = "ES256",
        *,
        audience: str = DEFAULT_AUDIENCE,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> ResultSigner:
        """A fresh key for ``alg`` (ES256 or ES384)."""
        if alg not in _CURVE_FOR_ALG:
            raise Malformed("unsupported result token algorithm", rule="alg",
                            expected="ES256 | ES384", actual=alg)
        return cls(ec.generate_private_key(_CURVE_FOR_ALG[alg]), audience=audience,
                   ttl_seconds=ttl_seconds)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        audience: str = DEFAULT_AUDIENCE,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> ResultSigner:
        """Load a PKCS8 PEM EC private key (unencrypted) from ``path``."""
        try:
            pem = path.read_bytes()
            if path.stat().st_mode & 0o077:
                logger.warning("result key %s is readable by group/others; expected mode 0600",
                               path)
        except OSError as exc:
            raise Malformed(f"{path}: cannot read result key", rule="result_key",
                            expected="a readable PKCS8 PEM file",
                            actual=exc.strerror or str(exc)) from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise Malformed(f"{path}: not an unencrypted PEM private key", rule="result_key",
                            expected="PKCS8 PEM EC private key", actual=str(exc)[:120]) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise Malformed(f"{path}: result key is not an EC key", rule="result_key",
                            expected="EC P-256 or P-384", actual=type(key).__name__)
        return cls(key, audience=audience, ttl_seconds=ttl_seconds)

    def private_pem(self) -> bytes:
        """The private key as PKCS8 PEM (for ``verifier init``)."""
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def write_private_key(self, path: Path) -> None:
        """Write the private key, created with mode 0600 (refuses to overwrite)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.private_pem())

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (with kid, alg and use)."""
        jwk = self._required_members()
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK set the broker pins."""
        return {"keys": [self.public_jwk()]}

    def write_jwks(self, path: Path) -> None:
        """Write the JWKS JSON (public key only)."""
        path.write_text(json.dumps(self.jwks(), indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")

    def _required_members(self) -> dict[str, str]:
        numbers = self._key.public_key().public_numbers()
        return {
            "crv": self._crv,
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(self._size, "big")),
            "y": _b64url(numbers.y.to_bytes(self._size, "big")),
        }

    def _thumbprint(self) -> str:
        canonical = json.dumps(self._required_members(), sort_keys=True, separators=(",", ":"))
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def issue(
        self,
        *,
        now: datetime,
        nonce: bytes,
        request_id: str,
        evidence_digest: str,
        report_data: bytes,
        insecure: bool,
        appraisals: Sequence[Appraisal],
        annotated_evidence: Mapping[str, object],
        workload: Mapping[str, object] | None = None,
    ) -> str:
        """Sign the EAR JWT for passed ``appraisals`` (one submod per policy)."""
        if not appraisals:
            raise Malformed("a result token needs at least one appraisal", rule="ear.submods",
                            expected=">= 1 appraisal", actual="0")
        iat = int(now.timestamp())
        submods: dict[str, object] = {
            a.policy_name: {
                "ear.status": a.status,
                "ear.trustworthiness-vector": dict(a.trust_vector),
                "ear.appraisal-policy-id": a.policy_id,
                "keybroker.policy-digest": a.policy_digest,
                "ear.veraison.annotated-evidence": dict(annotated_evidence),
                "keybroker.workload": dict(workload or {}),
                "keybroker.warnings": list(a.warnings),
                "keybroker.reference-values": dict(a.matched),
                "keybroker.tcb-debt": list(a.tcb_debt),
            }
            for a in appraisals
        }
        claims: dict[str, object] = {
            "eat_profile": EAR_PROFILE,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.ttl_seconds,
            "jti": secrets.token_hex(16),
            "aud": self.audience,
            "ear.verifier-id": {"developer": "keybroker", "build": self._build},
            "eat_nonce": _b64url(nonce),
            "keybroker.request-id": request_id,
            "keybroker.evidence-digest": evidence_digest,
            "keybroker.report-data": report_data.hex(),
            "keybroker.insecure": insecure,
            "submods": submods,
        }
        return jwt.encode(claims, self._key, algorithm=self.alg,
                          headers={"typ": "JWT", "kid": self.kid})
