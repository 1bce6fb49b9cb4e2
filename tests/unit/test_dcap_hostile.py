"""hostile-evidence.md rows that need DCAP signing keys, built with the simulator's test PKI
and run through DcapVerifier; each asserts the error category."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attester_agent.simulator import dcap_collateral as coll
from attester_agent.simulator.dcap import DcapTestCa, SgxSimulator, TdxSimulator, qe_binding
from attester_agent.simulator.dcap_ca import (
    PCK_CRL_FILE,
    ROOT_CRL_FILE,
    SGX_TCB_INFO_FILE,
    TD_QE_IDENTITY_FILE,
    TDX_TCB_INFO_FILE,
)
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.dcap_quote import HEADER_SIZE, DcapQuote
from keybroker.evidence.dcap_signature import CertificationData
from verifier.collateral.cache import CollateralStore
from verifier.dcap.trust import IntelTrustStore
from verifier.dcap.verify import DcapVerifier

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPORT_DATA = bytes(range(64))
MRTD_OFFSET = 0x88  # in the TD report body (evidence-formats.md 2.3)
MRENCLAVE_OFFSET = 0x40  # in the SGX report body (section 3.2)
V4_SIGNED_END = 0x278
_FILES = {"tdx_tcb_info": TDX_TCB_INFO_FILE, "sgx_tcb_info": SGX_TCB_INFO_FILE,
          "td_qe_identity": TD_QE_IDENTITY_FILE, "root_crl": ROOT_CRL_FILE,
          "pck_crl": PCK_CRL_FILE}


@pytest.fixture(scope="module")
def ca() -> DcapTestCa:
    return DcapTestCa.generate()


@pytest.fixture(scope="module")
def verifier(ca: DcapTestCa, tmp_path_factory: pytest.TempPathFactory) -> DcapVerifier:
    return verifier_for(ca, tmp_path_factory.mktemp("collateral"))


@pytest.fixture(scope="module")
def tdx(ca: DcapTestCa) -> TdxSimulator:
    return TdxSimulator(ca)


@pytest.fixture(scope="module")
def tdx_quote(tdx: TdxSimulator) -> bytes:
    return tdx.quote(REPORT_DATA)


def verifier_for(ca: DcapTestCa, directory: Path, *, extra: Path | None = None,
                 **collateral: bytes) -> DcapVerifier:
    """A verifier trusting ``ca`` whose store holds its collateral (plus ``extra``), with the
    files named by ``collateral`` keys (see ``_FILES``) replaced."""
    ca.write_collateral(directory, now=NOW)
    for name, data in collateral.items():
        (directory / _FILES[name]).write_bytes(data)
    paths = [directory] + ([extra] if extra is not None else [])
    return DcapVerifier(CollateralStore.load(paths),
                        simulator_roots=[IntelTrustStore.from_der(ca.root_der)])


def category(call: Callable[[], object]) -> Category:
    """The category of the typed error ``call`` raises (fails if it returns)."""
    with pytest.raises(KeybrokerError) as exc:
        call()
    return exc.value.category


def flip(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    return raw[:offset] + bytes([raw[offset] ^ mask]) + raw[offset + 1:]


def with_td(quote: DcapQuote, **changes: object) -> DcapQuote:
    return quote.with_changes(body=dataclasses.replace(quote.td_report, **changes))


def with_header(quote: DcapQuote, **changes: object) -> DcapQuote:
    return quote.with_changes(header=dataclasses.replace(quote.header, **changes))


def with_qe(quote: DcapQuote, **changes: object) -> DcapQuote:
    sig = quote.signature_data
    return quote.with_changes(signature_data=dataclasses.replace(
        sig, qe_report=dataclasses.replace(sig.qe_report, **changes)))


# --- row 6: unknown version / algorithm ----------------------------------------------------

@pytest.mark.parametrize("changes", [{"att_key_type": 3}, {"att_key_type": 1}, {"version": 3},
                                     {"version": 6}])
def test_row6_unknown_version_or_key_type(tdx: TdxSimulator, verifier: DcapVerifier,
                                          changes: dict[str, int]) -> None:
    """Row 6: a re-signed TDX quote with att_key_type != 2 or version 3/6 is MALFORMED."""
    quote = tdx.sign(with_header(tdx.template(REPORT_DATA), **changes))
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.MALFORMED


# --- row 8: type confusion -----------------------------------------------------------------

def test_row8_sgx_quote_in_tdx_path(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """Row 8: a valid SGX quote given to verify_tdx is MALFORMED."""
    quote = SgxSimulator(ca).quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.MALFORMED


@pytest.mark.parametrize("version", [4, 5])
def test_row8_tdx_quote_in_sgx_path(ca: DcapTestCa, verifier: DcapVerifier,
                                    version: int) -> None:
    """Row 8: a valid TDX quote given to verify_sgx is MALFORMED."""
    quote = TdxSimulator(ca, version=version).quote(REPORT_DATA)
    assert category(lambda: verifier.verify_sgx(quote, at=NOW)) is Category.MALFORMED


def test_row8_sgx_tee_type_in_tdx_quote(tdx: TdxSimulator, verifier: DcapVerifier) -> None:
    """Row 8: a re-signed TDX quote whose header says tee_type 0 (SGX) is MALFORMED."""
    quote = tdx.sign(with_header(tdx.template(REPORT_DATA), tee_type=0))
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.MALFORMED


# --- row 10: body bit flip without re-signing ----------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_row10_mrtd_bit_flip(ca: DcapTestCa, verifier: DcapVerifier, version: int) -> None:
    """Row 10: one MRTD bit flipped after signing is SIG_INVALID."""
    raw = TdxSimulator(ca, version=version).quote(REPORT_DATA)
    body = HEADER_SIZE + (6 if version == 5 else 0)
    quote = flip(raw, body + MRTD_OFFSET)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.SIG_INVALID


def test_row10_sgx_mrenclave_bit_flip(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """Row 10 (SGX): one MRENCLAVE bit flipped after signing is SIG_INVALID."""
    quote = flip(SgxSimulator(ca).quote(REPORT_DATA), HEADER_SIZE + MRENCLAVE_OFFSET, 0x80)
    assert category(lambda: verifier.verify_sgx(quote, at=NOW)) is Category.SIG_INVALID


# --- rows 12, 13: wrong root / root from evidence ------------------------------------------

def test_row12_quote_under_unconfigured_ca(ca: DcapTestCa, tmp_path: Path) -> None:
    """Row 12: a quote from a second, unconfigured test CA is CHAIN_UNTRUSTED, even with that
    CA's own (validly signed) collateral in the store."""
    other = DcapTestCa.generate(name="attacker lab")
    other.write_collateral(tmp_path / "other", now=NOW)
    verifier = verifier_for(ca, tmp_path / "ours", extra=tmp_path / "other")
    for quote, verify in ((TdxSimulator(other).quote(REPORT_DATA), verifier.verify_tdx),
                          (SgxSimulator(other).quote(REPORT_DATA), verifier.verify_sgx)):
        assert category(lambda q=quote, v=verify: v(q, at=NOW)) is Category.CHAIN_UNTRUSTED


