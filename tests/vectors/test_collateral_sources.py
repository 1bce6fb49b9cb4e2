"""What each piece of real evidence needs from AMD KDS and Intel PCS (keys and URLs), the
checks a vendor item must pass (real Turin VCEK, PCCS hex CRLs, keys for items of another
platform), and the usage errors of ``keybroker collateral``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
from support.paths import VECTORS
from support.vendor_replay import GCP_REPORT, GNR_QUOTE, PCS, PCS_AT, at

from keybroker.errors import Category, KeybrokerError
from keybroker_cli.main import main
from verifier.dcap.pcs import PcsSource
from verifier.snp.kds import KdsSource

SNP = VECTORS / "sev-snp"
TURIN_VCEK = SNP / "virtee-turin-vcek/vcek_turin.der"
TURIN_HWID = bytes.fromhex("1e550a8ee5cf9f4d")
TURIN_TCB = bytes([0, 0, 0, 0, 0, 0, 0, 9])  # fmc 0, bl 0, tee 0, snp 0, ucode 9


def test_collateral_needs_of_real_snp_reports() -> None:
    """A VCEK-signed v5 Milan report needs its VCEK (the KDS query from REPORTED_TCB), the
    chain and the CRL; a VLEK-signed report needs only the VLEK chain and CRL; a v2 report
    needs --product, and a product that contradicts the CPUID is refused."""
    kds = KdsSource("https://kds.example")
    gcp = kds.needs_for_report(GCP_REPORT.read_bytes())
    assert [n.kind for n in gcp] == ["certificate", "cert_chain", "crl"]
    assert gcp[0].url.endswith("?blSPL=4&teeSPL=0&snpSPL=27&ucodeSPL=222")
    assert gcp[0].immutable and gcp[1].url == "https://kds.example/vcek/v1/Milan/cert_chain"
    vlek = kds.needs_for_report((SNP / "trustee-aws-milan-vlek-v3/test-vlek-report.bin")
                                .read_bytes())
    assert [n.key for n in vlek] == ["snp-vlek-chain-Milan", "snp-vlek-crl-Milan"]
    assert vlek[1].url == "https://kds.example/vlek/v1/Milan/crl"
    v2 = (SNP / "gosev-milan-v2/attestation.bin").read_bytes()
    with pytest.raises(KeybrokerError) as err:
        kds.needs_for_report(v2)
    assert err.value.category is Category.MALFORMED and "--product" in err.value.expected
    assert kds.needs_for_report(v2, product="Milan")[1].key == "snp-vcek-chain-Milan"
    with pytest.raises(KeybrokerError) as err:
        kds.needs_for_report(GCP_REPORT.read_bytes(), product="Genoa")
    assert err.value.category is Category.MALFORMED and err.value.expected == "Milan"


def test_collateral_turin_vcek_url_and_real_certificate() -> None:
    """Turin asks with the 8-byte hwID and fmcSPL; the real Turin VCEK verifies under the
    pinned Turin ASK for its own chip and TCB, and is refused for another TCB or chip."""
    kds = KdsSource("https://kds.example")
    need = kds.vcek_need("Turin", TURIN_HWID, TURIN_TCB)
    assert need.url == ("https://kds.example/vcek/v1/Turin/1e550a8ee5cf9f4d?blSPL=0&teeSPL=0"
                        "&snpSPL=0&ucodeSPL=9&fmcSPL=0")
    when = at("2026-01-01T00:00:00Z")
    item = kds.verify(need, TURIN_VCEK.read_bytes(), b"", source="t", at=when, fetched_at=when)
    assert item.next_update == at("2031-11-06T21:14:00Z")
    for other in (kds.vcek_need("Turin", TURIN_HWID, bytes([0] * 7 + [10])),
                  kds.vcek_need("Turin", bytes(8), TURIN_TCB)):
        with pytest.raises(KeybrokerError) as err:
            kds.verify(other, TURIN_VCEK.read_bytes(), b"", source="t", at=when,
                       fetched_at=when)
        assert err.value.category is Category.CHAIN_UNTRUSTED
    with pytest.raises(KeybrokerError) as err:
        kds.vcek_need("Turin", bytes(64), TURIN_TCB)
    assert err.value.category is Category.MALFORMED


def test_collateral_needs_of_real_tdx_quote_and_keys() -> None:
    """The GNR quote needs TCB Info for its FMSPC, the TD_QE identity, the PCK platform CRL and
    the root CRL; every key names its need again (refresh and import rebuild it)."""
    pcs = PcsSource("https://pcs.example", root_crl_url="https://crl.example/root.der")
    needs = pcs.needs_for_quote(GNR_QUOTE.read_bytes(), "tdx")
    assert [n.key for n in needs] == ["tdx-tcb-00a06d080000", "tdx-qe-identity",
                                      "sgx-pck-crl-platform", "intel-root-ca-crl"]
    assert [pcs.need(n.key) for n in needs] == needs
    kds = KdsSource("https://kds.example")
    gcp = kds.needs_for_report(GCP_REPORT.read_bytes())
    assert [kds.need(n.key) for n in gcp] == gcp
    with pytest.raises(KeybrokerError) as err:
        pcs.needs_for_quote(GNR_QUOTE.read_bytes(), "sgx")
    assert err.value.category is Category.MALFORMED
    for bad in ("tdx-tcb", "tdx-tcb-zz", "snp-vcek-crl-Milan", "../etc"):
        with pytest.raises(KeybrokerError) as err:
            pcs.need(bad)
        assert err.value.category is Category.MALFORMED
    for bad in ("snp-vcek-Milan-zz-0400000000001bde", "snp-vcek-Milan-00-0400", "tdx-tcb-1"):
        with pytest.raises(KeybrokerError) as err:
            kds.need(bad)
        assert err.value.category is Category.MALFORMED


def test_collateral_pccs_hex_crl_and_wrong_document() -> None:
    """A PCCS answering the root CRL as hex text is accepted (stored as DER); a TCB Info for
    another FMSPC, or a QE identity under a TCB Info key, is refused."""
    pcs = PcsSource("https://pcs.example")
    when = at(PCS_AT)
    der = (PCS / "root_ca.crl").read_bytes()
    item = pcs.verify(pcs.need("intel-root-ca-crl"), der.hex().encode(), b"", source="t",
                      at=when, fetched_at=when)
    assert item.body == der
    tcb_chain = unquote((PCS / "tcb_info_90c06f000000_chain.txt").read_text()).encode()
    with pytest.raises(KeybrokerError) as err:
        pcs.verify(pcs.need("tdx-tcb-00a06d080000"),
                   (PCS / "tcb_info_90c06f000000.json").read_bytes(), tcb_chain, source="t",
                   at=when, fetched_at=when)
    assert err.value.category is Category.CHAIN_UNTRUSTED and "90c06f000000" in err.value.actual
    with pytest.raises(KeybrokerError) as err:
        pcs.verify(pcs.need("tdx-tcb-00a06d080000"), (PCS / "qe_identity.json").read_bytes(),
                   tcb_chain, source="t", at=when, fetched_at=when)
    assert err.value.category is Category.MALFORMED


def test_collateral_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unreadable evidence, evidence of another TEE and an empty prefetch are usage errors
    (exit 2) naming the problem; nothing is fetched."""
    out = tmp_path / "out"
    assert main(["collateral", "fetch", "--tee", "snp", "--evidence", str(tmp_path / "none"),
                 "--out", str(out), "--kds-url", "http://127.0.0.1:9"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["collateral", "fetch", "--tee", "tdx", "--evidence", str(GCP_REPORT),
                 "--out", str(out), "--pcs-url", "http://127.0.0.1:9"]) == 2
    assert "MALFORMED" in capsys.readouterr().err
    assert not out.exists()
    out.write_text("a file, not a folder")
    assert main(["collateral", "fetch", "--tee", "snp", "--evidence", str(GCP_REPORT),
                 "--out", str(out), "--kds-url", "http://127.0.0.1:9"]) == 2
    assert "File exists" in capsys.readouterr().err
