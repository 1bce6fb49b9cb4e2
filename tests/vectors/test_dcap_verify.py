"""``DcapVerifier`` on real TDX/SGX quotes and Intel collateral: hostile rows 1, 2, 4, 6, 8
(MALFORMED), body / QE report / signature bit flips (SIG_INVALID, row 10), an evidence root
that is not the pinned one (row 13, CHAIN_UNTRUSTED), forged collateral (row 21,
CHAIN_UNTRUSTED), stale collateral (row 43) and foreign-FMSPC collateral (COLLATERAL_STALE),
TCB Info selection by window, and the per-quote cache (no collateral signature re-checked)."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.dcap_quote import build_quote, parse_quote
from keybroker.evidence.dcap_signature import CertificationData
from verifier.collateral.cache import CollateralStore
from verifier.dcap.anchor import Anchor
from verifier.dcap.trust import IntelTrustStore
from verifier.dcap.verify import DcapVerifier
from verifier.pki import parse_pem_chain

V = VECTORS
ROOTS = V / "tdx/intel-roots"
GOTDX = V / "tdx/gotdx-spr-e4-v4"
SPR = V / "tdx/trustee-spr-v4/tdx_quote_4.dat"
V5 = V / "tdx/gotdx-emr-v5/quote_v5_sample.dat"
SGX = V / "sgx/dcapqvl-sgx-v3/sgx_quote"
EMR_BUNDLE = V / "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated_collateral.json"
SGX_BUNDLE = V / "sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json"
AT_2023 = datetime(2023, 7, 1, 1, tzinfo=UTC)
AT_V5 = datetime(2026, 3, 1, tzinfo=UTC)
AT_SGX = datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC)


@pytest.fixture(scope="module")
def verifier() -> DcapVerifier:
    """One verifier with the full collateral of the SPR 2023, EMR v5 and SGX samples."""
    store = CollateralStore.load([GOTDX, ROOTS, EMR_BUNDLE, SGX_BUNDLE,
                                  V / "tdx/gotdx-emr-v5/sample_tcbinfo_response_v5"])
    return DcapVerifier(store)


def category(call: object) -> KeybrokerError:
    """Run ``call`` and return the typed error it must raise."""
    assert callable(call)
    with pytest.raises(KeybrokerError) as exc:
        call()
    return exc.value


def tdx_error(verifier: DcapVerifier, raw: bytes, at: datetime = AT_2023, *,
              allow: bool = False) -> KeybrokerError:
    """The error ``verify_tdx`` raises for ``raw``."""
    return category(lambda: verifier.verify_tdx(raw, at=at, allow_missing_crl=allow))


def sgx_error(verifier: DcapVerifier, raw: bytes, at: datetime = AT_SGX) -> KeybrokerError:
    """The error ``verify_sgx`` raises for ``raw``."""
    return category(lambda: verifier.verify_sgx(raw, at=at))


def flipped(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    """``raw`` with one bit flipped (no re-signing)."""
    out = bytearray(raw)
    out[offset] ^= mask
    return bytes(out)


def patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``raw`` with one little-endian integer overwritten."""
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def with_chain(raw: bytes, pem: bytes) -> bytes:
    """``raw`` with another PCK chain in its certification data (signatures do not cover it)."""
    quote = parse_quote(raw)
    sig = dataclasses.replace(quote.signature_data,
                              pck_cert_data=CertificationData(cert_type=5, data=pem))
    return build_quote(quote.with_changes(signature_data=sig))


