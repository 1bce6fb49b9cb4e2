"""EAR result tokens: header, claims, signature under the JWKS key, ES256 and ES384."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keybroker.errors import Category, Malformed
from verifier.result import EAR_PROFILE, ResultSigner
from verifier.verdict import TRUST_VECTOR_AFFIRMING, Appraisal

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
NONCE = b"\x01\x02nonce-bytes\xff"


def _appraisal(name: str = "snp-demo") -> Appraisal:
    return Appraisal(status="affirming", trust_vector=TRUST_VECTOR_AFFIRMING,
                     policy_id=f"{name}@1", policy_digest="ab" * 32, policy_name=name)


def _issue(signer: ResultSigner, *, insecure: bool = False, names: tuple[str, ...] = ("snp-demo",)
           ) -> str:
    return signer.issue(now=NOW, nonce=NONCE, request_id="req-1", evidence_digest="cd" * 32,
                        report_data=b"\x11" * 64, insecure=insecure,
                        appraisals=[_appraisal(n) for n in names],
                        annotated_evidence={"platform": "sev-snp", "vmpl": 0})


def _decode(token: str, jwks_path: Path, alg: str) -> dict[str, object]:
    jwks = jwt.PyJWKSet.from_json(jwks_path.read_text())
    key = jwks.keys[0]
    return jwt.decode(token, key.key, algorithms=[alg], audience="keybroker-broker",
                      options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})


@pytest.mark.parametrize(("alg", "curve"), [("ES256", ec.SECP256R1()), ("ES384", ec.SECP384R1())])
def test_token_signed_and_verifiable_with_jwks(tmp_path: Path, alg: str,
                                               curve: ec.EllipticCurve) -> None:
    """A key of each curve signs its algorithm; the token verifies under the written JWKS."""
    key_path = tmp_path / "result-key.pem"
    key_path.write_bytes(ec.generate_private_key(curve).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    signer = ResultSigner.load(key_path)
    assert signer.alg == alg
    signer.write_jwks(tmp_path / "jwks.json")
    token = _issue(signer)
    claims = _decode(token, tmp_path / "jwks.json", alg)
    assert claims["eat_profile"] == EAR_PROFILE
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "typ": "JWT", "kid": signer.kid}


def test_token_claims_follow_contract(tmp_path: Path) -> None:
    """Every contract claim is present with the right value and integer times."""
    signer = ResultSigner.generate("ES256", ttl_seconds=45, audience="keybroker-broker")
    signer.write_jwks(tmp_path / "jwks.json")
    claims = _decode(_issue(signer, names=("snp-demo", "snp-strict")), tmp_path / "jwks.json",
                     "ES256")
    iat = int(NOW.timestamp())
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (iat, iat, iat + 45)
    assert all(isinstance(claims[k], int) for k in ("iat", "nbf", "exp"))
    assert claims["aud"] == "keybroker-broker"
    assert isinstance(claims["jti"], str) and len(claims["jti"]) == 32
    int(claims["jti"], 16)
    verifier_id = claims["ear.verifier-id"]
    assert isinstance(verifier_id, dict)
    assert verifier_id["developer"] == "keybroker"
    assert str(verifier_id["build"]).startswith("keybroker-verifier ")
    assert claims["eat_nonce"] == base64.urlsafe_b64encode(NONCE).rstrip(b"=").decode()
    assert claims["keybroker.request-id"] == "req-1"
    assert claims["keybroker.evidence-digest"] == "cd" * 32
    assert claims["keybroker.report-data"] == "11" * 64
    assert claims["keybroker.insecure"] is False
    submods = claims["submods"]
    assert isinstance(submods, dict) and set(submods) == {"snp-demo", "snp-strict"}
    demo = submods["snp-demo"]
    assert demo == {
        "ear.status": "affirming",
        "ear.trustworthiness-vector": {"instance-identity": 2, "configuration": 2,
                                       "executables": 2, "hardware": 2, "runtime-opaque": 2},
        "ear.appraisal-policy-id": "snp-demo@1",
        "keybroker.policy-digest": "ab" * 32,
        "ear.veraison.annotated-evidence": {"platform": "sev-snp", "vmpl": 0},
        "keybroker.workload": {},
        "keybroker.warnings": [],
        "keybroker.reference-values": {},
        "keybroker.tcb-debt": [],
    }


def test_insecure_flag_carried(tmp_path: Path) -> None:
    """A token issued in insecure mode says keybroker.insecure = true."""
    signer = ResultSigner.generate()
    signer.write_jwks(tmp_path / "jwks.json")
    assert _decode(_issue(signer, insecure=True), tmp_path / "jwks.json",
                   "ES256")["keybroker.insecure"] is True


def test_jwks_holds_public_key_only_and_kid_is_rfc7638(tmp_path: Path) -> None:
    """The JWKS has no private member and its kid is the RFC 7638 thumbprint."""
    signer = ResultSigner.generate("ES384")
    signer.write_jwks(tmp_path / "jwks.json")
    doc = json.loads((tmp_path / "jwks.json").read_text())
    (jwk,) = doc["keys"]
    assert "d" not in jwk
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-384" and jwk["alg"] == "ES384"
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, sort_keys=True,
                           separators=(",", ":")).encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert jwk["kid"] == expected == signer.kid
    assert len(base64.urlsafe_b64decode(jwk["x"] + "==")) == 48


def test_rfc7638_thumbprint_known_answer() -> None:
    """The kid of the P-256 key with d = 1 (public key = generator G) is a fixed value."""
    signer = ResultSigner(ec.derive_private_key(1, ec.SECP256R1()))
    jwk = signer.public_jwk()
    assert jwk["x"] == "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY"
    assert jwk["y"] == "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"
    canonical = ('{"crv":"P-256","kty":"EC","x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",'
                 '"y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"}')
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert signer.kid == digest.rstrip(b"=").decode()
    assert signer.kid == "xx0BcA-wMohw8atYDJOe6peGModklG2wRHBlXHMvl0M"


def test_token_does_not_verify_under_another_key(tmp_path: Path) -> None:
    """A token signed by one verifier key does not verify with another key's JWKS."""
    ResultSigner.generate().write_jwks(tmp_path / "other.json")
    with pytest.raises(jwt.InvalidSignatureError):
        _decode(_issue(ResultSigner.generate()), tmp_path / "other.json", "ES256")


