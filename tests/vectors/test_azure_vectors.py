"""Real Azure confidential VM evidence (tests/vectors/azure, Trustee's az-snp-vtpm JSON in both
format versions, a Genoa one, and az-tdx-vtpm) through ``keybroker verify --tee
az-snp-vtpm|az-tdx-vtpm``: the README's values, and the categories of what must be refused."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from support.paths import CONFIG, VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.hcl_report import build_hcl_report, parse_hcl_report
from keybroker.evidence.snp_certs import GUID_VCEK, build_cert_table
from keybroker_cli.main import main
from verifier.azure.appraisal import appraise_azure
from verifier.azure.claims import AzureVmClaims
from verifier.azure.verify import AzureVmVerifier
from verifier.azure.view import azure_claims_from_dict
from verifier.collateral.cache import CollateralStore
from verifier.dcap.tee import DcapEvidence
from verifier.dcap.verify import DcapVerifier
from verifier.policy.compile import load_policy, parse_policy
from verifier.snp.tee import SnpEvidence
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

# AMD VCEKs have serial number 0; cryptography warns when they are parsed.
pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning")

AZ = VECTORS / "azure"
README = (VECTORS / "README.md").read_text()
CHALLENGE = b"challenge".hex()
GENOA_NONCE = ("0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938c"
               "a05475f8b46094de6b64270ea35d950f")
TDX_COLLATERAL = [VECTORS / "tdx/teekit-tcbinfo/tcbInfo-tdx-00806f050000.json",
                  VECTORS / "tdx/trustee-gnr-v4/enclaveIdentity.json",
                  VECTORS / "tdx/intel-roots"]
SNP_CASES = {"evidence-v0.json": CHALLENGE, "evidence-v1.json": CHALLENGE,
             "evidence-genoa.json": GENOA_NONCE}


def expected(subpath: str) -> dict[str, str]:
    """The ``name=value`` pairs of a vector's ``Expected:`` line."""
    section = README.split(f"#### `{subpath}`", 1)[1].split("\n#### ", 1)[0]
    line = section.split("* Expected: ", 1)[1].split("\n", 1)[0]
    return dict(re.findall(r"([\w-]+)=([0-9a-fx]+|\{[^}]*\})", line))


