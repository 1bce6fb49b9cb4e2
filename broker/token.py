"""Verification of the verifier's EAR attestation-result JWT (architecture section 5).

Invariants:
- The verification key comes only from the pinned JWKS file. Keys or key locations offered by
  the token (``jwk``, ``x5c``, ``jku``, ``x5u`` headers, or such claims) are never used: their
  presence is TOKEN_INVALID. The header may carry only ``alg``, ``typ`` and ``kid``.
- Exactly the configured algorithm is accepted (ES256 or ES384, with a key on the matching
  curve). ``none``, HMAC and every other algorithm are TOKEN_INVALID.
- ``exp``, ``iat``, ``nbf``, ``aud``, ``eat_profile``, ``eat_nonce`` and ``submods`` are
  required; time claims are integers checked against the injected clock with a small leeway.
- The token must be about *this* request: ``eat_nonce`` is the challenge nonce, the evidence
  digest is the SHA-256 of the Evidence message we sent, the request id is ours
  (TOKEN_INVALID otherwise), and ``keybroker.report-data`` is the binding we expect (BINDING).
- A token from a verifier running with simulator roots (``keybroker.insecure`` true) is
  TOKEN_INVALID unless the broker was configured and started to accept insecure results.
- Every required policy has a submod whose ``ear.appraisal-policy-id`` names that policy and
  whose status is ``affirming`` (or ``warning`` if the rule accepts it); anything else denies
  with PLATFORM_POLICY and the status as the actual value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from broker.rules import Requirement
from keybroker.errors import BindingMismatch, Malformed, PlatformPolicyViolation, TokenInvalid
from keybroker.v1 import evidence_pb2

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
MAX_TOKEN_CHARS = 64 * 1024
_ALLOWED_HEADER = frozenset({"alg", "typ", "kid"})
_KEY_CARRIERS = ("jwk", "x5c", "jku", "x5u")
_CURVE_FOR_ALG = {"ES256": ("P-256", ec.SECP256R1), "ES384": ("P-384", ec.SECP384R1)}


@dataclass(frozen=True)
class VerifiedResult:
    """What the broker learned from a valid token."""

    policy_ids: tuple[str, ...]          # "<name>@<version>" per required policy, sorted
    statuses: tuple[tuple[str, str], ...]  # (policy name, ear.status)
    insecure: bool
    jti: str
    claims: Mapping[str, object] = field(default_factory=dict)  # the verified token claims


def evidence_digest(evidence: evidence_pb2.Evidence) -> str:
    """Hex SHA-256 of the deterministic serialization of ``evidence``."""
    return hashlib.sha256(evidence.SerializeToString(deterministic=True)).hexdigest()


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """RFC 7638 thumbprint of an EC public JWK."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return b64url(hashlib.sha256(canonical).digest())


