"""The DCAP simulator: its Intel-style test PKI and collateral, byte-exact TDX/SGX quotes that
verify end to end through DcapVerifier at every TCB level, the CCEL, RTMR3 and save/load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import given
from hypothesis import strategies as st
from support.paths import VECTORS

from attester_agent.simulator import dcap_collateral as coll
from attester_agent.simulator.ccel import TdBoot
from attester_agent.simulator.dcap import (
    DEFAULT_MR_SEAM,
    DcapTestCa,
    SgxSimulator,
    TdxSimulator,
    qe_binding,
)
from attester_agent.simulator.dcap_ca import (
    PCK_CRL_FILE,
    QE_IDENTITY_FILE,
    ROOT_CRL_FILE,
    SGX_TCB_INFO_FILE,
    TCB_SIGNING_CHAIN_FILE,
    TD_QE_IDENTITY_FILE,
    TDX_TCB_INFO_FILE,
)
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.ccel import parse_ccel_log, parse_ccel_table
from keybroker.evidence.dcap_quote import (
    INTEL_QE_VENDOR_ID,
    build_quote,
    parse_quote,
    parse_sgx_quote,
    parse_tdx_quote,
)
from keybroker.evidence.der import der_oid, der_uint
from keybroker.evidence.pcs_document import split_signed_body
from keybroker.evidence.runtime_log import image_event
from keybroker.evidence.sgx_extensions import (
    OID_SGX_EXTENSION,
    PlatformConfiguration,
    SgxExtensions,
    decode_sgx_extensions,
    encode_sgx_extension,
    parse_sgx_extension,
)
from keybroker.evidence.tcg_log import ALG_SHA384
from keybroker.evidence.uefi_event import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    EV_EVENT_TAG,
)
from verifier.collateral.cache import CollateralStore
from verifier.dcap.documents import CollateralVerifier
from verifier.dcap.pck import PckVerifier
from verifier.dcap.schema import TcbStatus
from verifier.dcap.trust import IntelTrustStore
from verifier.dcap.verify import DcapVerifier
from verifier.eventlog.rtmr import check_rtmrs
from verifier.pki import parse_pem_chain

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPORT_DATA = bytes(range(64))
STATUSES = ["UpToDate", "SWHardeningNeeded", "OutOfDate"]


@pytest.fixture(scope="module")
def ca() -> DcapTestCa:
    return DcapTestCa.generate()


@pytest.fixture(scope="module")
def verifier(ca: DcapTestCa, tmp_path_factory: pytest.TempPathFactory) -> DcapVerifier:
    directory = tmp_path_factory.mktemp("collateral")
    ca.write_collateral(directory, now=NOW)
    return DcapVerifier(CollateralStore.load([directory]),
                        simulator_roots=[IntelTrustStore.from_der(ca.root_der)])


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_pki_mimics_intel(ca: DcapTestCa) -> None:
    """CNs, P-256 keys, ECDSA-SHA256, CA flags and key usage as Intel's; every O is INSECURE."""
    leaf = TdxSimulator(ca).pck.certificate
    expected = {ca.root: ("Intel SGX Root CA", True),
                ca.pck_ca: ("Intel SGX PCK Platform CA", True),
                ca.tcb_signing: ("Intel SGX TCB Signing", False),
                leaf: ("Intel SGX PCK Certificate", False)}
    for cert, (name, is_ca) in expected.items():
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        assert cert.version is x509.Version.v3 and cn(cert) == name
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        assert org == "keybroker simulator (INSECURE TEST ROOT)"
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is is_ca
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign is is_ca and usage.digital_signature is not is_ca
    assert ca.root.issuer == ca.root.subject and ca.name == "keybroker simulator"
    assert ca.pck_ca.issuer == ca.root.subject == ca.tcb_signing.issuer
    assert leaf.issuer == ca.pck_ca.subject
    trust = IntelTrustStore.from_der(ca.root_der)
    assert trust.insecure and trust.root.der == ca.root_der
    assert ca.root_pem().startswith(b"-----BEGIN CERTIFICATE-----")


def test_der_primitives() -> None:
    """DER INTEGERs are minimal (0, 127, 128, 255) and the SGX arc encodes as Intel's."""
    assert der_uint(0) == bytes.fromhex("020100")
    assert der_uint(127) == bytes.fromhex("02017f")
    assert der_uint(128) == bytes.fromhex("02020080")
    assert der_uint(255) == bytes.fromhex("020200ff")
    assert der_uint(1, 0x0A) == bytes.fromhex("0a0101")
    assert der_oid("1.2.840.113741.1.13.1") == bytes.fromhex("06092a864886f84d010d01")


