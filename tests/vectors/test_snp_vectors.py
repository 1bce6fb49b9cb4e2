"""Real SEV-SNP vectors (tests/vectors/sev-snp) through `keybroker verify` and the chain code."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from support.paths import ROOT, VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_certs import (
    GUID_ASK,
    GUID_VCEK,
    build_cert_table,
    decode_amd_extensions,
)
from keybroker_cli.main import main
from verifier.collateral.cache import CollateralStore
from verifier.pki import Certificate
from verifier.snp.chain import ChainValidator
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

# AMD VCEKs have serial number 0; cryptography warns when tests parse them directly.
pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning")

SNP_VECTORS = VECTORS / "sev-snp"
REPO = ROOT

# (report, collateral, time, expected claims) from tests/vectors/README.md.
GOOD = {
    "gosev-milan-v2": (
        "gosev-milan-v2/attestation.bin", ["gosev-milan-v2/vcek.der"], "2022-09-24T01:00:00Z",
        {"version": 2, "product": "Milan", "signing_key": "vcek", "vmpl": 0, "guest_svn": 0,
         "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                        "6bdf8a9ece31a5a608eb0cf2e4872b01",
         "report_data": "0102030405" + "00" * 59, "host_data": "00" * 32,
         "chip_id": "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
                    "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
         "reported_tcb": {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68,
                          "raw": "0200000000000544"},
         "policy.raw": "0xb0000", "platform_info.raw": "0x1", "current_firmware": "1.49.3",
         "cpuid": None}),
    "trustee-milan-v2-idblock": (
        "trustee-milan-v2-idblock/test-report.bin", ["trustee-milan-v2-idblock/test-vcek.der"],
        "2024-01-01T00:00:00Z",
        {"version": 2, "product": "Milan", "guest_svn": 4, "vmpl": 0,
         "measurement": "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c"
                        "23500644e0e692e6be917f9050d3d38c",
         "id_key_digest": "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca49"
                          "1ecdd7f336dc28a6e0b2bb57af7a44a3",
         "report_data": "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
                        + "00" * 32,
         "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115,
                          "raw": "0300000000000873"},
         "current_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 0xCE,
                         "raw": "03000000000008ce"},
         "policy.raw": "0x3001f", "current_firmware": "1.52.4"}),
    "trustee-aws-milan-vlek-v3": (
        "trustee-aws-milan-vlek-v3/test-vlek-report.bin",
        ["trustee-aws-milan-vlek-v3/test-vlek.der"], "2025-06-01T00:00:00Z",
        {"version": 3, "product": "Milan", "signing_key": "vlek", "vmpl": 1,
         "csp_id": "CN=cc-us-east-2.amazonaws.com", "chip_id": "00" * 64,
         "measurement": "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4"
                        "e8c9af857f5ceeb5a493df2a570d7bf0",
         "reported_tcb": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 217,
                          "raw": "04000000000018d9"},
         "platform_info.raw": "0x27", "cpuid": [0x19, 0x01, 0x01],
         "current_firmware": "1.55.29"}),
    "teekit-gcp-milan-v5": (
        "teekit-gcp-milan-v5/sev-gcp.bin", ["teekit-gcp-milan-v5/sev-gcp-vcek.pem"],
        "2026-01-01T00:00:00Z",
        {"version": 5, "product": "Milan", "vmpl": 0, "report_data": "00" * 64,
         "measurement": "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1"
                        "b6d19251b8ee600fd16a3708f58406f3",
         "chip_id": "980cf7b61876cb37fd517cd44ce11c72d43c5408e66ab39138370ec59bc195e0"
                    "63254cb501d87d82f0b8b8dc774bcfe28019447711598f007390e4accc405361",
         "reported_tcb": {"bootloader": 4, "tee": 0, "snp": 27, "microcode": 222,
                          "raw": "0400000000001bde"},
         "launch_mit_vector": 0x0B, "current_mit_vector": 0x0B, "cpuid": [0x19, 0x01, 0x01],
         "current_firmware": "1.55.35"}),
    "teekit-gcp-milan-v5-reportdata": (
        "teekit-gcp-milan-v5/sev-gcp-reportdata.bin",
        ["teekit-gcp-milan-v5/sev-gcp-vcek.pem", "teekit-gcp-milan-v5/sev-gcp-cert-chain.pem"],
        "2026-01-01T00:00:00Z",
        {"version": 5, "vmpl": 1,
         "report_data": "32fc4f6c1971cbf91566231f8d6153eeb9d093aa94306cb48d39bcc4861a3d39"
                        "5f149876a37bc91332fe493f46294fd135d5b95d363ae96352b8c45f906079f5"}),
    "trustee-e2e-genoa-v3": (
        "trustee-e2e-genoa-v3/report.bin", ["trustee-e2e-genoa-v3/vcek.der"],
        "2026-01-01T00:00:00Z",
        {"version": 3, "product": "Genoa", "vmpl": 0, "cpuid": [0x19, 0xA0, 0x02],
         "measurement": "6a6519d757e68c2e939c9dbbbc1828498e8de35d2766dd05f1a2cca5059d0cf4"
                        "ae62a36d75c837974dd50b315506e73e",
         "chip_id": "371c55d6d15cb50f16dc31d39a24e300caaabff4431e841111429b73ec45ad67"
                    "ea6e687ffae7bf84b54a5d0e6d79b3ef6ff0bd8b4cff94c2163af5c5de8718e8",
         "reported_tcb": {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 25,
                          "raw": "0a00000000001719"},
         "current_firmware": "1.55.40"}),
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, object]]:
    code = main(["verify", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def lookup(claims: dict[str, object], dotted: str) -> object:
    value: object = claims
    for part in dotted.split("."):
        assert isinstance(value, dict)
        value = value[part]
    return value


CRL_DIR = SNP_VECTORS / "amd-crl"
MILAN_CRL = CRL_DIR / "milan_vcek_crl_2026-06-22.der"
GENOA_CRL = CRL_DIR / "genoa_vcek_crl_2026-07-28.der"
# Vectors whose endorsement key is valid inside a real AMD CRL's window: (CRL, time).
IN_CRL_WINDOW = {
    "gosev-milan-v2": (MILAN_CRL, "2026-07-01T00:00:00Z"),
    "trustee-milan-v2-idblock": (MILAN_CRL, "2026-07-01T00:00:00Z"),
    "teekit-gcp-milan-v5": (MILAN_CRL, "2026-07-01T00:00:00Z"),
    "trustee-e2e-genoa-v3": (GENOA_CRL, "2026-08-01T00:00:00Z"),
}


def vector_argv(name: str, *extra: str, when: str | None = None) -> list[str]:
    report, collateral, default_when, _ = GOOD[name]
    argv = [str(SNP_VECTORS / report), "--tee", "snp", "--at", when or default_when, *extra]
    for c in collateral:
        argv += ["--collateral", str(SNP_VECTORS / c)]
    return argv


@pytest.mark.parametrize("name", sorted(GOOD))
def test_vector_verifies_through_cli(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each real SNP vector verifies via `keybroker verify --allow-missing-crl` with the
    README's expected claims, and the missing ARK CRL named as a warning."""
    _, _, _, expected = GOOD[name]
    code, doc = cli_json(capsys, vector_argv(name, "--allow-missing-crl"))
    assert code == 0, doc
    assert doc["verdict"] == "verified" and doc["category"] is None
    claims = doc["claims"]
    assert isinstance(claims, dict)
    assert claims["insecure_root"] is False
    product = claims["product"]
    assert claims["collateral_warnings"] == [f"ARK-{product} CRL missing"]
    for key, value in expected.items():
        assert lookup(claims, key) == value, key