def load_jwks(path: Path, alg: str) -> dict[str, ec.EllipticCurvePublicKey]:
    """Public keys of the pinned JWKS file by kid (and by RFC 7638 thumbprint).

    Private keys, keys on the wrong curve for ``alg`` and non-EC keys are MALFORMED.
    """
    if alg not in _CURVE_FOR_ALG:
        raise Malformed("unsupported result-token algorithm", expected="ES256 | ES384",
                        actual=alg)
    crv, curve = _CURVE_FOR_ALG[alg]
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise Malformed(f"cannot read verifier JWKS {path}: {exc}") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise Malformed(f"{path}: JWKS without keys", expected='{"keys": [...]}')
    out: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("kty") != "EC":
            raise Malformed(f"{path}: only EC keys are accepted", expected="kty=EC")
        if "d" in entry:
            raise Malformed(f"{path}: JWKS contains a private key", expected="public keys only")
        if entry.get("crv") != crv:
            raise Malformed(f"{path}: key curve does not match {alg}", expected=crv,
                            actual=str(entry.get("crv")))
        try:
            key = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(entry))
        except (jwt.InvalidKeyError, ValueError, KeyError) as exc:
            raise Malformed(f"{path}: invalid EC JWK: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise Malformed(f"{path}: not an EC public key on {crv}")
        out[jwk_thumbprint(entry)] = key
        kid = entry.get("kid")
        if isinstance(kid, str) and kid:
            out[kid] = key
    return out


def _int_claim(claims: Mapping[str, object], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenInvalid(f"claim {name} missing or not an integer", rule=f"token.{name}",
                           expected="integer", actual=type(value).__name__)
    return value


def _str_claim(claims: Mapping[str, object], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str):
        raise TokenInvalid(f"claim {name} missing or not a string", rule=f"token.{name}",
                           expected="string", actual=type(value).__name__)
    return value


class TokenVerifier:
    """Verifies EAR JWTs against the pinned key set, algorithm and audience."""

    def __init__(
        self,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        *,
        alg: str,
        audience: str,
        leeway_seconds: int = 5,
        accept_insecure: bool = False,
    ) -> None:
        if alg not in _CURVE_FOR_ALG:
            raise Malformed("unsupported result-token algorithm", expected="ES256 | ES384",
                            actual=alg)
        self._keys = dict(keys)
        self.alg = alg
        self.audience = audience
        self.leeway = leeway_seconds
        self.accept_insecure = accept_insecure

    def _key_for(self, token: str) -> ec.EllipticCurvePublicKey:
        header = _unverified_header(token)
        carriers = [name for name in _KEY_CARRIERS if name in header]
        if carriers:
            raise TokenInvalid("result token header carries its own key", rule="token.header",
                               expected="keys from the pinned JWKS only",
                               actual=", ".join(carriers))
        extra = sorted(set(header) - _ALLOWED_HEADER)
        if extra:
            raise TokenInvalid("unexpected result token header", rule="token.header",
                               expected="alg, typ, kid", actual=", ".join(extra))
        alg = header.get("alg")
        if alg != self.alg:
            raise TokenInvalid("result token algorithm not allowed", rule="token.alg",
                               expected=self.alg, actual=str(alg))
        if header.get("typ", "JWT") != "JWT":
            raise TokenInvalid("unexpected token type", rule="token.typ", expected="JWT",
                               actual=str(header.get("typ")))
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self._keys:
            raise TokenInvalid("result token key id not in the pinned key set",
                               rule="token.kid", expected="a pinned kid", actual=str(kid)[:80])
        return self._keys[kid]

    def verify(
        self,
        token: str,
        *,
        now: float,
        nonce: bytes,
        evidence_sha256: str,
        report_data: bytes,
        request_id: str,
        requirements: Sequence[Requirement],
    ) -> VerifiedResult:
        """Verify ``token`` for this request; see the module invariants."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid("result token missing or too large", rule="token.size",
                               expected=f"1..{MAX_TOKEN_CHARS} characters",
                               actual=str(len(token)))
        key = self._key_for(token)
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                key,
                algorithms=[self.alg],
                audience=self.audience,
                options={
                    "require": ["exp", "iat", "nbf", "aud"],
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid("result token rejected", rule="token.signature-and-claims",
                               actual=type(exc).__name__) from exc
        self._check_time(claims, now)
        self._check_binding(claims, nonce, evidence_sha256, report_data, request_id)
        insecure = claims.get("keybroker.insecure", False)
        if not isinstance(insecure, bool):
            raise TokenInvalid("keybroker.insecure is not a boolean", rule="token.insecure")
        if insecure and not self.accept_insecure:
            raise TokenInvalid("result token comes from a verifier using test roots",
                               rule="token.insecure", expected="false", actual="true")
        policy_ids, statuses = self._check_submods(claims, requirements)
        jti = claims.get("jti", "")
        return VerifiedResult(policy_ids, statuses, insecure, jti if isinstance(jti, str) else "",
                              claims)

    def _check_time(self, claims: Mapping[str, object], now: float) -> None:
        exp, iat, nbf = (_int_claim(claims, n) for n in ("exp", "iat", "nbf"))
        if now > exp + self.leeway:
            raise TokenInvalid("result token expired", rule="token.exp",
                               expected=f"now <= {exp}", actual=f"now = {int(now)}")
        if nbf > now + self.leeway:
            raise TokenInvalid("result token not yet valid", rule="token.nbf",
                               expected=f"nbf <= {int(now)}", actual=f"nbf = {nbf}")
        if iat > now + self.leeway:
            raise TokenInvalid("result token issued in the future", rule="token.iat",
                               expected=f"iat <= {int(now)}", actual=f"iat = {iat}")

    def _check_binding(self, claims: Mapping[str, object], nonce: bytes, evidence_sha256: str,
                       report_data: bytes, request_id: str) -> None:
        carriers = [name for name in _KEY_CARRIERS if name in claims]
        if carriers:
            raise TokenInvalid("result token claims carry a key", rule="token.claims",
                               expected="no key material", actual=", ".join(carriers))
        profile = _str_claim(claims, "eat_profile")
        if profile != EAR_PROFILE:
            raise TokenInvalid("unexpected EAR profile", rule="token.eat_profile",
                               expected=EAR_PROFILE, actual=profile[:120])
        if _str_claim(claims, "eat_nonce") != b64url(nonce):
            raise TokenInvalid("result token is for another challenge", rule="token.eat_nonce",
                               expected=b64url(nonce), actual=_str_claim(claims, "eat_nonce")[:88])
        got_rid = _str_claim(claims, "keybroker.request-id")
        if got_rid != request_id:
            raise TokenInvalid("result token is for another request",
                               rule="token.request-id", expected=request_id, actual=got_rid[:128])
        digest = _str_claim(claims, "keybroker.evidence-digest")
        if digest != evidence_sha256:
            raise TokenInvalid("result token is about other evidence",
                               rule="token.evidence-digest", expected=evidence_sha256,
                               actual=digest[:64])
        got_rd = _str_claim(claims, "keybroker.report-data")
        if got_rd.lower() != report_data.hex():
            raise BindingMismatch("attested report_data does not match this challenge and key",
                                  rule="token.report-data", expected=report_data.hex(),
                                  actual=got_rd[:128])

    def _check_submods(
        self, claims: Mapping[str, object], requirements: Sequence[Requirement]
    ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        if not requirements:
            raise PlatformPolicyViolation("no appraisal policy required", rule="release.rule",
                                          expected="at least one policy", actual="none")
        submods = claims.get("submods")
        if not isinstance(submods, dict) or not submods:
            raise TokenInvalid("result token has no submods", rule="token.submods",
                               expected="non-empty map", actual=type(submods).__name__)
        policy_ids: list[str] = []
        statuses: list[tuple[str, str]] = []
        for req in requirements:
            sub = submods.get(req.policy)
            if not isinstance(sub, dict):
                raise PlatformPolicyViolation("required policy missing from the result",
                                              rule=f"release.policy.{req.policy}",
                                              expected="affirming", actual="absent")
            policy_id = sub.get("ear.appraisal-policy-id")
            if not isinstance(policy_id, str) or not policy_id.startswith(f"{req.policy}@"):
                raise TokenInvalid("submod names another appraisal policy",
                                   rule="token.appraisal-policy-id",
                                   expected=f"{req.policy}@<version>", actual=str(policy_id)[:128])
            status = sub.get("ear.status")
            allowed = ("affirming", "warning") if req.accept_warning else ("affirming",)
            if status not in allowed:
                raise PlatformPolicyViolation("appraisal policy not affirming",
                                              rule=f"release.policy.{req.policy}",
                                              expected=" | ".join(allowed), actual=str(status))
            policy_ids.append(policy_id)
            statuses.append((req.policy, str(status)))
        return tuple(policy_ids), tuple(statuses)


_JWS_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _unverified_header(token: str) -> dict[str, object]:
    """The JOSE header, decoded strictly (compact form, base64url alphabet, JSON object).

    Only used to pick the pinned key and refuse key-carrying headers before signature
    verification; ``jwt.decode`` then parses the whole token again with the library's own
    checks. Reading just the header here avoids a second full-token scan (measured: about a
    quarter of a millisecond per token in bench/release.py).
    """
    parts = token.split(".")
    if len(parts) != 3 or not _JWS_SEGMENT.fullmatch(parts[0]):
        raise TokenInvalid("result token is not a compact JWS", rule="token.format",
                           expected="header.payload.signature in base64url",
                           actual=f"{len(parts)} segment(s)")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise TokenInvalid("result token header is not base64url JSON",
                           rule="token.format") from exc
    if not isinstance(header, dict):
        raise TokenInvalid("result token header is not a JSON object", rule="token.format",
                           expected="object", actual=type(header).__name__)
    return header