def test_real_quotes_verify(verifier: DcapVerifier) -> None:
    """The three full-collateral samples verify without --allow-missing-crl."""
    td = verifier.verify_tdx(SPR.read_bytes(), at=AT_2023)
    assert (td.version, td.body_type, td.tcb.status, td.tcb.fmspc.hex()) == (
        4, 2, "UpToDate", "50806f000000")
    v5 = verifier.verify_tdx(V5.read_bytes(), at=AT_V5)
    assert (v5.version, v5.body_type, v5.tcb.module_status, v5.insecure_root) == (
        5, 3, "UpToDate", False)
    assert v5.tee_tcb_svn2 is not None
    sgx = verifier.verify_sgx(SGX.read_bytes(), at=AT_SGX)
    assert sgx.tcb.status == "ConfigurationAndSWHardeningNeeded"
    assert sgx.tcb.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert (sgx.tcb.qe_status, sgx.tcb.tdx_status, sgx.debug) == ("UpToDate", None, False)
    assert sgx.report_data.startswith(b"Hello, world!")


def test_second_verification_reuses_every_cached_signature(tmp_path: Path) -> None:
    """The first quote verifies chain, CRL and collateral signatures once; a second quote of
    the same platform costs none of them (only its own two signatures)."""
    verifier = DcapVerifier(CollateralStore.load([GOTDX, ROOTS]))
    raw = SPR.read_bytes()
    verifier.verify_tdx(raw, at=AT_2023)
    first = verifier.cache_stats
    assert first.certificate_signatures >= 3  # intermediate, leaf, TCB Signing cert(s)
    assert first.crl_signatures == 2
    assert first.collateral_signatures >= 2  # TCB Info and TD_QE identity
    assert (first.chains_verified, first.chains_reused) == (1, 0)
    verifier.verify_tdx(raw, at=AT_2023 + timedelta(hours=1))
    second = verifier.cache_stats
    assert dataclasses.replace(second, chains_reused=0) == first
    assert second.chains_reused == 1


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_row1_empty_quote_is_malformed(verifier: DcapVerifier, tee: str) -> None:
    """0-byte evidence is MALFORMED on both paths."""
    err = tdx_error(verifier, b"") if tee == "tdx" else sgx_error(verifier, b"")
    assert err.category is Category.MALFORMED


@pytest.mark.parametrize("cut", [0x278, 0x2FC, 0x600, 4000])
def test_row2_truncated_tdx_is_malformed(verifier: DcapVerifier, cut: int) -> None:
    """A TDX quote cut at the signature-data length or inside the certification data."""
    assert tdx_error(verifier, SPR.read_bytes()[:cut]).category is Category.MALFORMED


@pytest.mark.parametrize("cut", [0x1B0, 0x300, 4000])
def test_row2_truncated_sgx_is_malformed(verifier: DcapVerifier, cut: int) -> None:
    """An SGX quote cut at its signature-data length or inside the certification data."""
    assert sgx_error(verifier, SGX.read_bytes()[:cut]).category is Category.MALFORMED


@pytest.mark.parametrize(("offset", "fmt"), [(0x278, "<I"), (0x2FE, "<I")],
                         ids=["sig-data-len", "cert-data-size"])
def test_row4_lying_lengths_are_malformed(verifier: DcapVerifier, offset: int, fmt: str) -> None:
    """Signature-data length or certification-data size 0xFFFFFFFF."""
    raw = patched(SPR.read_bytes(), offset, fmt, 0xFFFFFFFF)
    assert tdx_error(verifier, raw).category is Category.MALFORMED


@pytest.mark.parametrize(("offset", "value"), [(0, 3), (0, 6), (2, 3), (2, 1)],
                         ids=["version-3", "version-6", "att-key-3", "att-key-1"])
def test_row6_unknown_version_or_key_type_is_malformed(verifier: DcapVerifier, offset: int,
                                                       value: int) -> None:
    """TDX version 3/6 and attestation key types other than 2."""
    raw = patched(SPR.read_bytes(), offset, "<H", value)
    assert tdx_error(verifier, raw).category is Category.MALFORMED