@pytest.mark.parametrize("vector", ["tdx/trustee-spr-v4/tdx_quote_4.dat",
                                    "tdx/gotdx-emr-v5/quote_v5_sample.dat",
                                    "sgx/dcapqvl-sgx-v3/sgx_quote"])
def test_sgx_extension_encoding_matches_intel(vector: str) -> None:
    """Re-encoding the decoded SGX extension of a real Intel PCK certificate gives its exact
    extnValue bytes."""
    quote = parse_quote((VECTORS / vector).read_bytes())
    leaf = parse_pem_chain(quote.signature_data.pck_cert_data.data)[0].cert
    value = leaf.extensions.get_extension_for_oid(OID_SGX_EXTENSION).value
    assert isinstance(value, x509.UnrecognizedExtension)
    assert encode_sgx_extension(parse_sgx_extension(value.value)) == value.value


@given(svns=st.lists(st.integers(0, 255), min_size=16, max_size=16),
       pcesvn=st.integers(0, 0xFFFF), fmspc=st.binary(min_size=6, max_size=6),
       pce_id=st.binary(min_size=2, max_size=2), sgx_type=st.sampled_from([0, 1, 2]),
       instance=st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
       flags=st.one_of(st.none(), st.tuples(st.sampled_from([None, True, False]),
                                            st.sampled_from([None, True, False]),
                                            st.sampled_from([None, True, False]))))
def test_sgx_extension_round_trip(svns: list[int], pcesvn: int, fmspc: bytes, pce_id: bytes,
                                  sgx_type: int, instance: bytes | None,
                                  flags: tuple[bool | None, bool | None, bool | None] | None
                                  ) -> None:
    """Any SGX extension value encodes to DER that the verifier's strict parser decodes back."""
    ext = SgxExtensions(ppid=hashlib.sha256(fmspc).digest()[:16], sgx_tcb_svns=tuple(svns),
                        pcesvn=pcesvn, cpusvn=bytes(svns), pce_id=pce_id, fmspc=fmspc,
                        sgx_type=sgx_type, platform_instance_id=instance,
                        configuration=None if flags is None else PlatformConfiguration(*flags))
    assert parse_sgx_extension(encode_sgx_extension(ext)) == ext


def test_pck_leaf_extension_and_chain(ca: DcapTestCa) -> None:
    """The leaf's extension decodes to what the simulator says; the chain validates with CRLs."""
    for sim in (TdxSimulator(ca), SgxSimulator(ca, tcb="OutOfDate")):
        assert decode_sgx_extensions(sim.pck.certificate) == sim.pck.extensions
        chain = PckVerifier(IntelTrustStore.from_der(ca.root_der)).verify(
            ca.pck_chain_pem(sim.pck), at=NOW, root_crl=ca.root_crl(now=NOW),
            pck_crl=ca.pck_crl(now=NOW))
        assert chain.extensions == sim.pck.extensions and chain.ca == "platform"
    assert TdxSimulator(ca).pck.extensions.fmspc == coll.TDX_FMSPC
    assert SgxSimulator(ca, tcb="OutOfDate").pck.extensions.sgx_tcb_svns == coll.sgx_svns(
        "OutOfDate")


def test_collateral_files(ca: DcapTestCa, tmp_path: Path) -> None:
    """write_collateral writes PCS v4 bodies signed over the exact member text, valid
    now-1d .. now+days, and CRLs of the right issuers."""
    ca.write_collateral(tmp_path, now=NOW, days=10)
    docs = CollateralVerifier(IntelTrustStore.from_der(ca.root_der))
    chain = (tmp_path / TCB_SIGNING_CHAIN_FILE).read_bytes()
    root_crl = (tmp_path / ROOT_CRL_FILE).read_bytes()
    for file, tee in ((TDX_TCB_INFO_FILE, "TDX"), (SGX_TCB_INFO_FILE, "SGX")):
        body = (tmp_path / file).read_bytes()
        member = split_signed_body(body, "tcbInfo")
        assert json.loads(body)["tcbInfo"] == json.loads(member.raw)
        info = docs.tcb_info(body, chain, at=NOW, root_crl=root_crl)
        assert info.id == tee and info.version == 3
        assert (info.issue_date, info.next_update) == (NOW - timedelta(days=1),
                                                       NOW + timedelta(days=10))
        assert [lv.status.value for lv in info.tcb_levels] == [
            "UpToDate", "SWHardeningNeeded", "OutOfDate", "Revoked"]
        assert info.tcb_levels[1].advisory_ids == ("INTEL-SA-00615",)
        assert (info.tdx_module is not None) == (tee == "TDX")
        assert [m.id for m in info.tdx_module_identities] == (["TDX_01"] if tee == "TDX" else [])
    for file, ident in ((TD_QE_IDENTITY_FILE, "TD_QE"), (QE_IDENTITY_FILE, "QE")):
        identity = docs.qe_identity((tmp_path / file).read_bytes(), chain, at=NOW,
                                    root_crl=root_crl)
        assert identity.id == ident and identity.mrsigner == ca.qe_mrsigner
        assert identity.isvprodid == coll.QE_ISVPRODID[ident]
    for file, issuer in ((ROOT_CRL_FILE, ca.root), (PCK_CRL_FILE, ca.pck_ca)):
        crl = x509.load_der_x509_crl((tmp_path / file).read_bytes())
        assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())
        assert crl.next_update_utc == NOW + timedelta(days=10)
    assert [cn(c.cert) for c in parse_pem_chain(chain)] == ["Intel SGX TCB Signing",
                                                             "Intel SGX Root CA"]


