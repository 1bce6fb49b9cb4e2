"""The real Microsoft Azure Attestation SGX token (tests/vectors/azure/maa-sgx-token-sharedeus)
through ``keybroker verify --tee maa``: it verifies at its own time with the README's claims,
and is refused expired now, tampered, under another issuer, and in the token attacks of
hostile-evidence rows 55 and 56 (alg confusion, self-supplied keys)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import CONFIG, VECTORS

from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.v1 import evidence_pb2
from keybroker_cli.main import main
from verifier.maa.appraisal import appraise_maa
from verifier.maa.claims import MaaClaims
from verifier.maa.token import MaaInstance, MaaToken, load_jwks, verify_maa_token
from verifier.maa.verify import MaaVerifier
from verifier.policy.compile import load_policy

MAA = VECTORS / "azure" / "maa-sgx-token-sharedeus"
ISSUER = "https://sharedeus.eus.attest.azure.net"
AT = "2023-09-26T15:00:00Z"
TOKEN = (MAA / "token.jwt").read_text().strip()
KEYS = load_jwks((MAA / "jwks.json").read_bytes())
KID = "rFl9xM+g7TvX63y0iseZtIn20MD5SYAnGblKFasau8I="


def run(capsys: pytest.CaptureFixture[str], token: Path, *extra: str
        ) -> tuple[int, dict[str, object]]:
    code = main(["verify", str(token), "--tee", "maa", "--jwks", str(MAA / "jwks.json"),
                 "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_maa_token_verifies_at_its_time_with_readme_claims(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, MAA / "token.jwt", "--issuer", ISSUER, "--at", AT)
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    assert (claims["issuer"], claims["kid"], claims["issued_at"], claims["expires_at"]) == (
        ISSUER, KID, 1695737747, 1695766547)
    sgx = claims["sgx"]
    runtime = b"This is some runtime data"
    assert sgx == {
        "mrenclave": "f56735aa42563627a832e0c7ba9911382eb68afed75830b3f97266f3e67bdc99",
        "mrsigner": "a595c6c5805da0c9c4cb920334d354aeaee2207e479dff679d5f360375f557dd",
        "product_id": 1, "svn": 1, "is_debuggable": False,
        "report_data": (hashlib.sha256(runtime).digest() + bytes(32)).hex(),
        "runtime_data": runtime.hex()}


def _refused(capsys: pytest.CaptureFixture[str], token: str, tmp_path: Path,
             *extra: str) -> dict[str, object]:
    path = tmp_path / "token.jwt"
    path.write_text(token)
    code, out = run(capsys, path, *extra)
    assert code == 1, out
    return out


def test_maa_token_expired_now(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = _refused(capsys, TOKEN, tmp_path)
    assert (out["category"], out["rule"]) == ("TOKEN_INVALID", "maa.exp")


def test_maa_token_tampered(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """One claim of the payload changed (x-ms-sgx-is-debuggable false -> true)."""
    header, payload, signature = TOKEN.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["x-ms-sgx-is-debuggable"] = True
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    out = _refused(capsys, f"{header}.{forged}.{signature}", tmp_path, "--at", AT)
    assert (out["category"], out["rule"]) == ("TOKEN_INVALID", "maa.signature")


def test_maa_token_other_issuer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = _refused(capsys, TOKEN, tmp_path, "--at", AT, "--issuer",
                   "https://sharedweu.weu.attest.azure.net")
    assert (out["category"], out["rule"]) == ("TOKEN_INVALID", "maa.iss")


OWN = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _own_token(headers: dict[str, object], alg: str = "RS256",
               key: object = OWN, **claims: object) -> str:
    body = {"iss": ISSUER, "iat": 1695737747, "exp": 1695766547, **claims}
    return jwt.encode(body, key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


def test_alg_none_and_hs256_confusion_are_refused() -> None:
    """Row 55: alg none, and HS256 keyed with the configured public key."""
    at = datetime(2023, 9, 26, 15, tzinfo=UTC)
    unsigned = _own_token({"kid": KID}, alg="none", key=None)
    public_pem = KEYS[KID].public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps(
        {"alg": "HS256", "kid": KID, "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(
        {"iss": ISSUER, "iat": 1695737747, "exp": 1695766547}).encode()).rstrip(b"=")
    import hmac  # noqa: PLC0415 - only this test forges an HMAC

    mac = hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    confused = b".".join([header, payload, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()
    for token in (unsigned, confused):
        with pytest.raises(KeybrokerError) as exc:
            verify_maa_token(token, MaaInstance(KEYS, ISSUER), at=at)
        assert (exc.value.category, exc.value.rule) == (Category.TOKEN_INVALID, "maa.alg")


def test_self_supplied_keys_are_ignored() -> None:
    """Row 56: a token signed by the attacker's key that names it in jwk/jku/x5c headers is
    refused: with an unknown kid (maa.kid), or with a configured kid (the signature does not
    verify under the configured key)."""
    at = datetime(2023, 9, 26, 15, tzinfo=UTC)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(OWN.public_key()))
    for kid, rule in (("attacker", "maa.kid"), (KID, "maa.signature")):
        token = _own_token({"kid": kid, "jwk": jwk, "jku": "https://attacker.example/certs"})
        with pytest.raises(KeybrokerError) as exc:
            verify_maa_token(token, MaaInstance(KEYS, ISSUER), at=at)
        assert (exc.value.category, exc.value.rule) == (Category.TOKEN_INVALID, rule)


def test_time_window_and_required_claims() -> None:
    """nbf in the future is refused; a token without exp is refused; our own configured key
    verifies a well-formed token (so the refusals above are about what they name)."""
    instance = MaaInstance({"mine": OWN.public_key()}, ISSUER)
    at = datetime(2023, 9, 26, 15, tzinfo=UTC)
    assert verify_maa_token(_own_token({"kid": "mine"}), instance, at=at).issuer == ISSUER
    with pytest.raises(KeybrokerError) as exc:
        verify_maa_token(_own_token({"kid": "mine"}, nbf=1695766000), instance, at=at)
    assert exc.value.rule == "maa.nbf"
    no_exp = jwt.encode({"iss": ISSUER, "iat": 1695737747}, OWN, algorithm="RS256",
                        headers={"kid": "mine"})
    with pytest.raises(KeybrokerError) as exc:
        verify_maa_token(no_exp, instance, at=at)
    assert exc.value.category is Category.TOKEN_INVALID


def test_not_a_jwt_is_malformed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = _refused(capsys, "{\"tcbInfo\": {}}", tmp_path)
    assert out["category"] == "MALFORMED"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_jwks_and_token_parsing_raise_only_typed_errors(data: bytes) -> None:
    """Arbitrary bytes given as a JWKS raise only MALFORMED; as a token only MALFORMED or
    TOKEN_INVALID."""
    with contextlib.suppress(Malformed):
        load_jwks(data)
    try:
        verify_maa_token(data, MaaInstance(KEYS, ISSUER), at=datetime.now(UTC))
    except KeybrokerError as exc:
        assert exc.category in (Category.MALFORMED, Category.TOKEN_INVALID)


def test_maa_cvm_token_claims_parse(tmp_path: Path) -> None:
    """The real MAA Azure VM token (no JWKS published with it: parse only). Its claims type as
    the README states: attestation type azurevm and the SEV-SNP isolation TEE with its launch
    measurement and report data. Without its instance's keys it is refused, never accepted."""
    token = (VECTORS / "azure" / "maa-cvm-token-sharedweu-parse-only" / "token.jwt"
             ).read_text().strip()
    payload = token.split(".")[1]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims = MaaClaims.of(MaaToken(kid="dRKh+hBcWUfQimSl3Iv6ZhStW3TSOt0ThwiTgUUqZAo=",
                                   issuer=body["iss"], claims=body))
    assert (claims.attestation_type, claims.issued_at, claims.expires_at) == (
        "azurevm", 1680173374, 1680202174)
    tee = claims.isolation_tee
    assert tee is not None and tee["x-ms-attestation-type"] == "sevsnpvm"
    assert tee["x-ms-compliance-status"] == "azure-compliant-cvm"
    assert tee["x-ms-sevsnpvm-launchmeasurement"] == (
        "8962535933f5c4b429ec41d6550c187c163aa76f3be1f8d750a272a9d8995023e8286a2e431a96c"
        "36087ac46d4188676")
    assert claims.as_dict()["isolation_tee"] == tee and claims.sgx_mrenclave is None
    with pytest.raises(KeybrokerError) as exc:
        verify_maa_token(token, MaaInstance(KEYS), at=datetime(2023, 3, 30, 12, tzinfo=UTC))
    assert (exc.value.category, exc.value.rule) == (Category.TOKEN_INVALID, "maa.kid")


def test_real_sgx_token_passes_the_example_maa_policy_at_its_time() -> None:
    """The real East US token, checked by the registry's verifier with the instance's JWKS at
    its own time, passes config/policies/maa-demo.yaml; its binding is its runtime data."""
    verifier = MaaVerifier([MaaInstance(load_jwks((MAA / "jwks.json").read_bytes()), ISSUER)])
    at = datetime.fromisoformat(AT.replace("Z", "+00:00"))
    claims = verifier.verify(evidence_pb2.MaaEvidence(token=(MAA / "token.jwt").read_text()),
                             at=at)
    assert claims.report_data == b"This is some runtime data"
    policy = load_policy(CONFIG / "policies" / "maa-demo.yaml")
    assert appraise_maa(claims, policy).status == "affirming"
    with pytest.raises(KeybrokerError) as exc:
        verifier.verify(evidence_pb2.MaaEvidence(token=(MAA / "token.jwt").read_text()),
                        at=datetime.now(UTC))
    assert exc.value.category is Category.TOKEN_INVALID
