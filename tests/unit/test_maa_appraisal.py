"""MAA tokens as upstream evidence in the registry: the ``maa:`` policy section, the appraisal's
categories, the claims view, instance selection, and a whole appraisal through the verifier
service with a token whose runtime data carries the challenge binding (signed by a test key
standing in for an MAA instance; the real token's chain is in tests/vectors/test_maa_token.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from support.view_checks import round_trips_or_is_malformed

from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.v1 import evidence_pb2, verifier_pb2
from verifier.maa.appraisal import appraise_maa
from verifier.maa.tee import MaaEvidence
from verifier.maa.token import MaaInstance, load_jwks
from verifier.maa.verify import MaaVerifier
from verifier.maa.view import maa_claims_from_dict, sample_maa_claims
from verifier.policy.compile import parse_policy
from verifier.policy.model import AppraisalPolicy
from verifier.result import ResultSigner
from verifier.service import VerifierServicer

ISSUER = "https://sharedeus.eus.attest.azure.net"
SAMPLE = sample_maa_claims()
SGX = (f"  sgx:\n    mrenclave: ['{'9a' * 32}']\n    mrsigner: ['{'79' * 32}']\n"
       "    product_id: 1\n    min_svn: 1\n")
BASE = f"  issuers: ['{ISSUER}']\n  attestation_types: [sgx]\n" + SGX


def policy(maa: str = BASE, name: str = "m") -> AppraisalPolicy:
    return parse_policy(f"kind: AppraisalPolicy\nname: {name}\nplatform: maa\nmaa:\n{maa}"
                        .encode(), "m.yaml")


def test_sample_claims_pass() -> None:
    """The sample SGX claims pass a policy pinning their enclave."""
    assert appraise_maa(SAMPLE, policy()).status == "affirming"


@pytest.mark.parametrize(("change", "maa", "category", "rule"), [
    ({"issuer": "https://other.weu.attest.azure.net"}, BASE, Category.PLATFORM_POLICY,
     "maa.issuers"),
    ({"attestation_type": "sevsnpvm", "sgx_mrenclave": None}, BASE, Category.PLATFORM_POLICY,
     "maa.attestation_types"),
    ({"sgx_debuggable": True}, BASE, Category.PLATFORM_POLICY, "maa.sgx.debug"),
    ({"sgx_debuggable": None}, BASE, Category.PLATFORM_POLICY, "maa.sgx.debug"),
    ({"sgx_mrenclave": bytes(32)}, BASE, Category.MEASUREMENT, "maa.sgx.mrenclave"),
    ({"sgx_mrsigner": bytes(32)}, BASE, Category.MEASUREMENT, "maa.sgx.mrsigner"),
    ({"sgx_product_id": 2}, BASE, Category.MEASUREMENT, "maa.sgx.product_id"),
    ({"sgx_svn": 0}, BASE, Category.TCB_POLICY, "maa.sgx.min_svn"),
    ({"secure_boot": False}, BASE + "  secure_boot: true\n", Category.PLATFORM_POLICY,
     "maa.secure_boot"),
    ({}, BASE + f"  launch_measurements: ['{'00' * 48}']\n", Category.MEASUREMENT,
     "maa.launch_measurements"),
])
def test_each_rule_refuses_with_its_category(change: dict[str, object], maa: str,
                                             category: Category, rule: str) -> None:
    """Every MAA rule raises its own category and rule (none is a silent pass)."""
    with pytest.raises(KeybrokerError) as exc:
        appraise_maa(dataclasses.replace(SAMPLE, **change), policy(maa))  # type: ignore[arg-type]
    assert (exc.value.category, exc.value.rule) == (category, rule)


def test_cvm_tokens_pass_on_secure_boot_and_launch_measurement() -> None:
    """A confidential-VM token passes a policy of its type, secure boot and measurement."""
    cvm = dataclasses.replace(SAMPLE, attestation_type="sevsnpvm", sgx_mrenclave=None)
    maa = (f"  issuers: ['{ISSUER}']\n  attestation_types: [sevsnpvm]\n  secure_boot: true\n"
           f"  launch_measurements: ['{'5f' * 48}']\n")
    assert appraise_maa(cvm, policy(maa)).status == "affirming"
    sgx_token = dataclasses.replace(SAMPLE, attestation_type="sevsnpvm")
    with pytest.raises(KeybrokerError) as exc:  # SGX claims but the policy pins no enclave
        appraise_maa(sgx_token, policy(maa))
    assert exc.value.rule == "maa.sgx"


@pytest.mark.parametrize(("maa", "where"), [
    ("  attestation_types: [sgx]\n" + SGX, "issuers"),
    (f"  issuers: ['{ISSUER}']\n" + SGX, "attestation_types"),
    (f"  issuers: ['{ISSUER}']\n  attestation_types: [sgx]\n", "sgx"),
    ("  issuers: ['http://plain.example']\n  attestation_types: [sgx]\n" + SGX, "issuers"),
    (BASE + "  colour: red\n", "colour"),
    (f"  issuers: ['{ISSUER}']\n  attestation_types: [sgx]\n  sgx: {{min_svn: 1}}\n",
     "mrenclave"),
])
def test_compiling_is_strict(maa: str, where: str) -> None:
    """Missing issuers or types, accepting sgx without pinning the enclave, plain-HTTP
    issuers and unknown keys are MALFORMED naming the field."""
    with pytest.raises(Malformed) as exc:
        policy(maa)
    assert where in exc.value.reason or where in (exc.value.expected or ""), exc.value


def test_view_is_the_exact_inverse() -> None:
    """``maa_claims_from_dict(c.as_dict()) == c`` for the sample and for a bare CVM token."""
    assert maa_claims_from_dict(SAMPLE.as_dict()) == SAMPLE
    bare = dataclasses.replace(SAMPLE, sgx_mrenclave=None, sgx_mrsigner=None,
                               sgx_product_id=None, sgx_svn=None, sgx_debuggable=None,
                               sgx_report_data=None, sgx_runtime_data=None,
                               isolation_tee=None, secure_boot=None, runtime_nonce=None)
    assert maa_claims_from_dict(bare.as_dict()) == bare


@given(st.dictionaries(st.sampled_from(sorted(SAMPLE.as_dict())),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                       max_size=4))
def test_view_rejects_any_wrong_value_as_malformed(changes: dict[str, object]) -> None:
    """Arbitrary values in any claim either round-trip or raise only MALFORMED."""
    round_trips_or_is_malformed(maa_claims_from_dict, {**SAMPLE.as_dict(), **changes})


class Instance:
    """A stand-in MAA instance: an RSA key published as a JWKS, issuing RS256 tokens."""

    def __init__(self, kid: str = "test-kid", issuer: str = ISSUER) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid, self.issuer = kid, issuer
        numbers = self.key.public_key().public_numbers()

        def b64(n: int) -> str:
            raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        self.jwks = json.dumps({"keys": [{"kty": "RSA", "kid": kid, "n": b64(numbers.n),
                                           "e": b64(numbers.e)}]}).encode()

    def instance(self) -> MaaInstance:
        return MaaInstance(load_jwks(self.jwks), self.issuer)

    def token(self, runtime_data: bytes, **claims: object) -> str:
        now = int(time.time())
        body: dict[str, object] = {
            "iss": self.issuer, "iat": now, "nbf": now, "exp": now + 600,
            "x-ms-attestation-type": "sgx", "x-ms-sgx-mrenclave": "9a" * 32,
            "x-ms-sgx-mrsigner": "79" * 32, "x-ms-sgx-product-id": 1, "x-ms-sgx-svn": 1,
            "x-ms-sgx-is-debuggable": False,
            "x-ms-sgx-ehd": base64.urlsafe_b64encode(runtime_data).rstrip(b"=").decode()}
        body.update(claims)
        pem = self.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        return jwt.encode(body, pem, algorithm="RS256", headers={"kid": self.kid})


def test_instance_is_chosen_by_kid_and_pinned_by_issuer() -> None:
    """Two instances: each token verifies with its own; a kid nobody holds is TOKEN_INVALID;
    a token whose issuer is not its key's instance is TOKEN_INVALID."""
    east, west = Instance("east"), Instance("west", "https://sharedweu.weu.attest.azure.net")
    verifier = MaaVerifier([east.instance(), west.instance()])
    now = datetime.now(UTC)
    for inst in (east, west):
        claims = verifier.verify(evidence_pb2.MaaEvidence(token=inst.token(b"x" * 64)), at=now)
        assert claims.issuer == inst.issuer and claims.report_data == b"x" * 64
    stranger = Instance("stranger")
    for token, rule in ((stranger.token(b"x"), "maa.kid"),
                        (east.token(b"x", iss=west.issuer), "maa.iss")):
        with pytest.raises(KeybrokerError) as exc:
            verifier.verify(evidence_pb2.MaaEvidence(token=token), at=now)
        assert (exc.value.category, exc.value.rule) == (Category.TOKEN_INVALID, rule)


def test_maa_appraisal_through_the_verifier_service() -> None:
    """The verifier service finds the maa arm through the registry, checks the runtime data
    against the challenge binding and the policy, and signs a token; other runtime data is
    BINDING."""
    inst = Instance()
    servicer = VerifierServicer(
        verifiers={"maa": MaaEvidence(MaaVerifier([inst.instance()]))},
        signer=ResultSigner.generate(), insecure=False, policies={"m": policy()})
    binding = bytes(range(64))

    def request(runtime: bytes) -> verifier_pb2.AppraiseRequest:
        return verifier_pb2.AppraiseRequest(
            evidence=evidence_pb2.Evidence(maa=evidence_pb2.MaaEvidence(
                token=inst.token(runtime))),
            expected_report_data=binding, nonce=b"n", policy_ids=["m"])
    token = servicer.appraise(request(binding), "digest")
    claims = jwt.decode(token, options={"verify_signature": False})
    (submod,) = claims["submods"].values()
    assert submod["ear.status"] == "affirming"
    with pytest.raises(KeybrokerError) as exc:
        servicer.appraise(request(b"\x00" * 64), "digest")
    assert exc.value.category is Category.BINDING