@pytest.mark.parametrize(("version", "body_type"), [(4, None), (5, None), (5, 2)])
def test_tdx_quote_byte_exact(ca: DcapTestCa, version: int, body_type: int | None) -> None:
    """TDX quotes parse, rebuild byte for byte and carry the QE binding and a 3-cert chain."""
    sim = TdxSimulator(ca, version=version, body_type=body_type)
    raw = sim.quote(REPORT_DATA)
    quote = parse_tdx_quote(raw)
    assert build_quote(quote) == raw
    assert quote.header.version == version and quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert quote.body_type == (body_type or (2 if version == 4 else 3))
    assert quote.td_report.is_td15 == (quote.body_type == 3)
    sig = quote.signature_data
    assert sig.attestation_key == sim.attestation_public_key
    assert sig.qe_report.report_data == qe_binding(sig.attestation_key, sig.qe_auth_data)
    assert sig.qe_report.mr_signer == ca.qe_mrsigner and sig.qe_report.isv_prod_id == 2
    assert len(parse_pem_chain(sig.pck_cert_data.data)) == 3
    assert sig.pck_cert_data.data.endswith(b"-----\n\x00")


def test_sgx_quote_byte_exact(ca: DcapTestCa) -> None:
    """SGX v3 quotes parse, rebuild byte for byte and carry the enclave's identity."""
    sim = SgxSimulator(ca, mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=7,
                       isv_svn=3)
    raw = sim.quote(REPORT_DATA)
    quote = parse_sgx_quote(raw)
    assert build_quote(quote) == raw
    body = quote.sgx_report
    assert (body.mr_enclave, body.mr_signer, body.isv_prod_id, body.isv_svn) == (
        b"\x11" * 32, b"\x22" * 32, 7, 3)
    assert not body.debug and body.report_data == REPORT_DATA
    assert quote.header.qe_svn == coll.QE_ISVSVN and quote.header.pce_svn == coll.PCESVN
    assert quote.signature_data.qe_report.isv_prod_id == 1


@pytest.mark.parametrize("version", [4, 5])
def test_tdx_verifies_with_claims(ca: DcapTestCa, verifier: DcapVerifier, version: int) -> None:
    """A TDX quote verifies with exactly the simulator's values as claims, flagged insecure."""
    sim = TdxSimulator(ca, version=version, mr_config_id=b"\x07" * 48, xfam=0x600E7)
    claims = verifier.verify_tdx(sim.quote(REPORT_DATA), at=NOW)
    assert claims.insecure_root and claims.version == version
    assert claims.mr_td == sim.mr_td and claims.rtmrs == sim.rtmrs
    assert claims.mr_config_id == b"\x07" * 48 and claims.report_data == REPORT_DATA
    assert claims.td_attributes.raw == 0x10000000
    assert claims.td_attributes.bit("sept_ve_disable") and not claims.td_attributes.debug
    assert claims.xfam == 0x600E7 and claims.mr_seam == DEFAULT_MR_SEAM
    assert claims.mr_signer_seam == bytes(48)
    assert claims.tee_tcb_svn == coll.tee_tcb_svn("UpToDate")
    tcb = claims.tcb
    assert (tcb.status, tcb.tdx_status, tcb.module_status, tcb.qe_status) == (
        "UpToDate", "UpToDate", "UpToDate", "UpToDate")
    assert tcb.fmspc == coll.TDX_FMSPC and tcb.pce_id == coll.PCE_ID
    assert tcb.tcb_date == datetime(2024, 11, 13, tzinfo=UTC)
    assert tcb.advisory_ids == () and tcb.collateral_warnings == ()


