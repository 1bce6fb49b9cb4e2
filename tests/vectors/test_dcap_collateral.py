"""Signed Intel collateral (TCB Info, QE identity): real signatures, windows, tampering, cache."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.pcs_document import SignedMember, split_signed_body, top_level_members
from verifier.dcap.documents import CollateralVerifier
from verifier.dcap.trust import PINNED_ROOT_FINGERPRINT, IntelTrustStore

V = VECTORS
CHAIN_2018 = (V / "tdx/intel-roots/tcb-signing-chain-2018-2025.pem").read_bytes()
CHAIN_2025 = (V / "tdx/intel-roots/tcb-signing-chain-2025-2032.pem").read_bytes()
GOTDX = V / "tdx/gotdx-spr-e4-v4"
AT_2023 = datetime(2023, 7, 1, 1, tzinfo=UTC)
ROOT_CRL = (GOTDX / "rootcrl.der").read_bytes()
TCB_2023 = (GOTDX / "sample_tcbInfo_response").read_bytes()
QE_2023 = (GOTDX / "sample_qeIdentity_response").read_bytes()

# (file, verification time) for raw PCS bodies signed with the 2025 TCB Signing certificate.
RAW_2025 = [
    ("tdx/gotdx-emr-v5/sample_tcbinfo_response_v5", "2026-03-01T00:00:00Z", "90c06f000000"),
    ("tdx/trustee-gnr-v4/tcbInfo.json", "2025-11-01T00:00:00Z", "00a06d080000"),
    ("tdx/teekit-tcbinfo/tcbInfo-tdx-00806f050000.json", "2025-10-28T12:00:00Z",
     "00806f050000"),
    ("tdx/teekit-tcbinfo/tcbInfo-tdx-50806f000000.json", "2025-10-28T12:00:00Z",
     "50806f000000"),
    ("tdx/teekit-tcbinfo/tcbInfo-tdx-90c06f000000.json", "2025-10-28T12:00:00Z",
     "90c06f000000"),
    ("tdx/teekit-tcbinfo/tcbInfo-tdx-b0c06f000000.json", "2025-10-28T12:00:00Z",
     "b0c06f000000"),
    ("sgx/teekit-tcbinfo/tcbInfo-sgx-00906ed50000.json", "2025-10-01T00:00:00Z",
     "00906ed50000"),
]
BUNDLES = [
    ("tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated_collateral.json",
     "2026-03-20T10:41:14Z", "TDX", "TD_QE"),
    ("sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json", "2025-07-19T10:01:17Z", "SGX", "QE"),
]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _verifier() -> CollateralVerifier:
    return CollateralVerifier(IntelTrustStore.pinned())


def test_pinned_root_matches_its_fingerprint() -> None:
    """The shipped Intel root is the pinned one and is byte-identical to the vector."""
    store = IntelTrustStore.pinned()
    assert store.root.fingerprint == PINNED_ROOT_FINGERPRINT
    assert store.is_pinned_root((V / "tdx/intel-roots/IntelSGXRootCA.der").read_bytes())


def test_foreign_root_is_refused() -> None:
    """A store cannot be built from anything but the pinned root."""
    signer = x509.load_pem_x509_certificates(CHAIN_2025)[0]
    with pytest.raises(KeybrokerError) as exc:
        IntelTrustStore.from_der(signer.public_bytes(Encoding.DER))
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_gotdx_tcb_info_and_qe_identity_verify_in_2023() -> None:
    """The 2023 TDX TCB Info and TD_QE identity verify with the 2018 signing chain + root CRL."""
    verifier = _verifier()
    info = verifier.tcb_info(TCB_2023, CHAIN_2018, at=AT_2023, root_crl=ROOT_CRL)
    ident = verifier.qe_identity(QE_2023, CHAIN_2018, at=AT_2023, root_crl=ROOT_CRL)
    assert (info.id, info.fmspc.hex(), info.tcb_evaluation_data_number) == (
        "TDX", "50806f000000", 15)
    assert (ident.id, ident.isvprodid, ident.mrsigner.hex()[:8]) == ("TD_QE", 2, "dc9e2a7c")


@pytest.mark.parametrize(("path", "at", "fmspc"), RAW_2025)
def test_raw_pcs_bodies_verify(path: str, at: str, fmspc: str) -> None:
    """Each raw PCS TCB Info body verifies at the time the vectors README gives."""
    info = _verifier().tcb_info((V / path).read_bytes(), CHAIN_2025, at=_at(at), root_crl=None,
                                allow_missing_crl=True)
    assert info.fmspc.hex() == fmspc


@pytest.mark.parametrize(("path", "at", "tee", "qe"), BUNDLES)
def test_collateral_bundles_verify(path: str, at: str, tee: str, qe: str) -> None:
    """Bundled collateral (member text + hex signature + PEM chains + CRLs) verifies."""
    bundle = json.loads((V / path).read_text())
    verifier = _verifier()
    root_crl = bytes.fromhex(bundle["root_ca_crl"])
    info = verifier.tcb_info(SignedMember.from_hex(bundle["tcb_info"].encode(),
                                                   bundle["tcb_info_signature"]),
                             bundle["tcb_info_issuer_chain"].encode(), at=_at(at),
                             root_crl=root_crl)
    ident = verifier.qe_identity(SignedMember.from_hex(bundle["qe_identity"].encode(),
                                                       bundle["qe_identity_signature"]),
                                 bundle["qe_identity_issuer_chain"].encode(), at=_at(at),
                                 root_crl=root_crl)
    assert (info.id, ident.id) == (tee, qe)


@pytest.mark.parametrize("body", [TCB_2023, QE_2023], ids=["tcb-info", "qe-identity"])
def test_tampered_member_is_chain_untrusted(body: bytes) -> None:
    """Changing one byte inside the signed member breaks the signature (row 21)."""
    tampered = body.replace(b'"isvsvn":4', b'"isvsvn":3', 1).replace(
        b'"tcbEvaluationDataNumber":15', b'"tcbEvaluationDataNumber":16', 1)
    assert tampered != body
    verifier = _verifier()
    with pytest.raises(KeybrokerError) as exc:
        if b"tcbInfo" in body:
            verifier.tcb_info(tampered, CHAIN_2018, at=AT_2023, root_crl=ROOT_CRL)
        else:
            verifier.qe_identity(tampered, CHAIN_2018, at=AT_2023, root_crl=ROOT_CRL)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_reserialized_member_does_not_verify() -> None:
    """The signature covers the served bytes: a re-serialized (pretty) member fails."""
    text = TCB_2023.decode()
    start, end = top_level_members(text)["tcbInfo"]
    pretty = json.dumps(json.loads(text[start:end]), indent=1).encode()
    signed = split_signed_body(TCB_2023, "tcbInfo")
    with pytest.raises(KeybrokerError) as exc:
        _verifier().tcb_info(SignedMember(raw=pretty, signature=signed.signature), CHAIN_2018,
                             at=AT_2023, root_crl=ROOT_CRL)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_member_is_taken_at_top_level_only() -> None:
    """A decoy "tcbInfo" inside a string or nested object is never taken as the member."""
    signed = split_signed_body(TCB_2023, "tcbInfo")
    decoy = (b'{"x": "\\"tcbInfo\\": {}", "tcbInfo":' + signed.raw
             + b', "signature": "' + signed.signature.hex().encode() + b'"}')
    with pytest.raises(KeybrokerError) as exc:
        split_signed_body(decoy, "tcbInfo")
    assert exc.value.category is Category.MALFORMED
    nested = b'{"signature": {"tcbInfo": {}}, "tcbInfo": ' + signed.raw + b"}"
    with pytest.raises(KeybrokerError) as exc:
        split_signed_body(nested, "tcbInfo")
    assert exc.value.category is Category.MALFORMED
    spaced = b'{ "tcbInfo" :\n' + signed.raw + b' , "signature":"' + \
        signed.signature.hex().encode() + b'" }'
    assert split_signed_body(spaced, "tcbInfo") == signed


def test_duplicate_member_is_malformed() -> None:
    """A body with the signed member twice is rejected before any signature check."""
    signed = split_signed_body(TCB_2023, "tcbInfo")
    body = (b'{"tcbInfo":{},"tcbInfo":' + signed.raw + b',"signature":"'
            + signed.signature.hex().encode() + b'"}')
    with pytest.raises(KeybrokerError) as exc:
        split_signed_body(body, "tcbInfo")
    assert exc.value.category is Category.MALFORMED


@pytest.mark.parametrize("at", [datetime(2023, 7, 19, tzinfo=UTC),
                                datetime(2023, 6, 1, tzinfo=UTC)], ids=["past", "before"])
def test_collateral_outside_its_window_is_stale(at: datetime) -> None:
    """TCB Info past nextUpdate or before issueDate is COLLATERAL_STALE (row 43)."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().tcb_info(TCB_2023, CHAIN_2018, at=at, root_crl=None, allow_missing_crl=True)
    assert exc.value.category is Category.COLLATERAL_STALE