@pytest.mark.parametrize("name", sorted(GOOD))
def test_vector_without_crl_is_collateral_stale_naming_it(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without an AMD CRL and without --allow-missing-crl every vector is COLLATERAL_STALE,
    and the message names the missing CRL (issue 10: SNP revocation no longer fails open)."""
    code, doc = cli_json(capsys, vector_argv(name))
    assert code == 1 and doc["verdict"] == "rejected"
    assert doc["category"] == "COLLATERAL_STALE" and doc["rule"] == "crl-missing"
    assert "ARK-" in str(doc["reason"]) and "CRL" in str(doc["reason"])


@pytest.mark.parametrize("name", sorted(IN_CRL_WINDOW))
def test_vector_with_real_amd_crl_verifies_without_warning(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With the real AMD CRL of its product, inside that CRL's window, a vector verifies with
    no flag and no collateral warning (the pinned ASK/ASVK is not listed)."""
    crl, when = IN_CRL_WINDOW[name]
    code, doc = cli_json(capsys, vector_argv(name, "--collateral", str(crl), when=when))
    assert code == 0, doc
    claims = doc["claims"]
    assert isinstance(claims, dict) and claims["collateral_warnings"] == []


def test_real_amd_crl_past_next_update_is_stale(capsys: pytest.CaptureFixture[str]) -> None:
    """The real Milan CRL after its nextUpdate is COLLATERAL_STALE (crl-window); with
    --allow-missing-crl it verifies and says the CRL is stale."""
    argv = vector_argv("gosev-milan-v2", "--collateral", str(MILAN_CRL),
                       when="2026-09-01T00:00:00Z")
    code, doc = cli_json(capsys, argv)
    assert (code, doc["category"], doc["rule"]) == (1, "COLLATERAL_STALE", "crl-window")
    code, doc = cli_json(capsys, [*argv, "--allow-missing-crl"])
    assert code == 0 and doc["claims"]["collateral_warnings"] == ["ARK-Milan CRL stale"]


def test_real_crl_of_another_product_is_forged_not_missing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The real Genoa CRL re-labelled with ARK-Milan's name cannot verify under ARK-Milan:
    CHAIN_UNTRUSTED even with --allow-missing-crl (a bad CRL is never "missing")."""
    crl = x509.load_der_x509_crl(GENOA_CRL.read_bytes())
    milan = x509.load_der_x509_crl(MILAN_CRL.read_bytes())
    raw = bytearray(GENOA_CRL.read_bytes())
    genoa_name = crl.issuer.public_bytes()
    milan_name = milan.issuer.public_bytes()
    assert len(genoa_name) == len(milan_name) and raw.count(genoa_name) == 1
    start = raw.index(genoa_name)
    raw[start:start + len(genoa_name)] = milan_name
    forged = tmp_path / "forged.crl"
    forged.write_bytes(bytes(raw))
    argv = vector_argv("gosev-milan-v2", "--collateral", str(forged), "--allow-missing-crl",
                       when="2026-08-01T00:00:00Z")
    code, doc = cli_json(capsys, argv)
    assert (code, doc["category"], doc["rule"]) == (1, "CHAIN_UNTRUSTED", "crl-signature")


def test_vector_collateral_directory_and_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    """Collateral directories are scanned by content (the VCEK in one, the real Genoa CRL in
    another); the human output ends with the verdict."""
    code = main(["verify", str(SNP_VECTORS / "trustee-e2e-genoa-v3/report.bin"), "--tee", "snp",
                 "--collateral", str(SNP_VECTORS / "trustee-e2e-genoa-v3"),
                 "--collateral", str(CRL_DIR), "--at", "2026-08-01T00:00:00Z"])
    out = capsys.readouterr().out
    assert code == 0
    assert "product: Genoa" in out
    assert out.strip().endswith("verdict: verified")


def test_vector_vcek_from_cert_table(tmp_path: Path) -> None:
    """The VCEK may come from the extended-report certificate table instead of collateral."""
    table = tmp_path / "table.bin"
    table.write_bytes(build_cert_table([(GUID_VCEK,
                                         (SNP_VECTORS / "gosev-milan-v2/vcek.der").read_bytes())]))
    code = main(["verify", str(SNP_VECTORS / "gosev-milan-v2/attestation.bin"), "--tee", "snp",
                 "--cert-table", str(table), "--at", "2022-09-24T01:00:00Z",
                 "--allow-missing-crl"])
    assert code == 0


def test_vector_subprocess_console_script() -> None:
    """The installed `keybroker` console script verifies a vector and exits 0 with JSON."""
    exe = REPO / ".venv" / "bin" / "keybroker"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "keybroker_cli.main"]
    proc = subprocess.run(
        [*command, "verify", str(SNP_VECTORS / "trustee-aws-milan-vlek-v3/test-vlek-report.bin"),
         "--tee", "snp", "--collateral",
         str(SNP_VECTORS / "trustee-aws-milan-vlek-v3/test-vlek.der"),
         "--at", "2025-06-01T00:00:00Z", "--allow-missing-crl", "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "verified"
    assert doc["claims"]["signing_key"] == "vlek"
    assert "ARK-Milan CRL missing" in proc.stderr


def test_turin_vcek_extensions() -> None:
    """The Turin VCEK decodes as structVersion 1 with an 8-byte hwID and fmcSPL."""
    cert = x509.load_der_x509_certificate((SNP_VECTORS / "virtee-turin-vcek/vcek_turin.der")
                                          .read_bytes())
    ext = decode_amd_extensions(cert)
    assert ext.struct_version == 1 and ext.turin_layout
    assert ext.product_name == "Turin" and ext.product_line == "Turin"
    assert ext.hw_id == bytes.fromhex("1e550a8ee5cf9f4d")
    assert ext.csp_id is None
    assert ext.spls == {9: 0, 1: 0, 2: 0, 3: 0, 5: 0, 6: 0, 7: 0, 8: 9}
    assert ext.spl_mismatches(bytes.fromhex("0000000000000009")) == []
    assert ext.spl_mismatches(bytes.fromhex("0100000000000009")) == [
        "fmcSPL: certificate=0 report=1"]


def test_turin_vcek_chains_to_turin_ask_and_ark() -> None:
    """The Turin VCEK verifies under the pinned SEV-Turin ASK and ARK-Turin (RSA-PSS)."""
    validator = ChainValidator(AmdTrustStore.pinned(), CollateralStore.empty())
    leaf = Certificate.from_der((SNP_VECTORS / "virtee-turin-vcek/vcek_turin.der").read_bytes())
    key = validator.validate(leaf, kind="vcek", product="Turin", evidence_certs=[],
                             at=at("2025-01-01T00:00:00Z"), allow_missing_crl=True)
    assert key.product == "Turin" and not key.insecure
    assert key.crl_warning == "ARK-Turin CRL missing"
    assert key.intermediate.cert.subject.rfc4514_string().startswith("CN=SEV-Turin,")
    with pytest.raises(KeybrokerError) as exc:
        validator.validate(leaf, kind="vcek", product="Milan", evidence_certs=[],
                           at=at("2025-01-01T00:00:00Z"))
    assert exc.value.category is Category.CHAIN_UNTRUSTED
    shipped = x509.load_pem_x509_certificates(
        (SNP_VECTORS / "virtee-turin-vcek/cert_chain_turin").read_bytes())
    assert shipped[1].public_bytes(Encoding.DER) == key.anchor.ark.der


@pytest.mark.parametrize("bad", ["trustee-test-vcek-invalid-legacy.der",
                                 "trustee-test-vcek-invalid-new.der"])
def test_invalid_trustee_vceks_rejected(bad: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Project-made VCEKs (bad signature, foreign hwID) with the idblock report: CHAIN_UNTRUSTED."""
    table = tmp_path / "table.bin"
    table.write_bytes(build_cert_table([(GUID_VCEK,
                                         (SNP_VECTORS / "negative" / bad).read_bytes())]))
    code, doc = cli_json(capsys, [str(SNP_VECTORS / "trustee-milan-v2-idblock/test-report.bin"),
                                  "--tee", "snp", "--cert-table", str(table),
                                  "--at", "2024-01-01T00:00:00Z"])
    assert code == 1
    assert doc["verdict"] == "rejected" and doc["category"] == "CHAIN_UNTRUSTED"


def test_azure_hcl_report_is_malformed(capsys: pytest.CaptureFixture[str]) -> None:
    """The 2048-byte Azure HCL report is not an SNP report: MALFORMED."""
    code, doc = cli_json(capsys, [str(SNP_VECTORS / "negative/azcvm-hcl-report-snp.bin"),
                                  "--tee", "snp", "--at", "2024-01-01T00:00:00Z"])
    assert code == 1 and doc["category"] == "MALFORMED"


def _azure_embedded(tmp_path: Path) -> Path:
    raw = (SNP_VECTORS / "negative/azcvm-hcl-report-snp.bin").read_bytes()
    path = tmp_path / "embedded.bin"
    path.write_bytes(raw[32:1216])
    return path


def test_azure_embedded_report_without_its_vcek_is_stale(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded Azure report with only another chip's VCEK in collateral: COLLATERAL_STALE."""
    code, doc = cli_json(capsys, [str(_azure_embedded(tmp_path)), "--tee", "snp",
                                  "--collateral", str(SNP_VECTORS / "negative/azcvm-certs.pem"),
                                  "--at", "2024-01-01T00:00:00Z"])
    assert code == 1 and doc["category"] == "COLLATERAL_STALE"


def test_azure_embedded_report_with_forced_foreign_vcek(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Forcing the other chip's (genuine) VCEK via the cert table: CHAIN_UNTRUSTED (hwID)."""
    certs = x509.load_pem_x509_certificates((SNP_VECTORS / "negative/azcvm-certs.pem").read_bytes())
    vcek, ask = (c.public_bytes(Encoding.DER) for c in certs[:2])
    table = tmp_path / "table.bin"
    table.write_bytes(build_cert_table([(GUID_ASK, ask), (GUID_VCEK, vcek)]))
    code, doc = cli_json(capsys, [str(_azure_embedded(tmp_path)), "--tee", "snp",
                                  "--cert-table", str(table), "--at", "2024-01-01T00:00:00Z",
                                  "--allow-missing-crl"])
    assert code == 1 and doc["category"] == "CHAIN_UNTRUSTED"
    assert doc["rule"] == "hwid"


def test_expired_vlek_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    """The AWS VLEK after its notAfter (2025-12-10): CHAIN_UNTRUSTED."""
    code, doc = cli_json(capsys, [
        str(SNP_VECTORS / "trustee-aws-milan-vlek-v3/test-vlek-report.bin"), "--tee", "snp",
        "--collateral", str(SNP_VECTORS / "trustee-aws-milan-vlek-v3/test-vlek.der"),
        "--at", "2025-12-11T00:00:00Z"])
    assert code == 1 and doc["category"] == "CHAIN_UNTRUSTED"


def test_vlek_vector_rejected_as_vcek_report() -> None:
    """The AWS report with SIGNING_KEY flipped to VCEK finds no VCEK: COLLATERAL_STALE."""
    raw = bytearray((SNP_VECTORS / "trustee-aws-milan-vlek-v3/test-vlek-report.bin").read_bytes())
    raw[0x48] = 0  # SIGNING_KEY = VCEK
    verifier = SnpVerifier(AmdTrustStore.pinned(), CollateralStore.load(
        [SNP_VECTORS / "trustee-aws-milan-vlek-v3/test-vlek.der"]))
    with pytest.raises(KeybrokerError) as exc:
        verifier.verify(bytes(raw), b"", at=at("2025-06-01T00:00:00Z"))
    assert exc.value.category is Category.COLLATERAL_STALE


def test_real_chain_cache_reuses_signatures() -> None:
    """A second report from the same chip reuses verified certificate signatures."""
    verifier = SnpVerifier(AmdTrustStore.pinned(), CollateralStore.load(
        [SNP_VECTORS / "teekit-gcp-milan-v5/sev-gcp-vcek.pem"]))
    when = at("2026-01-01T00:00:00Z")
    verifier.verify((SNP_VECTORS / "teekit-gcp-milan-v5/sev-gcp.bin").read_bytes(), at=when,
                    allow_missing_crl=True)
    first = verifier.cache_stats
    verifier.verify((SNP_VECTORS / "teekit-gcp-milan-v5/sev-gcp-reportdata.bin").read_bytes(),
                    at=when, allow_missing_crl=True)
    second = verifier.cache_stats
    assert first.misses == 3
    assert second.misses == first.misses and second.hits > first.hits
    with pytest.raises(KeybrokerError) as exc:  # windows are still checked on a cache hit
        verifier.verify((SNP_VECTORS / "teekit-gcp-milan-v5/sev-gcp.bin").read_bytes(),
                        at=at("2033-01-01T00:00:00Z"), allow_missing_crl=True)
    assert exc.value.category is Category.CHAIN_UNTRUSTED
