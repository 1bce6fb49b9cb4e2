"""Messages that name the real cause (issue: operable), on real vectors through
``keybroker verify``: the category and the key facts of each wording.

- a VCEK for another chip says the hwID differs (not "none found");
- a TCB Info / QE identity without its TCB signing chain says the chain is missing
  (COLLATERAL_STALE), not that the signature is forged;
- a JSON, JWT, CBOR, PEM or DER file given as evidence says what it looks like;
- a collateral file that is not recognised is a warning naming it;
- a collateral path that does not exist is a usage error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.paths import VECTORS

from keybroker.errors import Category, Malformed
from keybroker.evidence.content import looks_like
from keybroker.evidence.dcap_quote import parse_quote
from keybroker.evidence.snp_report import parse_report
from keybroker_cli.main import main

# AMD VCEKs have serial number 0; cryptography warns when they are parsed.
pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning")

GOSEV = VECTORS / "sev-snp/gosev-milan-v2"
GCP = VECTORS / "sev-snp/teekit-gcp-milan-v5"
SPR_QUOTE = VECTORS / "tdx/trustee-spr-v4/tdx_quote_4.dat"
SPR_COLLATERAL = VECTORS / "tdx/gotdx-spr-e4-v4"
ROOTS = VECTORS / "tdx/intel-roots"


def verify_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str]]:
    code = main(["verify", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_vcek_of_another_chip_names_the_hwid(capsys: pytest.CaptureFixture[str]) -> None:
    """A real VCEK of another Milan chip in the collateral: COLLATERAL_STALE saying the hwID
    differs from CHIP_ID, with both values, not "none found"."""
    code, out = verify_json(
        capsys, str(GOSEV / "attestation.bin"), "--tee", "snp", "--collateral",
        str(GCP / "sev-gcp-vcek.pem"), "--collateral", str(GCP / "sev-gcp-cert-chain.pem"),
        "--at", "2022-09-24T01:00:00Z", "--allow-missing-crl")
    assert code == 1
    assert out["category"] == Category.COLLATERAL_STALE.value
    assert "other chips" in out["reason"] and "hwID differs from CHIP_ID" in out["reason"]
    assert out["expected"].startswith("VCEK for CHIP_ID 3ac3fe21e13fb099")
    assert "hwID 980cf7b61876cb37" in out["actual"] and "another chip" in out["actual"]


def test_missing_tcb_signing_chain_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """Real Intel collateral without the TCB signing certificate: COLLATERAL_STALE naming the
    missing chain and the PCS header that carries it (not CHAIN_UNTRUSTED "does not verify")."""
    code, out = verify_json(
        capsys, str(SPR_QUOTE), "--tee", "tdx", "--at", "2023-07-01T01:00:00Z",
        "--collateral", str(SPR_COLLATERAL), "--collateral", str(ROOTS / "IntelSGXRootCA.der"),
        "--collateral", str(ROOTS / "pck-crl-issuer-chain-platform.pem"))
    assert code == 1
    assert out["category"] == Category.COLLATERAL_STALE.value
    assert "no Intel SGX TCB Signing certificate" in out["reason"]
    assert "TCB-Info-Issuer-Chain" in out["reason"]
    assert out["rule"] == "collateral-missing"
    # With the chain the same collateral verifies: the message was about the chain alone.
    code, out = verify_json(capsys, str(SPR_QUOTE), "--tee", "tdx", "--at",
                            "2023-07-01T01:00:00Z", "--collateral", str(SPR_COLLATERAL),
                            "--collateral", str(ROOTS))
    assert code == 0, out


JWT = b"eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl\n"


@pytest.mark.parametrize(("tee", "expected"), [
    ("snp", "not a binary SNP attestation report"),
    ("tdx", "not a binary DCAP quote"),
    ("sgx", "not a binary DCAP quote"),
])
@pytest.mark.parametrize(("content", "looks"), [
    ((VECTORS / "tdx/gotdx-spr-e4-v4/sample_tcbInfo_response").read_bytes(),
     "a JSON document (keys: signature, tcbInfo)"),
    (JWT, "a JWT"),
    (b"\xd2\x84\x44\xa1\x01\x38\x22\xa0\x40\x40", "CBOR"),
    ((GCP / "sev-gcp-vcek.pem").read_bytes(), "PEM text (CERTIFICATE)"),
    ((GOSEV / "vcek.der").read_bytes(), "DER"),
])
def test_foreign_input_says_what_it_looks_like(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], tee: str,
                                               expected: str, content: bytes,
                                               looks: str) -> None:
    """A JSON, JWT, CBOR, PEM or DER file given as evidence is MALFORMED saying what it is and
    what was expected (not "unsupported quote version 8827")."""
    path = tmp_path / "evidence"
    path.write_bytes(content)
    code, out = verify_json(capsys, str(path), "--tee", tee)
    assert code == 1
    assert out["category"] == Category.MALFORMED.value
    assert looks in out["reason"] and expected in out["reason"]
    assert "version" not in out["reason"].split(", not")[0]


def test_content_recognition_is_only_a_message() -> None:
    """Real binary evidence is not "recognised" as anything else, and recognition never makes
    the parsers accept anything: the same inputs stay MALFORMED."""
    assert looks_like((GOSEV / "attestation.bin").read_bytes()) is None
    assert looks_like(SPR_QUOTE.read_bytes()) is None
    for parse in (parse_report, parse_quote):
        with pytest.raises(Malformed, match="a JWT"):
            parse(JWT)
        with pytest.raises(Malformed):
            parse(b"")


def test_unrecognised_collateral_file_is_a_warning(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Files that are not collateral are named in a warning (and the verification still runs
    on what was recognised)."""
    junk, other_json = tmp_path / "notes.txt", tmp_path / "inventory.json"
    junk.write_text("fleet inventory, not collateral\n")
    other_json.write_text('{"hosts": [], "owner": "x"}')
    code = main(["verify", str(GOSEV / "attestation.bin"), "--tee", "snp", "--collateral",
                 str(GOSEV / "vcek.der"), "--collateral", str(tmp_path), "--at",
                 "2022-09-24T01:00:00Z", "--allow-missing-crl"])
    err = capsys.readouterr().err
    assert code == 0
    assert f"WARNING: collateral file ignored: {junk}: not a certificate, CRL" in err
    assert f"WARNING: collateral file ignored: {other_json}: JSON with keys hosts, owner" in err


def test_missing_collateral_path_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``--collateral /nonexistent``: exit 2 naming the path and the reason."""
    code = main(["verify", str(SPR_QUOTE), "--tee", "tdx", "--collateral", "/nonexistent"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot read collateral /nonexistent: no such file or directory" in err
