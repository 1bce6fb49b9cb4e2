"""Broker EAR token verification: a valid token passes; hostile rows 55-57 each deny."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.broker import T0, EarSigner, b64url, snp_evidence

from broker.rules import Requirement
from broker.token import TokenVerifier, VerifiedResult, evidence_digest, load_jwks
from keybroker.errors import Category, KeybrokerError, Malformed

NONCE = bytes(range(32))
REPORT_DATA = hashlib.sha512(b"binding").digest()
EVIDENCE = snp_evidence(REPORT_DATA)
DIGEST = evidence_digest(EVIDENCE)
REQUEST_ID = "req-1"
REQS = (Requirement("snp-demo", False),)


@pytest.fixture
def signer() -> EarSigner:
    return EarSigner("ES256")


def _verifier(signer: EarSigner, tmp_path: Path, **kw: object) -> TokenVerifier:
    keys = load_jwks(signer.write_jwks(tmp_path / "jwks.json"), signer.alg)
    return TokenVerifier(keys, alg=signer.alg, audience="keybroker-broker",
                         leeway_seconds=5, **kw)  # type: ignore[arg-type]


def _claims(signer: EarSigner, **kw: object) -> dict[str, object]:
    args: dict[str, object] = {"now": T0, "nonce": NONCE, "request_id": REQUEST_ID,
                               "evidence_digest": DIGEST, "report_data": REPORT_DATA}
    args.update(kw)
    return signer.claims(**args)  # type: ignore[arg-type]


def _verify(tv: TokenVerifier, token: str, *, now: float = T0,
            reqs: tuple[Requirement, ...] = REQS) -> VerifiedResult:
    return tv.verify(token, now=now, nonce=NONCE, evidence_sha256=DIGEST,
                     report_data=REPORT_DATA, request_id=REQUEST_ID, requirements=reqs)


def _category(tv: TokenVerifier, token: str, **kw: object) -> Category:
    with pytest.raises(KeybrokerError) as exc:
        _verify(tv, token, **kw)  # type: ignore[arg-type]
    return exc.value.category


def _unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    enc = [b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims)]
    return ".".join(enc)


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
def test_valid_token_passes(tmp_path: Path, alg: str) -> None:
    """A token in the contract format verifies and yields policy ids and statuses."""
    signer = EarSigner(alg)
    result = _verify(_verifier(signer, tmp_path), signer.sign(_claims(signer)))
    assert result.policy_ids == ("snp-demo@1",)
    assert result.statuses == (("snp-demo", "affirming"),)
    assert result.insecure is False


def test_alg_none_rejected(tmp_path: Path, signer: EarSigner) -> None:
    """Row 55: an unsigned alg=none token is TOKEN_INVALID."""
    token = _unsigned({"alg": "none", "typ": "JWT", "kid": signer.kid}, _claims(signer)) + "."
    assert _category(_verifier(signer, tmp_path), token) is Category.TOKEN_INVALID


def test_hs256_keyed_with_public_key_rejected(tmp_path: Path, signer: EarSigner) -> None:
    """Row 55: HS256 with the verifier's public key (PEM or JWK JSON) as secret is rejected."""
    tv = _verifier(signer, tmp_path)
    pem = signer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, json.dumps(signer.jwk()).encode()):
        signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": signer.kid},
                                  _claims(signer))
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert _category(tv, f"{signing_input}.{b64url(mac)}") is Category.TOKEN_INVALID


def test_other_algorithm_rejected(tmp_path: Path, signer: EarSigner) -> None:
    """Row 55: ES384 (P-384 key) or RS256 when ES256 is configured is TOKEN_INVALID."""
    tv = _verifier(signer, tmp_path)
    p384 = EarSigner("ES384")
    p384.kid = signer.kid
    assert _category(tv, p384.sign(_claims(signer))) is Category.TOKEN_INVALID
    header_only = _unsigned({"alg": "RS256", "typ": "JWT", "kid": signer.kid}, _claims(signer))
    assert _category(tv, header_only + ".c2ln") is Category.TOKEN_INVALID


def test_es256_token_rejected_when_es384_configured(tmp_path: Path) -> None:
    """Exactly the configured algorithm: an ES256 token against an ES384 config is rejected."""
    es384 = EarSigner("ES384")
    tv = _verifier(es384, tmp_path)
    es256 = EarSigner("ES256")
    es256.kid = es384.kid
    assert _category(tv, es256.sign(_claims(es256))) is Category.TOKEN_INVALID