def test_stale_qe_identity_is_collateral_stale() -> None:
    """A QE identity past nextUpdate is COLLATERAL_STALE."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().qe_identity(QE_2023, CHAIN_2018, at=datetime(2023, 7, 10, tzinfo=UTC),
                                root_crl=None, allow_missing_crl=True)
    assert exc.value.category is Category.COLLATERAL_STALE


def test_expired_signing_certificate_is_chain_untrusted() -> None:
    """The 2018 TCB Signing certificate no longer vouches for collateral after 2025-05-21."""
    path, at, _ = RAW_2025[0]
    with pytest.raises(KeybrokerError) as exc:
        _verifier().tcb_info((V / path).read_bytes(), CHAIN_2018, at=_at(at), root_crl=None,
                             allow_missing_crl=True)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_missing_root_crl_is_stale_unless_allowed() -> None:
    """Without the Root CA CRL the signing certificate's status is unknown."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().tcb_info(TCB_2023, CHAIN_2018, at=AT_2023, root_crl=None)
    assert exc.value.category is Category.COLLATERAL_STALE


def test_stale_root_crl_is_collateral_stale() -> None:
    """A Root CA CRL past its nextUpdate does not count (row 43)."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().tcb_info(TCB_2023, CHAIN_2018, at=datetime(2024, 5, 1, tzinfo=UTC),
                             root_crl=ROOT_CRL)
    assert exc.value.category is Category.COLLATERAL_STALE
    assert exc.value.rule == "crl-window"


def test_pck_crl_is_not_a_root_crl() -> None:
    """A CRL issued by the Platform CA is refused where the Root CA CRL is required."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().tcb_info(TCB_2023, CHAIN_2018, at=AT_2023,
                             root_crl=(GOTDX / "pckcrl").read_bytes())
    assert exc.value.category is Category.COLLATERAL_STALE