def test_sgx_verifies_with_claims(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """An SGX quote verifies with the enclave's values as claims, flagged insecure."""
    sim = SgxSimulator(ca, mr_enclave=b"\x33" * 32, mr_signer=b"\x44" * 32, isv_svn=5)
    claims = verifier.verify_sgx(sim.quote(REPORT_DATA), at=NOW)
    assert claims.insecure_root and not claims.debug
    assert (claims.mr_enclave, claims.mr_signer, claims.isv_prod_id, claims.isv_svn) == (
        b"\x33" * 32, b"\x44" * 32, 1, 5)
    assert claims.report_data == REPORT_DATA
    assert claims.tcb.status == "UpToDate" and claims.tcb.fmspc == coll.SGX_FMSPC


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_tcb_levels(ca: DcapTestCa, verifier: DcapVerifier, tee: str, status: str) -> None:
    """tcb= selects the matching level: status and advisory ids come out as Intel spells them."""
    if tee == "tdx":
        tcb = verifier.verify_tdx(TdxSimulator(ca, tcb=status).quote(REPORT_DATA), at=NOW).tcb
    else:
        tcb = verifier.verify_sgx(SgxSimulator(ca, tcb=status).quote(REPORT_DATA), at=NOW).tcb
    level = next(lv for lv in coll.LEVELS if lv.status == status)
    assert tcb.status == TcbStatus(status).value
    assert tcb.advisory_ids == level.advisory_ids


@pytest.mark.parametrize("status", ["Revoked", "unsupported"])
@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_revoked_or_unmatched_tcb_rejected(ca: DcapTestCa, verifier: DcapVerifier, tee: str,
                                           status: str) -> None:
    """A Revoked level or a platform matching no level is TCB_POLICY."""
    with pytest.raises(KeybrokerError) as exc:
        if tee == "tdx":
            verifier.verify_tdx(TdxSimulator(ca, tcb=status).quote(REPORT_DATA), at=NOW)
        else:
            verifier.verify_sgx(SgxSimulator(ca, tcb=status).quote(REPORT_DATA), at=NOW)
    assert exc.value.category is Category.TCB_POLICY


def test_unknown_tcb_choice_refused(ca: DcapTestCa) -> None:
    """The simulator refuses a TCB name it has no level for."""
    with pytest.raises(ValueError, match="unknown simulator TCB"):
        TdxSimulator(ca, tcb="ConfigurationNeeded")


def test_ccel_replays_to_quote(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """The CCEL (valid ACPI table, SHA-384 log) replays to the verified quote's RTMR0..3 and
    records the firmware, kernel, command line and initrd digests."""
    boot = TdBoot(kernel=b"another kernel", cmdline="console=ttyS0 quiet")
    sim = TdxSimulator(ca, boot=boot)
    claims = verifier.verify_tdx(sim.quote(REPORT_DATA), at=NOW)
    table_raw, data = sim.ccel()
    table = parse_ccel_table(table_raw)
    assert len(table_raw) == 56 and sum(table_raw) % 256 == 0 and table.cc_type == 2
    assert len(data) == table.laml
    log = parse_ccel_log(data, table)
    events = check_rtmrs(log.events, claims.rtmrs)
    assert claims.rtmrs[3] == bytes(48) and {e.rtmr for e in events} == {0, 1, 2}
    digests = {(e.event_type, e.digest) for e in events}
    assert (EV_EFI_PLATFORM_FIRMWARE_BLOB2, hashlib.sha384(boot.firmware).digest()) in digests
    kernel = hashlib.sha384(b"another kernel").digest()
    assert (EV_EFI_BOOT_SERVICES_APPLICATION, kernel) in digests
    assert (EV_EVENT_TAG, hashlib.sha384("console=ttyS0 quiet\x00".encode("utf-16-le"))
            .digest()) in digests
    assert (EV_EVENT_TAG, boot.initrd_digest) in digests
    assert all(ev.digest(ALG_SHA384) is not None for ev in log.events)
    assert sim.mr_td == TdxSimulator(ca).mr_td  # MRTD measures the firmware only
    assert TdxSimulator(ca, boot=TdBoot(firmware=b"other")).mr_td != sim.mr_td


def test_rtmr3_extend_and_persist(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """extend_rtmr3 mirrors `measure`: SHA-384 extend with the event digest; rtmr3= restores it."""
    sim = TdxSimulator(ca)
    event = image_event("sha256:" + "ab" * 32)
    sim.extend_rtmr3(event)
    assert sim.rtmr3 == hashlib.sha384(bytes(48) + event.digest).digest()
    claims = verifier.verify_tdx(sim.quote(REPORT_DATA), at=NOW)
    assert claims.rtmrs[3] == sim.rtmr3
    table, data = sim.ccel()
    with pytest.raises(KeybrokerError) as exc:
        check_rtmrs(parse_ccel_log(data, parse_ccel_table(table)).events, claims.rtmrs)
    assert exc.value.category is Category.EVENT_LOG  # the CCEL alone does not cover RTMR3
    again = TdxSimulator(ca, rtmr3=sim.rtmr3)
    assert again.rtmrs == sim.rtmrs
    with pytest.raises(ValueError, match="48 bytes"):
        again.rtmr3 = bytes(32)


def test_explicit_rtmrs(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """rtmrs= overrides all four registers."""
    values = [bytes([i]) * 48 for i in range(1, 5)]
    claims = verifier.verify_tdx(TdxSimulator(ca, rtmrs=values).quote(REPORT_DATA), at=NOW)
    assert list(claims.rtmrs) == values


def test_sign_resigns_mutations(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """sign() re-signs a mutated quote so that it verifies with the mutated values."""
    sim = TdxSimulator(ca)
    template = sim.template(REPORT_DATA)
    mutated = template.with_changes(body=dataclasses.replace(template.td_report,
                                                             mr_owner=b"\x99" * 48))
    claims = verifier.verify_tdx(sim.sign(mutated), at=NOW)
    assert claims.mr_owner == b"\x99" * 48
    assert parse_quote(sim.quote(REPORT_DATA)).signature_data.signature != bytes(64)


def test_save_load(ca: DcapTestCa, tmp_path: Path) -> None:
    """save writes 0600 keys in a 0700 directory; a loaded CA's quotes verify under its root."""
    target = tmp_path / "dcap-ca"
    ca.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for stem in ("root", "pck-platform-ca", "tcb-signing"):
        assert stat.S_IMODE((target / f"{stem}-key.pem").stat().st_mode) == 0o600
    loaded = DcapTestCa.load(target)
    assert (loaded.root, loaded.pck_ca, loaded.tcb_signing) == (ca.root, ca.pck_ca,
                                                                ca.tcb_signing)
    assert loaded.name == ca.name and loaded.qe_mrsigner == ca.qe_mrsigner
    collateral = tmp_path / "collateral"
    loaded.write_collateral(collateral, now=NOW)
    root = x509.load_pem_x509_certificate((target / "root.pem").read_bytes())
    verifier = DcapVerifier(CollateralStore.load([collateral]), simulator_roots=[
        IntelTrustStore.from_der(root.public_bytes(serialization.Encoding.DER))])
    assert verifier.verify_tdx(TdxSimulator(ca).quote(REPORT_DATA), at=NOW).insecure_root
    assert verifier.verify_sgx(SgxSimulator(loaded).quote(REPORT_DATA), at=NOW).insecure_root


def test_missing_crls(ca: DcapTestCa, tmp_path: Path) -> None:
    """Without CRLs a simulator quote is COLLATERAL_STALE unless missing CRLs are allowed, and
    then the claims name them."""
    ca.write_collateral(tmp_path, now=NOW)
    (tmp_path / ROOT_CRL_FILE).unlink()
    (tmp_path / PCK_CRL_FILE).unlink()
    verifier = DcapVerifier(CollateralStore.load([tmp_path]),
                            simulator_roots=[IntelTrustStore.from_der(ca.root_der)])
    quote = TdxSimulator(ca).quote(REPORT_DATA)
    with pytest.raises(KeybrokerError) as exc:
        verifier.verify_tdx(quote, at=NOW)
    assert exc.value.category is Category.COLLATERAL_STALE
    claims = verifier.verify_tdx(quote, at=NOW, allow_missing_crl=True)
    assert set(claims.tcb.collateral_warnings) == {"root-ca-crl missing", "pck-crl missing"}


def test_unconfigured_simulator_root(ca: DcapTestCa, tmp_path: Path) -> None:
    """A verifier that does not trust the simulator root rejects its quotes (CHAIN_UNTRUSTED),
    even with the simulator's collateral loaded."""
    ca.write_collateral(tmp_path, now=NOW)
    verifier = DcapVerifier(CollateralStore.load([tmp_path]))
    for quote, verify in ((TdxSimulator(ca).quote(REPORT_DATA), verifier.verify_tdx),
                          (SgxSimulator(ca).quote(REPORT_DATA), verifier.verify_sgx)):
        with pytest.raises(KeybrokerError) as exc:
            verify(quote, at=NOW)
        assert exc.value.category is Category.CHAIN_UNTRUSTED
