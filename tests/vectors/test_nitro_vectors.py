"""The real AWS Nitro Enclaves documents (tests/vectors/nitro) through ``keybroker verify --tee
nitro``: each verifies at its own timestamp with the README's module id and PCRs, the two
negatives are SIG_INVALID, every document checked now is CHAIN_UNTRUSTED (expired leaf), the
demo policy accepts the production enclave and refuses the debug ones, and any single changed
byte of a real document is a typed error."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import CONFIG, VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker_cli.main import main
from verifier.claims_view import claims_view, lookup, platform_claims_from_dict, sample_claims
from verifier.nitro.chain import G1_FINGERPRINT, pinned_root
from verifier.nitro.verify import NitroVerifier

NITRO = VECTORS / "nitro"
# file -> (module_id, timestamp ms, the README's non-zero PCRs (index -> first 16 hex digits))
DOCUMENTS = {
    "evervault-2022-10-13-nondebug.cbor": (
        "i-020b6af9246d90e92-enc0183d09086c24190", 1665651482136,
        {0: "f4d48b81a460c991", 1: "bcdf05fefccaa8e5", 2: "d8f114da658de548",
         3: "4a9329d69c836267", 4: "1f442c86d494a881", 8: "8790eb3cce6c83d0"}),
    "evervault-2022-10-12-debug.cbor": (
        "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1", 1665582606081,
        {3: "4a9329d69c836267", 4: "615fa5b1a8838d39"}),
    "evervault-2023-09-18-debug.b64": (
        "i-0918f6c55e3b61d89-enc018aa8b8e2285d13", 1695049410860,
        {3: "4a9329d69c836267", 4: "d0531b1400dd4328"}),
}
NEGATIVE = {"negative/veracruz-2022-11-09-bad-sig.cbor": 1668034320696,
            "negative/eternis-2024-07-23-invalid.b64": 1721770180771}


def at_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def run(capsys: pytest.CaptureFixture[str], path: Path, *extra: str
        ) -> tuple[int, dict[str, object]]:
    code = main(["verify", str(path), "--tee", "nitro", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def raw(name: str) -> bytes:
    data = (NITRO / name).read_bytes()
    return base64.b64decode(data) if name.endswith(".b64") else data


def test_nitro_pinned_root_is_aws_g1() -> None:
    """The pinned root is the vectors' G1 root, with AWS's published fingerprint."""
    root = pinned_root()
    vector = x509.load_pem_x509_certificate((NITRO / "aws-nitro-root-g1.pem").read_bytes())
    assert root.der == vector.public_bytes(Encoding.DER)
    assert G1_FINGERPRINT.startswith("641a0321a3e244ef") and not root.insecure


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_nitro_vector_verifies_at_its_own_timestamp(capsys: pytest.CaptureFixture[str],
                                                    name: str) -> None:
    """CBOR and base64 documents, recognised by content, verify with the README's values."""
    module_id, ms, nonzero = DOCUMENTS[name]
    code, out = run(capsys, NITRO / name, "--at", at_ms(ms))
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    assert (claims["module_id"], claims["timestamp_ms"]) == (module_id, ms)
    pcrs = claims["pcrs"]
    assert isinstance(pcrs, dict) and len(pcrs) == 16
    assert {int(k): v[:16] for k, v in pcrs.items() if v != "00" * 48} == nonzero
    assert claims["debug"] is (0 not in nonzero)
    assert claims["insecure_root"] is False


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_nitro_negative_vector_is_sig_invalid(capsys: pytest.CaptureFixture[str],
                                             name: str) -> None:
    """Genuine chains whose COSE signature does not verify: SIG_INVALID at their own time."""
    code, out = run(capsys, NITRO / name, "--at", at_ms(NEGATIVE[name]))
    assert (code, out["category"], out["rule"]) == (1, "SIG_INVALID", "nitro.signature")


@pytest.mark.parametrize("name", sorted([*DOCUMENTS, *NEGATIVE]))
def test_nitro_vector_checked_now_is_chain_untrusted(capsys: pytest.CaptureFixture[str],
                                                     name: str) -> None:
    """At the current date every leaf has expired: CHAIN_UNTRUSTED, not a crash (row 18)."""
    code, out = run(capsys, NITRO / name)
    assert (code, out["category"], out["rule"]) == (1, "CHAIN_UNTRUSTED", "nitro.chain")
    assert "not valid at validation time" in str(out["actual"])


def test_nitro_demo_policy_accepts_the_production_enclave(
        capsys: pytest.CaptureFixture[str]) -> None:
    """config/policies/nitro-demo.yaml pins PCR0-2 and PCR8 of the non-debug vector."""
    name = "evervault-2022-10-13-nondebug.cbor"
    code, out = run(capsys, NITRO / name, "--at", at_ms(DOCUMENTS[name][1]),
                    "--policy", str(CONFIG / "policies" / "nitro-demo.yaml"))
    assert code == 0, out
    appraisal = out["appraisal"]
    assert isinstance(appraisal, dict) and appraisal["status"] == "affirming"


@pytest.mark.parametrize("name", ["evervault-2022-10-12-debug.cbor",
                                  "evervault-2023-09-18-debug.b64"])
