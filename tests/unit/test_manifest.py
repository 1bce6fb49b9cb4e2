"""Provider manifests: JWS ES256/ES384 verification, key selection, set coverage, refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.errors import Category, ChainUntrusted, Malformed, SignatureInvalid
from verifier.reference.manifest import (
    Provider,
    jwk_thumbprint,
    load_provider,
    manifest_provenance,
    verify_manifest,
)

DOC = {
    "kind": "ReferenceValues",
    "name": "snp-launch",
    "values": [{"name": "ovmf", "value": "ab" * 48, "not_before": "2026-01-01T00:00:00Z",
                "not_after": "2027-01-01T00:00:00Z"}],
}
PAYLOAD = json.dumps(DOC).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(key: ec.EllipticCurvePrivateKey, payload: bytes = PAYLOAD, *, alg: str = "ES256",
          kid: str | None = None) -> bytes:
    headers = {"kid": kid} if kid else None
    token = jwt.api_jws.PyJWS().encode(payload, key, algorithm=alg, headers=headers)
    return token.encode()


def _provider(key: ec.EllipticCurvePrivateKey, name: str = "build-pipeline",
              sets: tuple[str, ...] = ("snp-*",)) -> Provider:
    return Provider(name=name, public_key=key.public_key(), sets=sets)


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_es256_without_kid_verifies(p256: ec.EllipticCurvePrivateKey) -> None:
    """A valid ES256 manifest returns the payload bytes and the signing provider."""
    token = _sign(p256)
    payload, provider = verify_manifest(token + b"\n", [_provider(p256)])
    assert payload == PAYLOAD
    assert provider.name == "build-pipeline"
    assert manifest_provenance(token + b"\n", provider) == (
        "jws:build-pipeline:" + hashlib.sha256(token).hexdigest())


def test_es384_with_kid_verifies(p256: ec.EllipticCurvePrivateKey,
                                 p384: ec.EllipticCurvePrivateKey) -> None:
    """ES384 with a kid equal to the RFC 7638 thumbprint selects that provider."""
    providers = [_provider(p256, "a"), _provider(p384, "b")]
    token = _sign(p384, alg="ES384", kid=jwk_thumbprint(p384.public_key()))
    assert verify_manifest(token, providers)[1].name == "b"


def test_keys_are_tried_without_kid(p256: ec.EllipticCurvePrivateKey) -> None:
    """Without a kid every provider key of the curve is tried."""
    other = ec.generate_private_key(ec.SECP256R1())
    providers = [_provider(other, "first"), _provider(p256, "second")]
    assert verify_manifest(_sign(p256), providers)[1].name == "second"


def test_thumbprint_matches_rfc7638_jwk(p256: ec.EllipticCurvePrivateKey) -> None:
    """The thumbprint is the SHA-256 of the canonical JWK members (checked via pyjwt's JWK)."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p256.public_key()))
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")},
                           sort_keys=True, separators=(",", ":")).encode()
    assert jwk_thumbprint(p256.public_key()) == _b64(hashlib.sha256(canonical).digest())


def test_tampered_payload(p256: ec.EllipticCurvePrivateKey) -> None:
    """Changing the payload breaks the signature: SIG_INVALID."""
    header, _, sig = _sign(p256).split(b".")
    forged = json.dumps({**DOC, "name": "snp-launch-evil"}).encode()
    token = b".".join([header, _b64(forged).encode(), sig])
    with pytest.raises(SignatureInvalid) as err:
        verify_manifest(token, [_provider(p256)])
    assert err.value.category is Category.SIG_INVALID


def test_wrong_key(p256: ec.EllipticCurvePrivateKey) -> None:
    """A manifest signed by an unconfigured key is SIG_INVALID."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureInvalid):
        verify_manifest(_sign(stranger), [_provider(p256)])
    with pytest.raises(SignatureInvalid):
        verify_manifest(_sign(p256), [])


def test_alg_none_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    """An unsigned token (alg none) is SIG_INVALID before any key is tried."""
    header = _b64(b'{"alg":"none"}')
    token = f"{header}.{_b64(PAYLOAD)}.".encode()
    with pytest.raises(SignatureInvalid) as err:
        verify_manifest(token, [_provider(p256)])
    assert err.value.rule == "refvalues.manifest.alg"


def test_hmac_with_public_key_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    """HS256 keyed with the provider's public key bytes (key confusion) is refused."""
    pem = p256.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{_b64(PAYLOAD)}".encode()
    sig = _b64(hmac.new(pem, signing_input, hashlib.sha256).digest())
    with pytest.raises(SignatureInvalid):
        verify_manifest(signing_input + b"." + sig.encode(), [_provider(p256)])