def test_repeated_collateral_is_served_from_the_cache() -> None:
    """Verifying the same document again costs no signature check but re-checks the window."""
    verifier = _verifier()
    first = verifier.tcb_info(TCB_2023, CHAIN_2018, at=AT_2023, root_crl=ROOT_CRL)
    second = verifier.tcb_info(TCB_2023, CHAIN_2018, at=AT_2023 + timedelta(days=1),
                               root_crl=ROOT_CRL)
    assert first is second
    assert (verifier.stats.hits, verifier.stats.misses) == (1, 1)
    with pytest.raises(KeybrokerError) as exc:
        verifier.tcb_info(TCB_2023, CHAIN_2018, at=datetime(2023, 7, 20, tzinfo=UTC),
                          root_crl=None, allow_missing_crl=True)
    assert exc.value.category is Category.COLLATERAL_STALE


@given(st.binary(max_size=200))
def test_split_signed_body_only_raises_malformed(body: bytes) -> None:
    """Arbitrary bytes either split or raise MALFORMED, never anything else."""
    try:
        split_signed_body(body, "tcbInfo")
    except KeybrokerError as exc:
        assert exc.category is Category.MALFORMED


@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3), max_leaves=8),
    max_size=4))
def test_top_level_spans_round_trip(doc: dict[str, object]) -> None:
    """Every top-level span decodes to exactly the member's value."""
    text = json.dumps(doc, indent=1)
    spans = top_level_members(text)
    assert set(spans) == set(doc)
    for key, (start, end) in spans.items():
        assert json.loads(text[start:end]) == doc[key]