@pytest.mark.parametrize("header", ["jwk", "x5c", "jku", "x5u"])
def test_self_supplied_key_header_rejected(tmp_path: Path, signer: EarSigner,
                                           header: str) -> None:
    """Row 56: a token carrying jwk/x5c/jku/x5u in its header is TOKEN_INVALID, even if the
    signature is by an attacker key it names."""
    attacker = EarSigner("ES256")
    value: object = {
        "jwk": attacker.members(),
        "x5c": ["MIIB"],
        "jku": "https://attacker.invalid/jwks.json",
        "x5u": "https://attacker.invalid/cert.pem",
    }[header]
    token = attacker.sign(_claims(signer), headers={header: value, "kid": signer.kid})
    assert _category(_verifier(signer, tmp_path), token) is Category.TOKEN_INVALID
    # Even correctly signed by the pinned key, a key-carrying header is refused.
    token = signer.sign(_claims(signer), headers={header: value})
    assert _category(_verifier(signer, tmp_path), token) is Category.TOKEN_INVALID


def test_key_in_claims_rejected(tmp_path: Path, signer: EarSigner) -> None:
    """Row 56: an attacker key placed in the claims is never used (TOKEN_INVALID)."""
    attacker = EarSigner("ES256")
    claims = _claims(signer)
    claims["jwk"] = attacker.members()
    forged = attacker.sign(claims, headers={"kid": signer.kid})
    assert _category(_verifier(signer, tmp_path), forged) is Category.TOKEN_INVALID
    assert _category(_verifier(signer, tmp_path), signer.sign(claims)) is Category.TOKEN_INVALID


def test_unknown_kid_and_foreign_signature_rejected(tmp_path: Path, signer: EarSigner) -> None:
    """A kid not pinned, or another key's signature under the pinned kid, is TOKEN_INVALID."""
    tv = _verifier(signer, tmp_path)
    other = EarSigner("ES256")
    assert _category(tv, other.sign(_claims(signer))) is Category.TOKEN_INVALID
    other.kid = signer.kid
    assert _category(tv, other.sign(_claims(signer))) is Category.TOKEN_INVALID
    token = signer.sign(_claims(signer))
    head, _, sig = token.split(".")
    tampered_body = b64url(json.dumps({**_claims(signer), "exp": int(T0) + 10**6}).encode())
    assert _category(tv, f"{head}.{tampered_body}.{sig}") is Category.TOKEN_INVALID
    assert _category(tv, "not-a-jwt") is Category.TOKEN_INVALID
    assert _category(tv, "") is Category.TOKEN_INVALID


def test_extra_header_rejected(tmp_path: Path, signer: EarSigner) -> None:
    """Header members other than alg/typ/kid (e.g. crit) are TOKEN_INVALID."""
    token = signer.sign(_claims(signer), headers={"crit": ["exp"]})
    assert _category(_verifier(signer, tmp_path), token) is Category.TOKEN_INVALID


Edit = Callable[[dict[str, object]], None]


def _drop(name: str) -> Edit:
    return lambda c: c.pop(name)


def _set(name: str, value: object) -> Edit:
    return lambda c: c.__setitem__(name, value)


@pytest.mark.parametrize(("edit", "category"), [
    (_drop("exp"), Category.TOKEN_INVALID),
    (_drop("iat"), Category.TOKEN_INVALID),
    (_drop("nbf"), Category.TOKEN_INVALID),
    (_drop("aud"), Category.TOKEN_INVALID),
    (_drop("eat_nonce"), Category.TOKEN_INVALID),
    (_drop("eat_profile"), Category.TOKEN_INVALID),
    (_drop("submods"), Category.TOKEN_INVALID),
    (_drop("keybroker.evidence-digest"), Category.TOKEN_INVALID),
    (_drop("keybroker.report-data"), Category.TOKEN_INVALID),
    (_set("exp", int(T0) - 6), Category.TOKEN_INVALID),
    (_set("exp", float(T0 + 60)), Category.TOKEN_INVALID),
    (_set("nbf", int(T0) + 30), Category.TOKEN_INVALID),
    (_set("iat", int(T0) + 30), Category.TOKEN_INVALID),
    (_set("aud", "some-other-relying-party"), Category.TOKEN_INVALID),
    (_set("eat_profile", "tag:example.org,2024:other"), Category.TOKEN_INVALID),
    (_set("eat_nonce", b64url(bytes(32))), Category.TOKEN_INVALID),
    (_set("keybroker.evidence-digest", "00" * 32), Category.TOKEN_INVALID),
    (_set("keybroker.request-id", "req-2"), Category.TOKEN_INVALID),
    (_set("keybroker.report-data", "11" * 64), Category.BINDING),
    (_set("keybroker.insecure", True), Category.TOKEN_INVALID),
    (_set("keybroker.insecure", "false"), Category.TOKEN_INVALID),
    (_set("submods", {}), Category.TOKEN_INVALID),
])
def test_claims_of_another_request_rejected(tmp_path: Path, signer: EarSigner, edit: Edit,
                                            category: Category) -> None:
    """Row 57: missing/expired exp, future nbf, other aud, nonce/evidence/request/report-data
    of another request, insecure results: each denies with its category."""
    claims = _claims(signer)
    edit(claims)
    assert _category(_verifier(signer, tmp_path), signer.sign(claims)) is category


