"""Azure vTPM binding cases that need a re-signed hardware report (hostile-evidence row 54),
built with the SEV-SNP simulator under its test root: report_data[32:64] not zero, user-data
not the expected binding, and an HCLAkPub that is not the quote's signer; plus the HCL
parser's properties (round trip; arbitrary bytes raise only MALFORMED)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.evidence.hcl_report import (
    REPORT_TYPE_SNP,
    HclReport,
    build_hcl_report,
    parse_hcl_report,
)
from keybroker.evidence.snp_certs import GUID_VCEK, parse_cert_table
from keybroker.evidence.tpm_public import public_from_key
from keybroker.evidence.tpm_quote import (
    ALG_RSASSA,
    ST_ATTEST_QUOTE,
    TPM_GENERATED,
    Attest,
    PcrSelection,
    QuoteInfo,
    TpmSignature,
    build_attest,
    build_quote_info,
    build_signature,
)
from keybroker.v1 import evidence_pb2, verifier_pb2
from verifier.azure.evidence import AzureEvidence
from verifier.azure.tee import AzureVtpmEvidence
from verifier.azure.verify import AzureVmVerifier, verify_azure
from verifier.policy.compile import parse_policy
from verifier.result import ResultSigner
from verifier.service import VerifierServicer
from verifier.snp.tee import SnpEvidence
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier
from verifier.tpm_quote import verify_quote

AK = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PCRS = tuple(hashlib.sha256(bytes([i])).digest() for i in range(24))


def _jwk(key: rsa.RSAPrivateKey) -> dict[str, object]:
    numbers = key.public_key().public_numbers()

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(
            value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    return {"kid": "HCLAkPub", "kty": "RSA", "key_ops": ["sign"], "n": b64(numbers.n),
            "e": b64(numbers.e)}


def _evidence(tmp_path: Path, *, tail: bytes = bytes(32), user_data: bytes = bytes(64),
              signer: rsa.RSAPrivateKey = AK, extra_data: bytes = b"nonce"
              ) -> tuple[AzureEvidence, AmdTrustStore, bytes]:
    ca = SnpTestCa.generate()
    ca.save(tmp_path)
    claims = json.dumps({"keys": [_jwk(AK)], "vm-configuration": {"secure-boot": True},
                         "user-data": user_data.hex()}).encode()
    simulator = SnpSimulator(ca)
    report = simulator.sign(simulator.report(hashlib.sha256(claims).digest() + tail))
    hcl = build_hcl_report(HclReport(1, 0, 2, 0, report, 0, 1, REPORT_TYPE_SNP, 1, claims))
    digest = hashlib.sha256(b"".join(PCRS)).digest()
    info = build_quote_info(QuoteInfo((PcrSelection.of(0x000B, set(range(24))),), digest))
    message = build_attest(Attest(TPM_GENERATED, ST_ATTEST_QUOTE, b"", extra_data, 1, 0, 0, 1,
                                  0, info, b""))
    signature = signer.sign(message, padding.PKCS1v15(), hashes.SHA256())
    evidence = AzureEvidence("v0", hcl, message, signature, PCRS, None, None)
    trust = AmdTrustStore.pinned().with_simulator_roots([tmp_path / "ark.pem"])
    return evidence, trust, simulator.cert_table()


def _verify(evidence: AzureEvidence, trust: AmdTrustStore, simulator_table: bytes,
            **kwargs: Any) -> Any:
    def hardware(report: bytes, _: AzureEvidence) -> Any:
        return SnpVerifier(trust).verify(report, simulator_table,
                                         at=datetime.now(UTC), allow_missing_crl=True)

    def quote(ev: AzureEvidence, key: rsa.RSAPublicKey) -> Any:
        sig = build_signature(TpmSignature(ALG_RSASSA, 0x000B, ev.tpm_signature))
        return verify_quote(ev.tpm_message, sig, public_from_key(key),
                            {0x000B: dict(enumerate(ev.pcrs))}, nonce=b"nonce")

    return verify_azure(evidence, "az-snp-vtpm", hardware=hardware, quote=quote, **kwargs)


def test_simulated_azure_evidence_verifies(tmp_path: Path) -> None:
    """The construction itself is sound: untouched, it verifies (so each refusal below is
    about the one thing changed)."""
    evidence, trust, table = _evidence(tmp_path)
    claims = _verify(evidence, trust, table, user_data=bytes(64))
    assert claims.runtime.vm_configuration == {"secure-boot": True}
    assert claims.insecure_root is True


@pytest.mark.parametrize(("case", "category", "rule"), [
    ("tail", Category.BINDING, "azure.runtime-claims"),    # report_data[32:64] not zero
    ("user-data", Category.BINDING, "azure.user-data"),    # not our binding
    ("signer", Category.SIG_INVALID, "tpm.signature"),     # HCLAkPub did not sign the quote
])
def test_row_54_bindings(tmp_path: Path, case: str, category: Category, rule: str) -> None:
    evidence, trust, table = _evidence(
        tmp_path, tail=b"\x01" * 32 if case == "tail" else bytes(32),
        user_data=b"\x02" * 64 if case == "user-data" else bytes(64),
        signer=OTHER if case == "signer" else AK)
    with pytest.raises(KeybrokerError) as exc:
        _verify(evidence, trust, table, user_data=bytes(64))
    assert (exc.value.category, exc.value.rule) == (category, rule)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(1, 3), st.sampled_from([2, 4]))
def test_hcl_round_trip(claims: bytes, version: int, report_type: int) -> None:
    report = HclReport(version, 0, 2, 0, bytes(range(256)) * 4 + bytes(160), 0, 1,
                       report_type, 1, claims)
    assert parse_hcl_report(build_hcl_report(report, pad_to=2600)) == report


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=1500))
def test_hcl_arbitrary_bytes_raise_only_malformed(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        parse_hcl_report(data)
    with contextlib.suppress(Malformed):
        parse_hcl_report(b"HCLA" + data)


def _document(evidence: AzureEvidence, table: bytes) -> bytes:
    """Trustee's v0 JSON of ``evidence`` (byte arrays), the VCEK taken from the table."""
    vcek = parse_cert_table(table).get(GUID_VCEK)
    assert vcek is not None
    return json.dumps({
        "report": list(evidence.hcl_report),
        "quote": {"signature": list(evidence.tpm_signature),
                  "message": list(evidence.tpm_message),
                  "pcrs": [list(p) for p in evidence.pcrs]},
        "vcek": base64.b64encode(vcek).decode()}).encode()


