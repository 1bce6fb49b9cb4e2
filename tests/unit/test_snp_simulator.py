"""The SEV-SNP simulator test CA (keys, AMD extension encoding, save/load) and the trust store."""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.evidence.snp_certs import GUID_ASK, GUID_VCEK, GUID_VLEK, parse_cert_table
from keybroker.evidence.snp_report import REPORT_SIZE, build_report, parse_report
from verifier.collateral.cache import CollateralStore
from verifier.snp.trust import PINNED_FINGERPRINTS, AmdTrustStore
from verifier.snp.verify import SnpVerifier

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def ext_value(cert: x509.Certificate, oid: str) -> bytes:
    value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def test_generate_is_fast_and_p384() -> None:
    """A CA with a leaf is generated quickly, all keys EC P-384, signatures ECDSA-SHA384."""
    start = time.monotonic()
    ca = SnpTestCa.generate("Milan")
    sim = SnpSimulator(ca)
    assert time.monotonic() - start < 5
    for cert in (ca.ark, ca.ask, ca.asvk, sim.leaf.certificate):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
        org = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
        assert org == "keybroker simulator (INSECURE TEST ROOT)"
    assert ca.ark.subject == ca.ark.issuer
    names = [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
             for c in (ca.ark, ca.ask, ca.asvk, sim.leaf.certificate)]
    assert names == ["ARK-Milan", "SEV-Milan", "SEV-VLEK-Milan", "SEV-VCEK"]


def test_vcek_extensions_encoded_as_amd() -> None:
    """VCEK extensions: INTEGER SPLs (0xDB as 02 02 00 DB), IA5 productName, raw 64-byte hwID."""
    ca = SnpTestCa.generate("Milan")
    chip = bytes(range(64))
    vcek = ca.issue_vcek(chip, bytes.fromhex("04000000000018db")).certificate
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.1") == bytes.fromhex("020100")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.2") == b"\x16\x08Milan-B0"
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.3.1") == bytes.fromhex("020104")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.3.3") == bytes.fromhex("020118")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.3.8") == bytes.fromhex("020200db")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.4") == chip
    vlek = ca.issue_vlek(bytes.fromhex("04000000000018db"), "csp.example").certificate
    assert ext_value(vlek, "1.3.6.1.4.1.3704.1.5") == b"\x16\x0bcsp.example"
    with pytest.raises(x509.ExtensionNotFound):
        vlek.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"))


def test_turin_vcek_layout() -> None:
    """Turin: structVersion 1, fmcSPL (3.9), no spl_4, 8-byte hwID."""
    ca = SnpTestCa.generate("Turin")
    chip = bytes(range(1, 9)) + bytes(56)
    vcek = ca.issue_vcek(chip, bytes.fromhex("0201030400000009")).certificate
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.1") == bytes.fromhex("020101")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.3.9") == bytes.fromhex("020102")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.3.1") == bytes.fromhex("020101")
    assert ext_value(vcek, "1.3.6.1.4.1.3704.1.4") == chip[:8]
    with pytest.raises(x509.ExtensionNotFound):
        vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.4"))


@pytest.mark.parametrize("version", [3, 5])
def test_reports_byte_exact(version: int) -> None:
    """v3/v5 reports are 1184 bytes, Milan CPUID 0x19/0x01, and rebuild byte-for-byte."""
    sim = SnpSimulator(SnpTestCa.generate(), version=version, measurement=b"\x5a" * 48,
                       host_data=b"\x11" * 32, policy=0x30000, vmpl=0)
    report, table = sim.attest(b"\x22" * 64)
    assert len(report) == REPORT_SIZE
    parsed = parse_report(report)
    assert build_report(parsed) == report
    assert (parsed.version, parsed.cpuid_fam_id, parsed.cpuid_mod_id) == (version, 0x19, 0x01)
    assert parsed.measurement == b"\x5a" * 48 and parsed.host_data == b"\x11" * 32
    assert parsed.report_data == b"\x22" * 64
    assert (parsed.launch_mit_vector != 0) == (version == 5)
    entries = parse_cert_table(table)
    assert entries.get(GUID_ASK) is not None and entries.get(GUID_VCEK) == sim.leaf.der