def test_row13_attacker_root_in_chain(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """Row 13: an attacker CA with byte-identical names puts its own self-signed root in the
    quote's PCK chain: CHAIN_UNTRUSTED (roots come only from configuration)."""
    attacker = DcapTestCa.generate(name=ca.name)
    assert attacker.root.subject == ca.root.subject
    quote = TdxSimulator(attacker).quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.CHAIN_UNTRUSTED


def test_row13_attacker_chain_ending_in_trusted_root(ca: DcapTestCa,
                                                     verifier: DcapVerifier) -> None:
    """Row 13: attacker leaf and intermediate followed by the genuine configured root (the
    quote and QE report validly signed by the attacker's keys) are CHAIN_UNTRUSTED."""
    attacker = DcapTestCa.generate(name=ca.name)
    sim = TdxSimulator(attacker)
    template = sim.template(REPORT_DATA)
    pem = serialization.Encoding.PEM
    chain = (sim.pck.certificate.public_bytes(pem) + attacker.pck_ca.public_bytes(pem)
             + ca.root_pem())
    sig = dataclasses.replace(template.signature_data,
                              pck_cert_data=CertificationData(5, chain))
    quote = sim.sign(template.with_changes(signature_data=sig))
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.CHAIN_UNTRUSTED


# --- row 17: revoked intermediate / leaf ---------------------------------------------------

def test_row17_intermediate_in_root_crl(ca: DcapTestCa, tdx: TdxSimulator,
                                        tmp_path: Path) -> None:
    """Row 17: the PCK Platform CA listed in the Root CA CRL is CHAIN_UNTRUSTED."""
    crl = ca.root_crl([ca.pck_ca.serial_number], now=NOW)
    verifier = verifier_for(ca, tmp_path, root_crl=crl)
    quote = tdx.quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.CHAIN_UNTRUSTED


def test_row17_leaf_in_pck_crl(ca: DcapTestCa, tmp_path: Path) -> None:
    """Row 17: the PCK leaf listed in the PCK CRL is CHAIN_UNTRUSTED (other leaves still pass)."""
    revoked, fine = SgxSimulator(ca), SgxSimulator(ca)
    verifier = verifier_for(ca, tmp_path, pck_crl=ca.pck_crl([revoked.pck.serial], now=NOW))
    quote = revoked.quote(REPORT_DATA)
    assert category(lambda: verifier.verify_sgx(quote, at=NOW)) is Category.CHAIN_UNTRUSTED
    assert verifier.verify_sgx(fine.quote(REPORT_DATA), at=NOW).tcb.status == "UpToDate"


# --- row 18: expired PCK leaf --------------------------------------------------------------

@pytest.mark.parametrize(("start", "end"), [(NOW - timedelta(days=800), NOW - timedelta(days=1)),
                                            (NOW + timedelta(days=1), NOW + timedelta(days=800))])
def test_row18_pck_outside_validity(ca: DcapTestCa, verifier: DcapVerifier, start: datetime,
                                    end: datetime) -> None:
    """Row 18: a PCK leaf expired (or not yet valid) at the verification time is
    CHAIN_UNTRUSTED."""
    pck = ca.issue_pck(sgx_svns=coll.sgx_svns("UpToDate"), fmspc=coll.TDX_FMSPC,
                       not_before=start, not_after=end)
    quote = TdxSimulator(ca, pck=pck).quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.CHAIN_UNTRUSTED


# --- row 20: QE binding ----------------------------------------------------------------------

@pytest.mark.parametrize("tee", ["tdx", "sgx"])
@pytest.mark.parametrize("kind", ["wrong-hash", "nonzero-upper-half", "other-key"])
def test_row20_qe_binding(ca: DcapTestCa, verifier: DcapVerifier, tee: str, kind: str) -> None:
    """Row 20: a PCK-signed QE report whose report_data is not SHA-256(att_key || auth data)
    || 0^32 (wrong hash, non-zero upper half, or the hash of another key) is SIG_INVALID."""
    sim: TdxSimulator | SgxSimulator = TdxSimulator(ca) if tee == "tdx" else SgxSimulator(ca)
    template = sim.template(REPORT_DATA)
    sig = template.signature_data
    good = qe_binding(sig.attestation_key, sig.qe_auth_data)
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    other_key = other.x.to_bytes(32, "big") + other.y.to_bytes(32, "big")
    report_data = {"wrong-hash": bytes(64), "nonzero-upper-half": good[:32] + b"\x01" * 32,
                   "other-key": qe_binding(other_key, sig.qe_auth_data)}[kind]
    quote = sim.sign(template, qe_report_data=report_data)
    verify = verifier.verify_tdx if tee == "tdx" else verifier.verify_sgx
    assert category(lambda: verify(quote, at=NOW)) is Category.SIG_INVALID


# --- row 21: forged QE identity / QE mismatch ------------------------------------------------

def _forged_identities(ca: DcapTestCa) -> dict[str, bytes]:
    genuine = ca.qe_identity("TD_QE", now=NOW)
    flipped = genuine.replace(b'"isvprodid":2', b'"isvprodid":3')
    assert flipped != genuine
    attacker = ec.generate_private_key(ec.SECP256R1())
    head, sig = genuine.rsplit(b'"signature":"', 1)
    bad_hex = head + b'"signature":"' + (b"1" if sig.startswith(b"0") else b"0") + sig[1:]
    return {"member-edited": flipped, "signature-edited": bad_hex,
            "signed-by-other-key": ca.qe_identity("TD_QE", now=NOW, signing_key=attacker)}


@pytest.mark.parametrize("kind", ["member-edited", "signature-edited", "signed-by-other-key"])
def test_row21_qe_identity_bad_signature(ca: DcapTestCa, tdx: TdxSimulator, tmp_path: Path,
                                         kind: str) -> None:
    """Row 21: a QE identity whose signature does not verify under the TCB signing chain is
    CHAIN_UNTRUSTED."""
    verifier = verifier_for(ca, tmp_path, td_qe_identity=_forged_identities(ca)[kind])
    quote = tdx.quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.CHAIN_UNTRUSTED


@pytest.mark.parametrize("changes", [{"mr_signer": b"\xee" * 32}, {"isv_prod_id": 9},
                                     {"misc_select": 1},
                                     {"attributes": bytes.fromhex("17" + "00" * 7 + "e7"
                                                                  + "00" * 7)}])
@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_row21_qe_report_not_the_identity(ca: DcapTestCa, verifier: DcapVerifier, tee: str,
                                          changes: dict[str, object]) -> None:
    """Row 21: a validly signed QE report whose MRSIGNER, ISVPRODID, MISCSELECT or attributes
    (DEBUG) differ from the signed QE identity is CHAIN_UNTRUSTED."""
    sim: TdxSimulator | SgxSimulator = TdxSimulator(ca) if tee == "tdx" else SgxSimulator(ca)
    quote = sim.sign(with_qe(sim.template(REPORT_DATA), **changes))
    verify = verifier.verify_tdx if tee == "tdx" else verifier.verify_sgx
    assert category(lambda: verify(quote, at=NOW)) is Category.CHAIN_UNTRUSTED


# --- row 39: TCB status --------------------------------------------------------------------

def test_row39_revoked_tcb(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """Row 39: a platform at a Revoked TCB level is TCB_POLICY in every mode (TDX and SGX);
    OutOfDate verifies, reported as a claim for policy to judge."""
    tdx_quote = TdxSimulator(ca, tcb="Revoked").quote(REPORT_DATA)
    sgx_quote = SgxSimulator(ca, tcb="Revoked").quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(tdx_quote, at=NOW)) is Category.TCB_POLICY
    assert category(lambda: verifier.verify_sgx(sgx_quote, at=NOW)) is Category.TCB_POLICY
    stale = verifier.verify_tdx(TdxSimulator(ca, tcb="OutOfDate").quote(REPORT_DATA), at=NOW)
    assert stale.tcb.status == "OutOfDate" and stale.tcb.advisory_ids


# --- row 40: TDX module identity -----------------------------------------------------------

def test_row40_mrsignerseam_not_module_signer(ca: DcapTestCa, verifier: DcapVerifier) -> None:
    """Row 40: MRSIGNERSEAM other than the module identity's signer is TCB_POLICY."""
    quote = TdxSimulator(ca, mr_signer_seam=b"\x5a" * 48).quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.TCB_POLICY


@pytest.mark.parametrize("changes", [
    {"tee_tcb_svn": bytes([1, coll.TDX_MODULE_MAJOR, 7]) + bytes(13)},  # SVN below all levels
    {"tee_tcb_svn": bytes([4, 0x7E, 7]) + bytes(13)},  # no identity for module major 0x7E
    {"seam_attributes": b"\x01" + bytes(7)},
])
def test_row40_module_svn_or_attributes(tdx: TdxSimulator, verifier: DcapVerifier,
                                        changes: dict[str, bytes]) -> None:
    """Row 40: a re-signed quote whose module SVN is below every module level, whose module
    has no identity, or with non-zero SEAMATTRIBUTES is TCB_POLICY."""
    quote = tdx.sign(with_td(tdx.template(REPORT_DATA), **changes))
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.TCB_POLICY


# --- row 43: stale collateral --------------------------------------------------------------

def _stale(ca: DcapTestCa) -> dict[str, dict[str, bytes]]:
    old = NOW - timedelta(days=40)
    other = ec.generate_private_key(ec.SECP256R1())
    return {
        "tcb-info-expired": {"tdx_tcb_info": ca.tcb_info("TDX", now=old)},
        "tcb-info-not-yet-issued": {"tdx_tcb_info": ca.tcb_info("TDX", now=NOW
                                                                + timedelta(days=3))},
        "qe-identity-expired": {"td_qe_identity": ca.qe_identity("TD_QE", now=old)},
        "pck-crl-expired": {"pck_crl": ca.pck_crl(now=old)},
        "root-crl-expired": {"root_crl": ca.root_crl(now=old)},
        "root-crl-not-signed-by-root": {"root_crl": ca.root_crl(now=NOW, signing_key=other)},
        "pck-crl-signed-by-root": {"pck_crl": ca.pck_crl(now=NOW, signing_key=ca.root_key)},
    }


@pytest.mark.parametrize("case", ["tcb-info-expired", "tcb-info-not-yet-issued",
                                  "qe-identity-expired", "pck-crl-expired", "root-crl-expired"])
def test_row43_stale_collateral(ca: DcapTestCa, tdx: TdxSimulator, tmp_path: Path,
                                case: str) -> None:
    """Row 43: TCB info / QE identity / CRLs not current at the verification time are
    COLLATERAL_STALE."""
    verifier = verifier_for(ca, tmp_path, **_stale(ca)[case])
    quote = tdx.quote(REPORT_DATA)
    assert category(lambda: verifier.verify_tdx(quote, at=NOW)) is Category.COLLATERAL_STALE


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("case", ["root-crl-not-signed-by-root", "pck-crl-signed-by-root"])
def test_row43_crl_not_signed_by_its_ca_is_untrusted(ca: DcapTestCa, tdx: TdxSimulator,
                                                     tmp_path: Path, case: str,
                                                     allow: bool) -> None:
    """Row 43: a CRL in its CA's name that the CA did not sign is CHAIN_UNTRUSTED, never
    "missing", even with allow_missing_crl (issue 10: it used to count as absent)."""
    verifier = verifier_for(ca, tmp_path, **_stale(ca)[case])
    quote = tdx.quote(REPORT_DATA)
    with pytest.raises(KeybrokerError) as exc:
        verifier.verify_tdx(quote, at=NOW, allow_missing_crl=allow)
    assert (exc.value.category, exc.value.rule) == (Category.CHAIN_UNTRUSTED, "crl-signature")


def test_row43_sgx_tcb_info_expired(ca: DcapTestCa, tmp_path: Path) -> None:
    """Row 43 (SGX): an SGX TCB info past its nextUpdate is COLLATERAL_STALE."""
    verifier = verifier_for(ca, tmp_path, sgx_tcb_info=ca.tcb_info(
        "SGX", now=NOW - timedelta(days=31), days=30))
    quote = SgxSimulator(ca).quote(REPORT_DATA)
    assert category(lambda: verifier.verify_sgx(quote, at=NOW)) is Category.COLLATERAL_STALE


def test_row43_whole_collateral_expired(ca: DcapTestCa, tdx: TdxSimulator,
                                        verifier: DcapVerifier) -> None:
    """Row 43: the same collateral one second past its nextUpdate is COLLATERAL_STALE."""
    quote = tdx.quote(REPORT_DATA)
    assert verifier.verify_tdx(quote, at=NOW).tcb.status == "UpToDate"
    late = NOW + timedelta(days=30, seconds=1)
    assert category(lambda: verifier.verify_tdx(quote, at=late)) is Category.COLLATERAL_STALE


# --- property: any single-byte change of the signed region ---------------------------------

@settings(max_examples=150, deadline=None)
@given(offset=st.integers(0, V4_SIGNED_END - 1), delta=st.integers(1, 255))
def test_signed_region_mutation_raises_only_typed_errors(tdx_quote: bytes,
                                                         verifier: DcapVerifier, offset: int,
                                                         delta: int) -> None:
    """Changing any one byte of a TDX quote's header or body (no re-signing) is rejected with a
    KeybrokerError, never another exception."""
    mutated = (tdx_quote[:offset] + bytes([(tdx_quote[offset] + delta) % 256])
               + tdx_quote[offset + 1:])
    with pytest.raises(KeybrokerError):
        verifier.verify_tdx(mutated, at=NOW)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_signature_data_mutation_raises_only_typed_errors(tdx_quote: bytes,
                                                          verifier: DcapVerifier,
                                                          data: st.DataObject) -> None:
    """Changing any one byte of a TDX quote before its PCK chain PEM (header, body, quote
    signature, attestation key, QE report and its signature, QE auth data, certification data
    headers) is rejected with a KeybrokerError, never another exception."""
    pem_start = tdx_quote.index(b"-----BEGIN CERTIFICATE-----")
    offset = data.draw(st.integers(0, pem_start - 1))
    delta = data.draw(st.integers(1, 255))
    mutated = (tdx_quote[:offset] + bytes([(tdx_quote[offset] + delta) % 256])
               + tdx_quote[offset + 1:])
    with pytest.raises(KeybrokerError):
        verifier.verify_tdx(mutated, at=NOW)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_byte_mutation_is_typed_or_harmless(tdx_quote: bytes, verifier: DcapVerifier,
                                                data: st.DataObject) -> None:
    """Changing any one byte anywhere in a TDX quote (PCK chain PEM included) either raises a
    KeybrokerError or leaves what is verified unchanged (PEM whitespace, zero padding): the
    claims are then identical and the change lies outside the signed region."""
    offset = data.draw(st.integers(0, len(tdx_quote) - 1))
    delta = data.draw(st.integers(1, 255))
    mutated = (tdx_quote[:offset] + bytes([(tdx_quote[offset] + delta) % 256])
               + tdx_quote[offset + 1:])
    try:
        claims = verifier.verify_tdx(mutated, at=NOW)
    except KeybrokerError:
        return
    assert offset >= V4_SIGNED_END
    assert claims == verifier.verify_tdx(tdx_quote, at=NOW)