def test_azure_family_through_the_verifier_service(tmp_path: Path) -> None:
    """The registry path end to end in the verifier service: the az_snp_vtpm arm, the SNP part
    through the SEV-SNP family's verifier (simulator root, insecure switch on), the binding in
    the runtime claims' user-data and in the quote's extraData. Other user-data is BINDING,
    another extraData FRESHNESS."""
    binding = bytes(range(64))
    measurement = SnpSimulator(SnpTestCa.generate()).report(bytes(64)).measurement.hex()
    policy = parse_policy((
        "kind: AppraisalPolicy\nname: az\nplatform: az-snp-vtpm\naz_snp_vtpm:\n"
        f"  measurements: ['{measurement}']\n  vm_configuration: {{secure-boot: true}}\n"
        "  allow_missing_crl: true\n").encode(), "az.yaml")

    def appraise(**changes: bytes) -> str:
        args: dict[str, bytes] = {"user_data": binding, "extra_data": binding}
        args.update(changes)
        evidence, _, table = _evidence(tmp_path, **args)  # type: ignore[arg-type]
        # Azure evidence carries only the VCEK: the ASK is pinned with the (simulator) ARK.
        roots = tmp_path / "ark-ask.pem"
        roots.write_bytes((tmp_path / "ark.pem").read_bytes() + (tmp_path / "ask.pem").read_bytes())
        peer = SnpEvidence(SnpVerifier(AmdTrustStore.pinned().with_simulator_roots([roots])))
        servicer = VerifierServicer(
            verifiers={"az_snp_vtpm": AzureVtpmEvidence(
                {"az-snp-vtpm": AzureVmVerifier("az-snp-vtpm", peer)})},
            signer=ResultSigner.generate(), insecure=True, policies={"az": policy})
        request = verifier_pb2.AppraiseRequest(
            evidence=evidence_pb2.Evidence(az_snp_vtpm=evidence_pb2.AzureVtpmEvidence(
                evidence=_document(evidence, table))),
            expected_report_data=binding, nonce=b"n", policy_ids=["az"])
        return servicer.appraise(request, "digest")
    token = jwt.decode(appraise(), options={"verify_signature": False})
    (submod,) = token["submods"].values()
    assert submod["ear.status"] == "warning"  # the simulator's CRL is absent, and allowed
    for changes, category in (({"user_data": bytes(64)}, Category.BINDING),
                              ({"extra_data": b"other"}, Category.FRESHNESS)):
        with pytest.raises(KeybrokerError) as exc:
            appraise(**changes)
        assert exc.value.category is category