def test_row8_type_confusion_is_malformed(verifier: DcapVerifier) -> None:
    """tee_type 0 in a TDX header, an SGX quote on the TDX path and vice versa, and a QE vendor
    id other than Intel's."""
    assert tdx_error(verifier, patched(SPR.read_bytes(), 4, "<I", 0)).category \
        is Category.MALFORMED
    assert tdx_error(verifier, SGX.read_bytes(), AT_SGX).category is Category.MALFORMED
    assert sgx_error(verifier, SPR.read_bytes(), AT_2023).category is Category.MALFORMED
    vendor = flipped(SPR.read_bytes(), 0x0C)
    err = tdx_error(verifier, vendor)
    assert (err.category, err.rule) == (Category.MALFORMED, "qe-vendor-id")


@pytest.mark.parametrize(("path", "offset", "at"), [
    (SPR, 0xB8, AT_2023),          # MRTD of a v4 TD body
    (SPR, 0x238, AT_2023),         # REPORTDATA
    (SPR, 0x08, AT_2023),          # header QE SVN field (signed too)
    (V5, 0xBE, AT_V5),             # MRTD of a v5 TD 1.5 body
    (V5, 0x2BD, AT_V5),            # last byte of MR_SERVICE_TD (TD 1.5 only)
    (SGX, 0x70, AT_SGX),           # MRENCLAVE of the SGX report body
    (SGX, 0x170, AT_SGX),          # REPORTDATA of the SGX report body
], ids=["td-mrtd", "td-report-data", "header", "v5-mrtd", "td15-service-td", "sgx-mrenclave",
        "sgx-report-data"])
def test_row10_body_bit_flip_is_sig_invalid(verifier: DcapVerifier, path: Path, offset: int,
                                            at: datetime) -> None:
    """One flipped bit in the signed header/body without re-signing is SIG_INVALID."""
    raw = flipped(path.read_bytes(), offset)
    call = verifier.verify_sgx if path == SGX else verifier.verify_tdx
    err = category(lambda: call(raw, at=at))
    assert (err.category, err.rule) == (Category.SIG_INVALID, "quote-signature")


@pytest.mark.parametrize(("path", "at"), [(SPR, AT_2023), (V5, AT_V5), (SGX, AT_SGX)])
def test_qe_report_bit_flip_is_sig_invalid(verifier: DcapVerifier, path: Path,
                                           at: datetime) -> None:
    """A flipped bit in the QE report (its MRENCLAVE) breaks the PCK signature over it."""
    raw = path.read_bytes()
    quote = parse_quote(raw)
    start = raw.index(quote.signature_data.qe_report_raw)
    mutated = flipped(raw, start + 0x40)
    call = verifier.verify_sgx if path == SGX else verifier.verify_tdx
    err = category(lambda: call(mutated, at=at))
    assert (err.category, err.rule) == (Category.SIG_INVALID, "qe-report-signature")


@pytest.mark.parametrize("which", ["quote-signature", "qe-report-signature", "attestation-key"])
def test_signature_field_flips_are_sig_invalid(verifier: DcapVerifier, which: str) -> None:
    """A flipped bit in the quote signature, the QE report signature or the attestation key
    (which the QE report data binds) is SIG_INVALID."""
    raw = SPR.read_bytes()
    sig = parse_quote(raw).signature_data
    field = {"quote-signature": sig.signature, "qe-report-signature": sig.qe_report_signature,
             "attestation-key": sig.attestation_key}[which]
    err = tdx_error(verifier, flipped(raw, raw.index(field) + 5))
    assert err.category is Category.SIG_INVALID
    if which == "attestation-key":
        assert err.rule in ("qe-binding", "attestation-key")