def test_alg_must_match_key_curve(p256: ec.EllipticCurvePrivateKey) -> None:
    """ES384 naming (or falling back to) a P-256 key is SIG_INVALID."""
    kid = jwk_thumbprint(p256.public_key())
    _, payload, sig = _sign(p256, kid=kid).split(b".")
    relabelled = _b64(json.dumps({"alg": "ES384", "kid": kid}).encode()).encode()
    with pytest.raises(SignatureInvalid) as err:
        verify_manifest(b".".join([relabelled, payload, sig]), [_provider(p256)])
    assert "does not match" in err.value.reason
    no_kid = _b64(b'{"alg":"ES384"}').encode()
    with pytest.raises(SignatureInvalid) as err:
        verify_manifest(b".".join([no_kid, payload, sig]), [_provider(p256)])
    assert "no provider key" in err.value.reason


def test_kid_mismatch(p256: ec.EllipticCurvePrivateKey) -> None:
    """A kid that is not a configured provider thumbprint is SIG_INVALID (no fallback)."""
    token = _sign(p256, kid="not-a-thumbprint")
    with pytest.raises(SignatureInvalid) as err:
        verify_manifest(token, [_provider(p256)])
    assert err.value.rule == "refvalues.manifest.kid"


def test_set_not_covered(p256: ec.EllipticCurvePrivateKey) -> None:
    """A verified manifest for a set outside the provider's patterns is CHAIN_UNTRUSTED."""
    with pytest.raises(ChainUntrusted) as err:
        verify_manifest(_sign(p256), [_provider(p256, sets=("tdx-*", "sgx-enclave"))])
    assert err.value.category is Category.CHAIN_UNTRUSTED
    assert err.value.actual == "snp-launch"
    with pytest.raises(ChainUntrusted):
        verify_manifest(_sign(p256), [_provider(p256, sets=("SNP-*",))])  # case-sensitive


def test_embedded_key_header_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    """A jwk header (a key carried in the token) is refused as MALFORMED."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p256.public_key()))
    token = jwt.api_jws.PyJWS().encode(PAYLOAD, p256, algorithm="ES256",
                                       headers={"jwk": jwk}).encode()
    with pytest.raises(Malformed):
        verify_manifest(token, [_provider(p256)])


@pytest.mark.parametrize("token", [b"", b"abc", b"a.b", b"!!.??.**", b"e30.e30.e30.e30"])
def test_garbage_is_malformed(p256: ec.EllipticCurvePrivateKey, token: bytes) -> None:
    """Tokens that are not JWS compact are MALFORMED."""
    with pytest.raises(Malformed):
        verify_manifest(token, [_provider(p256)])


def test_payload_without_name(p256: ec.EllipticCurvePrivateKey) -> None:
    """A signed payload that is not a named JSON document is MALFORMED."""
    with pytest.raises(Malformed):
        verify_manifest(_sign(p256, b"[1, 2]"), [_provider(p256)])
    with pytest.raises(Malformed):
        verify_manifest(_sign(p256, b"kind: ReferenceValues"), [_provider(p256)])


def test_load_provider(tmp_path: Path, p384: ec.EllipticCurvePrivateKey) -> None:
    """A PEM EC public key loads; an RSA key, a non-PEM file and a missing file do not."""
    path = tmp_path / "provider.pem"
    path.write_bytes(p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    provider = load_provider("build-pipeline", path, ["snp-*"])
    assert provider.sets == ("snp-*",) and provider.alg == "ES384"
    assert provider.covers("snp-launch") and not provider.covers("tdx-mrtd")
    rsa_path = tmp_path / "rsa.pem"
    rsa_path.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a key")
    for candidate in (rsa_path, bad, tmp_path / "missing.pem"):
        with pytest.raises(Malformed) as err:
            load_provider("x", candidate, [])
        assert err.value.rule == "refvalues.provider"


def test_unsupported_curve_refused() -> None:
    """A provider key on another curve (P-521) is refused at configuration."""
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(Malformed):
        Provider(name="x", public_key=key, sets=())