def test_leeway_is_small(tmp_path: Path, signer: EarSigner) -> None:
    """Expiry within the 5 s leeway passes; beyond it is TOKEN_INVALID."""
    tv = _verifier(signer, tmp_path)
    token = signer.sign(_claims(signer))
    _verify(tv, token, now=T0 + 64)
    assert _category(tv, token, now=T0 + 66) is Category.TOKEN_INVALID


def test_insecure_accepted_only_when_configured(tmp_path: Path, signer: EarSigner) -> None:
    """An insecure (simulator) result passes only with accept_insecure and is flagged."""
    token = signer.sign(_claims(signer, insecure=True))
    result = _verify(_verifier(signer, tmp_path, accept_insecure=True), token)
    assert result.insecure is True


@pytest.mark.parametrize(("status", "accept_warning", "category"), [
    ("warning", False, Category.PLATFORM_POLICY),
    ("contraindicated", True, Category.PLATFORM_POLICY),
    ("none", True, Category.PLATFORM_POLICY),
    ("warning", True, None),
])
def test_submod_status(tmp_path: Path, signer: EarSigner, status: str, accept_warning: bool,
                       category: Category | None) -> None:
    """Only affirming passes, warning only where the rule accepts it; else PLATFORM_POLICY."""
    tv = _verifier(signer, tmp_path)
    token = signer.sign(_claims(signer, statuses={"snp-demo": status}))
    reqs = (Requirement("snp-demo", accept_warning),)
    if category is None:
        assert _verify(tv, token, reqs=reqs).statuses == (("snp-demo", "warning"),)
    else:
        with pytest.raises(KeybrokerError) as exc:
            _verify(tv, token, reqs=reqs)
        assert exc.value.category is category
        assert exc.value.actual == status


def test_required_policy_missing_or_misnamed(tmp_path: Path, signer: EarSigner) -> None:
    """A required policy absent from submods denies; a submod naming another policy id is
    TOKEN_INVALID."""
    tv = _verifier(signer, tmp_path)
    token = signer.sign(_claims(signer, statuses={"other-policy": "affirming"}))
    assert _category(tv, token) is Category.PLATFORM_POLICY
    claims = _claims(signer)
    submods = claims["submods"]
    assert isinstance(submods, dict)
    submods["snp-demo"]["ear.appraisal-policy-id"] = "snp-other@1"
    assert _category(tv, signer.sign(claims)) is Category.TOKEN_INVALID
    assert _category(tv, signer.sign(_claims(signer)), reqs=()) is Category.PLATFORM_POLICY


def test_every_required_policy_checked(tmp_path: Path, signer: EarSigner) -> None:
    """With two required policies, both must be present and affirming."""
    tv = _verifier(signer, tmp_path)
    reqs = (Requirement("a", False), Requirement("b", False))
    ok = signer.sign(_claims(signer, statuses={"a": "affirming", "b": "affirming"}))
    assert _verify(tv, ok, reqs=reqs).policy_ids == ("a@1", "b@1")
    bad = signer.sign(_claims(signer, statuses={"a": "affirming", "b": "warning"}))
    assert _category(tv, bad, reqs=reqs) is Category.PLATFORM_POLICY


def test_jwks_loading_refuses_bad_key_sets(tmp_path: Path, signer: EarSigner) -> None:
    """JWKS with a private key, a key on the wrong curve or no keys is MALFORMED."""
    path = tmp_path / "jwks.json"
    priv = signer.key.private_numbers().private_value.to_bytes(32, "big")
    cases: list[object] = [
        {"keys": [{**signer.jwk(), "d": b64url(priv)}]},
        {"keys": []},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
        [],
    ]
    for data in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(Malformed):
            load_jwks(path, "ES256")
    signer.write_jwks(path)
    with pytest.raises(Malformed):
        load_jwks(path, "ES384")
    assert set(load_jwks(path, "ES256")) == {signer.kid}


def test_pyjwt_does_not_sign_hmac_with_pem() -> None:
    """Sanity: the library refuses the classic confusion when encoding, so we forge by hand."""
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(jwt.InvalidKeyError):
        jwt.encode({"a": 1}, pem, algorithm="HS256")
    assert base64.urlsafe_b64decode(b64url(b"xy") + "==") == b"xy"