def _self_signed_root(name: x509.Name) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=3650))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("variant", ["same-name", "other-name", "tcb-signing-cert"])
def test_row13_root_from_evidence_is_chain_untrusted(verifier: DcapVerifier,
                                                     variant: str) -> None:
    """A third certificate in the PCK chain that is not the pinned root: an attacker's
    self-signed "Intel SGX Root CA", a root of another name, or another Intel certificate."""
    raw = SPR.read_bytes()
    certs = parse_pem_chain(parse_quote(raw).signature_data.pck_cert_data.data)
    pem = [c.cert.public_bytes(serialization.Encoding.PEM) for c in certs]
    root = certs[2].cert
    if variant == "same-name":
        third = _self_signed_root(root.subject)
    elif variant == "other-name":
        third = _self_signed_root(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                                "Intel SGX Root CA")]))
    else:
        third = (ROOTS / "tcb-signing-chain-2018-2025.pem").read_bytes().split(b"-----END")[0] \
            + b"-----END CERTIFICATE-----\n"
    err = tdx_error(verifier, with_chain(raw, pem[0] + pem[1] + third))
    assert err.category is Category.CHAIN_UNTRUSTED


def test_pck_chain_of_an_unconfigured_root_is_chain_untrusted(verifier: DcapVerifier) -> None:
    """A chain whose intermediate names an issuer that is no configured root."""
    raw = SPR.read_bytes()
    certs = parse_pem_chain(parse_quote(raw).signature_data.pck_cert_data.data)
    pem = [c.cert.public_bytes(serialization.Encoding.PEM) for c in certs]
    err = tdx_error(verifier, with_chain(raw, pem[0] + pem[0]))
    assert err.category is Category.CHAIN_UNTRUSTED


def _forged_copy(tmp_path: Path, name: str, how: str) -> Path:
    """The 2023 collateral with one document's signature or content altered."""
    target = tmp_path / "collateral"
    shutil.copytree(GOTDX, target)
    path = target / name
    body = json.loads(path.read_text())
    text = path.read_text()
    if how == "signature":
        sig = body["signature"]
        text = text.replace(sig, sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:])
    else:  # content: the TD_QE ISVPRODID / the TCB evaluation data number, signature kept
        text = text.replace('"tcbEvaluationDataNumber":15', '"tcbEvaluationDataNumber":16', 1)
    assert text != path.read_text()
    path.write_text(text)
    return target


@pytest.mark.parametrize("name", ["sample_qeIdentity_response", "sample_tcbInfo_response"])
@pytest.mark.parametrize("how", ["signature", "content"])
def test_row21_forged_collateral_is_chain_untrusted(tmp_path: Path, name: str,
                                                    how: str) -> None:
    """A QE identity or TCB Info whose signature does not verify (bad signature, or content
    changed under the original signature) is CHAIN_UNTRUSTED."""
    store = CollateralStore.load([_forged_copy(tmp_path, name, how), ROOTS])
    err = tdx_error(DcapVerifier(store), SPR.read_bytes())
    assert (err.category, err.rule) == (Category.CHAIN_UNTRUSTED, "collateral-sig")


@pytest.mark.parametrize(("at", "allow", "rule", "named"), [
    (datetime(2023, 7, 9, tzinfo=UTC), False, "crl-window", "pck-crl"),    # ended 07-08
    (datetime(2023, 7, 9, tzinfo=UTC), True, "collateral-window", "TD_QE identity"),
    (datetime(2023, 7, 20, tzinfo=UTC), True, "collateral-window", "TD_QE identity"),
    (datetime(2023, 6, 10, tzinfo=UTC), True, "collateral-window", "TDX TCB Info"),  # not yet
    (datetime(2024, 5, 1, tzinfo=UTC), False, "crl-window", "root-ca-crl"),  # ended 2024-04
], ids=["pck-crl", "qe-identity", "all-documents", "tcb-info-not-yet", "root-crl"])
def test_row43_stale_collateral_is_collateral_stale(verifier: DcapVerifier, at: datetime,
                                                   allow: bool, rule: str, named: str) -> None:
    """Collateral past nextUpdate (or before issueDate) at the verification time."""
    err = tdx_error(verifier, SPR.read_bytes(), at, allow=allow)
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, rule)
    assert named in err.reason