def run(capsys: pytest.CaptureFixture[str], path: Path, tee: str, *extra: str
        ) -> tuple[int, dict[str, object]]:
    code = main(["verify", str(path), "--tee", tee, "--json", "--allow-missing-crl", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(SNP_CASES))
def test_azure_snp_evidence_verifies_with_readme_values(name: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    code, out = run(capsys, AZ / "az-snp-vtpm" / name, "az-snp-vtpm", "--nonce",
                    SNP_CASES[name], "--at", "2026-01-01T00:00:00Z")
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    want = expected(f"azure/az-snp-vtpm/{name}")
    hardware, tpm = claims["hardware"], claims["tpm"]
    assert hardware["measurement"] == want["measurement"]
    assert hardware["report_data"] == want["report_data"]
    assert hardware["chip_id"] == want["chip_id"] and hardware["vmpl"] == 0
    assert claims["vm_configuration"] == json.loads(want["vm-configuration"])
    assert claims["user_data"] == want["user-data"]
    assert tpm["extra_data"] == want["extraData"] and tpm["nonce_checked"] is True
    assert tpm["clock"] == int(want["clock"])
    assert tpm["firmware_version"] == want["firmwareVersion"]
    for pcr in ("0", "1", "4", "7"):
        if f"PCR{pcr}" in want:
            assert tpm["pcrs"]["sha256"][pcr] == want[f"PCR{pcr}"]
    assert tpm["signature"] == "RSASSA-SHA256" and tpm["ak_key"] == "RSA-2048"


def test_azure_tdx_evidence_verifies_with_readme_values(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    extra = [arg for path in TDX_COLLATERAL for arg in ("--collateral", str(path))]
    code, out = run(capsys, AZ / "az-tdx-vtpm" / "evidence-v0.json", "az-tdx-vtpm",
                    "--nonce", CHALLENGE, "--at", "2025-10-28T12:00:00Z", *extra)
    assert code == 0, out
    claims = out["claims"]
    want = expected("azure/az-tdx-vtpm/evidence-v0.json")
    assert claims["hardware"]["mr_td"] == want["mr_td"]  # type: ignore[index]
    assert claims["hardware"]["report_data"] == want["report_data"]  # type: ignore[index]
    assert all(claims["hardware"][f"rtmr{i}"] == "00" * 48 for i in range(4))  # type: ignore[index]
    assert claims["tpm"]["pcrs"]["sha256"]["0"] == want["PCR0"]  # type: ignore[index]
    assert claims["vm_configuration"] == json.loads(want["vm-configuration"])  # type: ignore[index]


def _edited(tmp_path: Path, change: str) -> Path:
    doc = json.loads((AZ / "az-snp-vtpm" / "evidence-v0.json").read_text())
    if change == "runtime-claims":
        hcl = parse_hcl_report(bytes(doc["report"]))
        claims = hcl.runtime_claims.replace(b'"secure-boot":true', b'"secure-boot":false')
        assert claims != hcl.runtime_claims
        edited = type(hcl)(**{**hcl.__dict__, "runtime_claims": claims})
        doc["report"] = list(build_hcl_report(edited, pad_to=len(doc["report"])))
    elif change == "pcr":
        doc["quote"]["pcrs"][7] = [0] * 32
    elif change == "signature":
        other = json.loads((AZ / "az-snp-vtpm" / "evidence-genoa.json").read_text())
        doc["quote"]["signature"] = other["quote"]["signature"]
    elif change == "padding":
        doc["report"][-1] = 1
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("change", "tee", "extra", "category", "rule"), [
    ("runtime-claims", "az-snp-vtpm", [], "BINDING", "azure.runtime-claims"),   # row 54
    ("pcr", "az-snp-vtpm", [], "MEASUREMENT", "tpm.pcr-digest"),
    ("signature", "az-snp-vtpm", [], "SIG_INVALID", "tpm.signature"),          # not the AK
    ("none", "az-snp-vtpm", ["--nonce", "00"], "FRESHNESS", "tpm.nonce"),
    ("none", "az-tdx-vtpm", [], "MALFORMED", "azure.report-type"),             # row 8
    ("padding", "az-snp-vtpm", [], "MALFORMED", ""),
])
def test_azure_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str,
                        tee: str, extra: list[str], category: str, rule: str) -> None:
    path = _edited(tmp_path, change)
    code, out = run(capsys, path, tee, "--at", "2026-01-01T00:00:00Z", *extra)
    assert (code, out["category"], out["rule"]) == (1, category, rule), out


def test_hcl_only_report_binds_and_verifies() -> None:
    """The HCL-only SNP report: header values of the README, runtime claims bound, and the SNP
    report verifies under its VCEK (Milan-B0) through the AMD chain."""
    raw = (AZ / "az-snp-hcl-only" / "hcl-report.bin").read_bytes()
    hcl = parse_hcl_report(raw)
    want = expected("azure/az-snp-hcl-only/hcl-report.bin")
    assert (hcl.version, hcl.report_type, hcl.hash_type, len(hcl.runtime_claims)) == (
        1, 2, 1, 1110)
    assert build_hcl_report(hcl, pad_to=len(raw)) == raw
    vcek = x509.load_pem_x509_certificates((AZ / "az-snp-hcl-only" / "vcek.pem").read_bytes())[0]
    table = build_cert_table([(GUID_VCEK, vcek.public_bytes(Encoding.DER))])
    claims = SnpVerifier(AmdTrustStore.pinned()).verify(
        hcl.snp_report, table, at=datetime(2026, 1, 1, tzinfo=UTC), allow_missing_crl=True)
    assert claims.measurement.hex() == want["measurement"]


def _family_claims(at: datetime, collateral: list[Path]) -> AzureVmClaims:
    """The real az-snp-vtpm v0 evidence through the registry's Azure verifier, its SNP part
    through the SEV-SNP family's verifier (pinned AMD roots, the given collateral)."""
    peer = SnpEvidence(SnpVerifier(AmdTrustStore.pinned(), CollateralStore.load(collateral)))
    raw = (AZ / "az-snp-vtpm" / "evidence-v0.json").read_bytes()
    return AzureVmVerifier("az-snp-vtpm", peer).verify(raw, at=at, binding=b"challenge")


def test_azure_family_verifies_and_appraises_the_real_snp_vm() -> None:
    """The registry path: the real VM's claims (measurement, VM configuration, PCRs) pass
    config/policies/azsnp-demo.yaml (its TCB floors included) with the AMD Milan CRL present;
    without the CRL the same policy refuses (COLLATERAL_STALE); a policy requiring the serial
    console off refuses (the VM has it on: PLATFORM_POLICY), one with a microcode floor above
    the VM's refuses (TCB_POLICY); another extraData is FRESHNESS."""
    at = datetime(2026, 7, 1, tzinfo=UTC)  # the Milan CRL of 2026-06-22 is current then
    claims = _family_claims(at, [VECTORS / "sev-snp/amd-crl"])
    want = expected("azure/az-snp-vtpm/evidence-v0.json")
    assert claims.measurement.hex() == want["measurement"]
    assert claims.pcrs[4].hex() == want["PCR4"] and claims.extra_data == b"challenge"
    policy = load_policy(CONFIG / "policies" / "azsnp-demo.yaml")
    assert appraise_azure(claims, policy).status == "affirming"
    with pytest.raises(KeybrokerError) as exc:
        appraise_azure(_family_claims(at, []), policy)
    assert (exc.value.category, exc.value.rule) == (Category.COLLATERAL_STALE,
                                                     "azure.allow_missing_crl")
    strict = parse_policy((CONFIG / "policies" / "azsnp-demo.yaml").read_bytes().replace(
        b"    tpm-enabled: true\n", b"    tpm-enabled: true\n    console-enabled: false\n"),
        "strict.yaml")
    with pytest.raises(KeybrokerError) as exc:
        appraise_azure(claims, strict)
    assert exc.value.rule == "azure.vm_configuration.console-enabled"
    newer = parse_policy((CONFIG / "policies" / "azsnp-demo.yaml").read_bytes().replace(
        b"microcode: 219}", b"microcode: 220}"), "newer.yaml")
    with pytest.raises(KeybrokerError) as exc:  # the VM's microcode SVN is 219
        appraise_azure(claims, newer)
    assert (exc.value.category, exc.value.rule) == (Category.TCB_POLICY,
                                                     "azure.snp_min_tcb.microcode")
    peer = SnpEvidence(SnpVerifier(AmdTrustStore.pinned(), CollateralStore.empty()))
    with pytest.raises(KeybrokerError) as exc:
        AzureVmVerifier("az-snp-vtpm", peer).verify(
            (AZ / "az-snp-vtpm" / "evidence-v0.json").read_bytes(), at=at, binding=b"other")
    assert exc.value.category is Category.FRESHNESS


def test_azure_family_view_round_trips_the_real_claims() -> None:
    """The claims view is the exact inverse on real claims."""
    claims = _family_claims(datetime(2026, 1, 1, tzinfo=UTC), [])
    assert azure_claims_from_dict(claims.as_dict()) == claims


def test_azure_family_verifies_and_appraises_the_real_tdx_vm() -> None:
    """The registry path for az-tdx-vtpm: the TD quote through the DCAP family's verifier
    (the vector's Intel collateral, without its CRLs), the TDREPORT binding, the vTPM quote;
    the claims carry the MRTD and pass aztdx-demo.yaml's measurement and switches (with the
    vector's TCB status and the missing CRLs allowed)."""
    peer = DcapEvidence(DcapVerifier(CollateralStore.load(TDX_COLLATERAL)))
    raw = (AZ / "az-tdx-vtpm" / "evidence-v0.json").read_bytes()
    claims = AzureVmVerifier("az-tdx-vtpm", peer).verify(
        raw, at=datetime(2025, 10, 28, 12, tzinfo=UTC), binding=b"challenge")
    assert claims.measurement.hex() == expected("azure/az-tdx-vtpm/evidence-v0.json")["mr_td"]
    assert claims.vm_configuration["secure-boot"] is True and claims.tcb_status is not None
    policy = parse_policy((CONFIG / "policies" / "aztdx-demo.yaml").read_bytes().replace(
        b"allow_missing_crl: false", b"allow_missing_crl: true").replace(
        b"accepted_tcb_statuses: [UpToDate]",
        b"accepted_tcb_statuses: [" + claims.tcb_status.encode() + b"]"), "aztdx.yaml")
    assert appraise_azure(claims, policy).status in ("affirming", "warning")
    assert azure_claims_from_dict(claims.as_dict()) == claims