def test_vlek_cert_table() -> None:
    """A VLEK simulator puts the ASVK and the VLEK in the table and zeroes CHIP_ID."""
    ca = SnpTestCa.generate()
    sim = SnpSimulator(ca, signing_key="vlek")
    report, table = sim.attest(bytes(64))
    entries = parse_cert_table(table)
    assert entries.get(GUID_VLEK) == sim.leaf.der and entries.get(GUID_VCEK) is None
    assert parse_report(report).chip_id == bytes(64)
    assert parse_report(report).signing_key == 1


def test_save_load_permissions_and_use(tmp_path: Path) -> None:
    """save writes 0600 keys in a 0700 directory; the loaded CA's evidence verifies."""
    ca = SnpTestCa.generate("Genoa")
    target = tmp_path / "sim"
    ca.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for stem in ("ark", "ask", "asvk"):
        assert stat.S_IMODE((target / f"{stem}-key.pem").stat().st_mode) == 0o600
        assert (target / f"{stem}.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    loaded = SnpTestCa.load(target)
    assert loaded.product == "Genoa" and loaded.ark == ca.ark and loaded.name == ca.name
    trust = AmdTrustStore.pinned().with_simulator_roots([target / "ark.pem"])
    crl = loaded.write_collateral(tmp_path / "collateral", now=NOW)
    assert crl.name == "ark-genoa.crl"
    claims = SnpVerifier(trust, CollateralStore.load([crl])).verify(
        *SnpSimulator(loaded).attest(bytes(64)), at=NOW)
    assert claims.product == "Genoa" and claims.insecure_root
    assert claims.collateral_warnings == ()
    assert trust.insecure and not AmdTrustStore.pinned().insecure


def test_simulator_root_file_must_hold_an_ark(tmp_path: Path) -> None:
    """A simulator root file without exactly one self-signed ARK-<product> is MALFORMED."""
    ca = SnpTestCa.generate()
    ca.save(tmp_path)
    with pytest.raises(Malformed):
        AmdTrustStore.pinned().with_simulator_roots([tmp_path / "ask.pem"])
    (tmp_path / "junk.pem").write_text("nothing here")
    with pytest.raises(Malformed):
        AmdTrustStore.pinned().with_simulator_roots([tmp_path / "junk.pem"])


def test_pinned_store_matches_pins() -> None:
    """The shipped AMD roots match the pinned fingerprints; roots compare by exact DER."""
    store = AmdTrustStore.pinned()
    for product in ("Milan", "Genoa", "Turin"):
        (anchor,) = store.anchors(product)
        assert anchor.ark.fingerprint == PINNED_FINGERPRINTS[f"ARK-{product}"]
        assert anchor.ask is not None and anchor.asvk is not None
        assert anchor.asvk.fingerprint == PINNED_FINGERPRINTS[f"SEV-VLEK-{product}"]
        assert store.is_pinned_root(anchor.ark.der)
        assert not store.is_pinned_root(anchor.ark.der + b"\x00")
        assert not anchor.insecure


def test_unsupported_product_refused() -> None:
    """The simulator supports Milan, Genoa and Turin only."""
    with pytest.raises(ValueError, match="unsupported"):
        SnpTestCa.generate("Venice")


def test_naive_time_refused() -> None:
    """The verification time must be timezone-aware."""
    sim = SnpSimulator(SnpTestCa.generate())
    with pytest.raises(ValueError, match="timezone"):
        SnpVerifier(AmdTrustStore.pinned()).verify(*sim.attest(bytes(64)),
                                                   at=datetime(2026, 1, 1))


def test_unknown_cpuid_product(tmp_path: Path) -> None:
    """A v3 report whose CPUID names no supported product is CHAIN_UNTRUSTED."""
    ca = SnpTestCa.generate()
    ca.save(tmp_path)
    trust = AmdTrustStore.pinned().with_simulator_roots([tmp_path / "ark.pem"])
    report, table = SnpSimulator(ca, cpuid=(0x17, 0x31, 0)).attest(bytes(64))
    with pytest.raises(KeybrokerError) as exc:
        SnpVerifier(trust).verify(report, table, at=NOW)
    assert exc.value.category is Category.CHAIN_UNTRUSTED