def test_missing_crls_only_with_the_flag_and_then_named(verifier: DcapVerifier) -> None:
    """Without CRLs the quote is COLLATERAL_STALE; allowed, the claims name each CRL."""
    store = CollateralStore.load([GOTDX / "sample_tcbInfo_response",
                                  GOTDX / "sample_qeIdentity_response", ROOTS])
    bare = DcapVerifier(store)
    err = tdx_error(bare, SPR.read_bytes())
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "crl-missing")
    claims = bare.verify_tdx(SPR.read_bytes(), at=AT_2023, allow_missing_crl=True)
    assert claims.tcb.collateral_warnings == ("root-ca-crl missing", "pck-crl missing")
    full = verifier.verify_tdx(SPR.read_bytes(), at=AT_2023, allow_missing_crl=True)
    assert full.tcb.collateral_warnings == ()


def test_tcb_info_of_another_fmspc_only_is_collateral_stale() -> None:
    """Signed, current TCB Info that is for another FMSPC is no TCB Info for this platform."""
    store = CollateralStore.load([GOTDX / "sample_qeIdentity_response", GOTDX / "pckcrl",
                                  GOTDX / "rootcrl.der", ROOTS,
                                  V / "tdx/teekit-tcbinfo/tcbInfo-tdx-00806f050000.json"])
    err = tdx_error(DcapVerifier(store), SPR.read_bytes())
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "collateral-missing")
    assert "50806f000000" in err.expected
    assert "00806f050000" in err.actual


def test_missing_qe_identity_is_collateral_stale() -> None:
    """Without a TD_QE identity the quote cannot be verified: COLLATERAL_STALE."""
    store = CollateralStore.load([GOTDX / "sample_tcbInfo_response", GOTDX / "pckcrl",
                                  GOTDX / "rootcrl.der", ROOTS, SGX_BUNDLE])
    err = tdx_error(DcapVerifier(store), SPR.read_bytes())
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "collateral-missing")


def test_signing_certificate_missing_or_expired() -> None:
    """2025 collateral with no TCB Signing certificate at all is COLLATERAL_STALE naming the
    missing chain (the signatures cannot be checked); with only the 2018-2025 one (expired by
    then) it is CHAIN_UNTRUSTED."""
    gnr = (V / "tdx/trustee-gnr-v4/tdx_quote_6.dat").read_bytes()
    at = datetime(2025, 11, 1, tzinfo=UTC)
    none = CollateralStore.load([V / "tdx/trustee-gnr-v4", ROOTS / "IntelSGXRootCA.der"])
    err = category(lambda: DcapVerifier(none).verify_tdx(gnr, at=at, allow_missing_crl=True))
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "collateral-missing")
    assert "TCB-Info-Issuer-Chain" in err.reason
    old_only = CollateralStore.load([V / "tdx/trustee-gnr-v4",
                                     ROOTS / "tcb-signing-chain-2018-2025.pem"])
    err = category(lambda: DcapVerifier(old_only).verify_tdx(gnr, at=at,
                                                             allow_missing_crl=True))
    assert (err.category, err.rule) == (Category.CHAIN_UNTRUSTED, "validity")
    both = CollateralStore.load([V / "tdx/trustee-gnr-v4", ROOTS])
    assert DcapVerifier(both).verify_tdx(gnr, at=at, allow_missing_crl=True).tcb.status == \
        "OutOfDate"


@pytest.mark.parametrize(("at", "issued"), [
    ("2026-02-10T00:00:00Z", "2026-02-01T14:49:26Z"),
    ("2026-03-01T00:00:00Z", "2026-02-18T10:58:51Z"),
    ("2026-03-10T00:00:00Z", "2026-02-18T10:58:51Z"),
    ("2025-10-01T00:00:00Z", "2025-09-29T18:29:22Z"),
])
def test_tcb_info_is_chosen_by_window_newest_first(at: str, issued: str) -> None:
    """Three TCB Infos of FMSPC 90c06f000000: the newest whose window contains the time."""
    store = CollateralStore.load([V / "tdx/gotdx-emr-v5", EMR_BUNDLE, ROOTS,
                                  V / "tdx/teekit-tcbinfo/tcbInfo-tdx-90c06f000000.json"])
    anchor = Anchor(IntelTrustStore.pinned(), store)
    when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    doc = anchor.tcb_info("TDX", bytes.fromhex("90c06f000000"), when, None)
    assert doc.parsed.issue_date == datetime.fromisoformat(issued.replace("Z", "+00:00"))