def test_private_key_written_0600_and_not_overwritten(tmp_path: Path) -> None:
    """The private key file is created 0600, reloads to the same kid, and is never overwritten."""
    signer = ResultSigner.generate("ES384")
    path = tmp_path / "k.pem"
    signer.write_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ResultSigner.load(path).kid == signer.kid
    with pytest.raises(FileExistsError):
        signer.write_private_key(path)


@pytest.mark.parametrize("kind", ["ed25519", "p521", "garbage", "missing"])
def test_bad_result_keys_are_malformed(tmp_path: Path, kind: str) -> None:
    """Non-EC keys, other curves, garbage and missing files are MALFORMED."""
    path = tmp_path / "k.pem"
    if kind == "ed25519":
        key_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        path.write_bytes(key_pem)
    elif kind == "p521":
        path.write_bytes(ec.generate_private_key(ec.SECP521R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    elif kind == "garbage":
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(Malformed) as exc:
        ResultSigner.load(path)
    assert exc.value.category is Category.MALFORMED


def test_no_token_without_appraisal() -> None:
    """Issuing a token with no appraisal is refused (never a vacuous result)."""
    signer = ResultSigner.generate()
    with pytest.raises(Malformed):
        signer.issue(now=NOW, nonce=NONCE, request_id="r", evidence_digest="", report_data=b"",
                     insecure=False, appraisals=[], annotated_evidence={})