def test_nitro_debug_vectors_are_platform_policy(capsys: pytest.CaptureFixture[str],
                                                 name: str) -> None:
    """Debug-mode enclaves (PCR0-2 zero) are refused by a policy (row 42)."""
    code, out = run(capsys, NITRO / name, "--at", at_ms(DOCUMENTS[name][1]),
                    "--policy", str(CONFIG / "policies" / "nitro-demo.yaml"))
    assert (code, out["category"], out["rule"]) == (1, "PLATFORM_POLICY", "nitro.debug")


def test_nitro_nonce_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--nonce must equal the document's nonce (FRESHNESS otherwise)."""
    name = "evervault-2022-10-13-nondebug.cbor"
    at = at_ms(DOCUMENTS[name][1])
    code, out = run(capsys, NITRO / name, "--at", at)
    claims = out["claims"]
    assert code == 0 and isinstance(claims, dict)
    code, _ = run(capsys, NITRO / name, "--at", at, "--nonce", str(claims["nonce"]))
    assert code == 0
    code, out = run(capsys, NITRO / name, "--at", at, "--nonce", "00" * 32)
    assert (code, out["category"], out["rule"]) == (1, "FRESHNESS", "nitro.nonce")


def test_nitro_timestamp_window(capsys: pytest.CaptureFixture[str]) -> None:
    """Ten minutes after the document (leaf still valid) it is too old for the default window
    (FRESHNESS, row 32) and accepted with a wider --max-age."""
    name = "evervault-2022-10-13-nondebug.cbor"
    later = at_ms(DOCUMENTS[name][1] + 600_000)
    code, out = run(capsys, NITRO / name, "--at", later)
    assert (code, out["category"], out["rule"]) == (1, "FRESHNESS", "nitro.timestamp")
    code, out = run(capsys, NITRO / name, "--at", later, "--max-age", "900")
    assert code == 0, out


VERIFIER = NitroVerifier([pinned_root()], max_age=timedelta(days=1))
REAL = raw("evervault-2022-10-13-nondebug.cbor")
REAL_AT = datetime.fromtimestamp(DOCUMENTS["evervault-2022-10-13-nondebug.cbor"][1] / 1000, UTC)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(REAL) - 1), st.integers(1, 255))
def test_nitro_any_changed_byte_of_a_real_document_is_typed(position: int, flip: int) -> None:
    """One changed byte anywhere in the real document: a typed error, never a pass or a
    crash (the signature covers the payload; the header and envelope are strict)."""
    changed = bytearray(REAL)
    changed[position] ^= flip
    with pytest.raises(KeybrokerError) as exc:
        VERIFIER.verify(bytes(changed), at=REAL_AT)
    assert exc.value.category in {Category.MALFORMED, Category.SIG_INVALID,
                                  Category.CHAIN_UNTRUSTED}


def test_nitro_pcr0_through_reference_values(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    """A policy may leave PCR0 to a reference-value set (evidence.pcrs.0): without the set in
    force the real enclave is MEASUREMENT; with it, the match is named in the appraisal."""
    name = "evervault-2022-10-13-nondebug.cbor"
    pcr0 = ("f4d48b81a460c9916d1e685119074bf24660afd3e34fae9f"
            "ca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b")
    policy = tmp_path / "nitro-refs.yaml"
    policy.write_text("kind: AppraisalPolicy\nname: nitro-refs\nplatform: nitro\n"
                      "nitro:\n  allow_debug: false\n"
                      "reference_values:\n  - {claim: evidence.pcrs.0, set: enclave-images}\n")
    refs = tmp_path / "images.yaml"
    refs.write_text("kind: ReferenceValues\nname: enclave-images\nvalues:\n"
                    f"  - name: release-1\n    value: \"{pcr0}\"\n"
                    "    not_before: 2022-01-01T00:00:00Z\n    not_after: 2023-01-01T00:00:00Z\n")
    base = ["--at", at_ms(DOCUMENTS[name][1]), "--policy", str(policy)]
    code, out = run(capsys, NITRO / name, *base)
    assert (code, out["category"], out["rule"]) == (1, "MEASUREMENT",
                                                    "reference_values.enclave-images")
    code, out = run(capsys, NITRO / name, *base, "--refs", str(refs))
    assert code == 0, out
    appraisal = out["appraisal"]
    assert isinstance(appraisal, dict)
    assert appraisal["matched"] == {"evidence.pcrs.0": "enclave-images@1/release-1"}


def test_nitro_claims_view_round_trip() -> None:
    """Recorded Nitro claims (the real document's and the sample) read back exactly through
    the registry; a dict whose debug flag contradicts its PCRs is refused."""
    claims = VERIFIER.verify(REAL, at=REAL_AT)
    for value in (claims, sample_claims("nitro")[0]):
        assert platform_claims_from_dict(value.as_dict()) == value
    lying = {**claims.as_dict(), "debug": True}
    with pytest.raises(KeybrokerError) as exc:
        platform_claims_from_dict(lying)
    assert exc.value.category is Category.MALFORMED and "debug" in exc.value.reason
    assert lookup(claims_view(claims, sample_claims("nitro")[1]), "evidence.pcrs.0") == (
        claims.pcrs[0].hex())