def test_no_tcb_info_window_contains_the_time_names_the_windows() -> None:
    """Between the windows of all TCB Infos for the FMSPC: COLLATERAL_STALE naming them."""
    store = CollateralStore.load([V / "tdx/gotdx-emr-v5", EMR_BUNDLE, ROOTS])
    anchor = Anchor(IntelTrustStore.pinned(), store)
    err = category(lambda: anchor.tcb_info("TDX", bytes.fromhex("90c06f000000"),
                                           datetime(2025, 12, 1, tzinfo=UTC), None))
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "collateral-window")
    assert "2026-02-01T14:49:26" in err.expected and "2026-02-18T10:58:51" in err.expected


def test_bundle_and_pcs_files_are_recognised_by_content(tmp_path: Path) -> None:
    """Renamed files (no telling names or extensions) index the same collateral."""
    for i, src in enumerate([GOTDX / "sample_tcbInfo_response", SGX_BUNDLE, GOTDX / "pckcrl",
                             ROOTS / "tcb-signing-chain-2018-2025.pem"]):
        shutil.copy(src, tmp_path / f"blob{i}")
    pem_crl = tmp_path / "blob9"
    crl = x509.load_der_x509_crl((GOTDX / "rootcrl.der").read_bytes())
    pem_crl.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    store = CollateralStore.load([tmp_path])
    kinds = sorted((d.kind, d.id) for d in store.intel_documents)
    assert kinds == [("enclaveIdentity", "QE"), ("tcbInfo", "SGX"), ("tcbInfo", "TDX")]
    assert len(store.crls) == 4  # PCK CRL (DER), root CRL (PEM), bundle PCK + root CRLs
    assert store.with_subject_cn("Intel SGX TCB Signing")


def test_base64_and_naive_time_inputs() -> None:
    """The verifier takes raw bytes only (base64 text is MALFORMED) and an aware time."""
    verifier = DcapVerifier(CollateralStore.empty())
    err = tdx_error(verifier, base64.b64encode(SPR.read_bytes()))
    assert err.category is Category.MALFORMED
    with pytest.raises(ValueError, match="timezone"):
        verifier.verify_tdx(SPR.read_bytes(), at=datetime(2023, 7, 1))


def test_simulator_collateral_in_the_store_is_not_intel_collateral(tmp_path: Path) -> None:
    """A TD_QE identity signed under a simulator root (current at the time) neither stands in
    for Intel's nor counts as forged: without Intel's the quote is COLLATERAL_STALE, and the
    simulator's quote still verifies under its own root from the same store."""
    from attester_agent.simulator.dcap import DcapTestCa, TdxSimulator  # noqa: PLC0415

    ca = DcapTestCa.generate(name="mixed store")
    ca.write_collateral(tmp_path / "sim", now=AT_2023)
    store = CollateralStore.load([tmp_path / "sim", ROOTS, GOTDX / "sample_tcbInfo_response",
                                  GOTDX / "pckcrl", GOTDX / "rootcrl.der"])
    verifier = DcapVerifier(store, simulator_roots=[IntelTrustStore.from_der(ca.root_der)])
    err = tdx_error(verifier, SPR.read_bytes())
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "collateral-missing")
    claims = verifier.verify_tdx(TdxSimulator(ca).quote(bytes(64)), at=AT_2023)
    assert claims.insecure_root is True
