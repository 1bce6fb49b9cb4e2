"""PCK certificate chains, Intel CRLs and the SGX extension on real TDX/SGX quotes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence import der
from keybroker.evidence.sgx_extensions import decode_sgx_extensions, parse_sgx_extension
from verifier.dcap.crl import verify_crl
from verifier.dcap.pck import CRL_PCK, CRL_ROOT, PckVerifier
from verifier.dcap.trust import IntelTrustStore
from verifier.pki import Certificate, parse_pem_chain

V = VECTORS
GOTDX = V / "tdx/gotdx-spr-e4-v4"
AT_2023 = datetime(2023, 7, 1, 1, tzinfo=UTC)
ROOT_CRL = (GOTDX / "rootcrl.der").read_bytes()
PCK_CRL = (GOTDX / "pckcrl").read_bytes()
SGX_BUNDLE = json.loads((V / "sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json").read_text())
EMR_BUNDLE = json.loads((V / "tdx/dcapqvl-emr-v5-tcb-unsupported/"
                             "tdx_quote_outdated_collateral.json").read_text())


def pem_chain(path: Path) -> bytes:
    """The PEM PCK chain embedded in a quote's certification data."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----.*-----END CERTIFICATE-----",
                      path.read_bytes(), re.S)
    assert match is not None
    return match.group(0)


def _verifier() -> PckVerifier:
    return PckVerifier(IntelTrustStore.pinned())


# quote, time, root CRL, PCK CRL, expected (FMSPC, PCESVN, CPUSVN, CA)
REAL = {
    "gotdx-spr-e4": ("tdx/gotdx-spr-e4-v4/tdx_prod_quote_SPR_E4.dat", AT_2023, ROOT_CRL,
                     PCK_CRL, ("50806f000000", 11, "03030202020100020000000000000000",
                               "platform")),
    "trustee-spr": ("tdx/trustee-spr-v4/tdx_quote_4.dat", AT_2023, ROOT_CRL, PCK_CRL,
                    ("50806f000000", 11, "05050d02030100030000000000000000", "platform")),
    "dcapqvl-sgx": ("sgx/dcapqvl-sgx-v3/sgx_quote", datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC),
                    bytes.fromhex(SGX_BUNDLE["root_ca_crl"]),
                    bytes.fromhex(SGX_BUNDLE["pck_crl"]),
                    ("00a067110000", 13, "0b0b0202ff0100000000000000000000", "processor")),
    "dcapqvl-emr": ("tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated",
                    datetime(2026, 3, 20, 10, 41, 14, tzinfo=UTC),
                    bytes.fromhex(EMR_BUNDLE["root_ca_crl"]),
                    bytes.fromhex(EMR_BUNDLE["pck_crl"]),
                    ("90c06f000000", 13, "03030202040100030000000000000000", "platform")),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_chains_verify_with_crls(name: str) -> None:
    """Real PCK chains verify at the README times with both CRLs; extensions decode."""
    path, at, root_crl, pck_crl, (fmspc, pcesvn, cpusvn, ca) = REAL[name]
    chain = _verifier().verify(pem_chain(V / path), at=at, root_crl=root_crl, pck_crl=pck_crl)
    ext = chain.extensions
    assert (ext.fmspc.hex(), ext.pcesvn, ext.cpusvn.hex(), chain.ca) == (fmspc, pcesvn, cpusvn,
                                                                          ca)
    assert ext.pce_id == b"\x00\x00" and len(ext.ppid) == 16
    assert chain.missing_crls == () and not chain.crl_warning


def test_scalable_platform_extension_fields() -> None:
    """A Granite Rapids PCK decodes SGX type, platform instance id and configuration."""
    chain = parse_pem_chain(pem_chain(V / "tdx/trustee-gnr-v4/tdx_quote_6.dat"))
    ext = decode_sgx_extensions(chain[0].cert)
    assert ext.sgx_type_name == "ScalableWithIntegrity"
    assert ext.sgx_tcb_svns == (2, 2, 7, 7, 4, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.configuration is not None and ext.configuration.smt_enabled is True
    assert ext.configuration.cached_keys is False


def test_missing_crls_are_stale_unless_allowed_and_then_reported() -> None:
    """No CRL is COLLATERAL_STALE; with allow_missing_crl the gap is reported back."""
    chain = pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat")
    with pytest.raises(KeybrokerError) as exc:
        _verifier().verify(chain, at=AT_2023, root_crl=ROOT_CRL, pck_crl=None)
    assert exc.value.category is Category.COLLATERAL_STALE
    result = _verifier().verify(chain, at=AT_2023, root_crl=None, pck_crl=None,
                                allow_missing_crl=True)
    assert result.missing_crls == (CRL_ROOT, CRL_PCK) and result.crl_warning


def test_stale_pck_crl_is_collateral_stale() -> None:
    """A PCK CRL past its nextUpdate is COLLATERAL_STALE (row 43)."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().verify(pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat"),
                           at=datetime(2023, 7, 9, tzinfo=UTC), root_crl=None, pck_crl=PCK_CRL,
                           allow_missing_crl=True)
    assert exc.value.category is Category.COLLATERAL_STALE
    assert exc.value.rule == "crl-window"


def test_crl_from_the_wrong_issuer_is_collateral_stale() -> None:
    """The root CRL given as the PCK CRL (or a Processor CA CRL for a Platform PCK) is refused."""
    chain = pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat")
    for wrong in (ROOT_CRL, bytes.fromhex(SGX_BUNDLE["pck_crl"])):
        with pytest.raises(KeybrokerError) as exc:
            _verifier().verify(chain, at=AT_2023, root_crl=ROOT_CRL, pck_crl=wrong)
        assert exc.value.category is Category.COLLATERAL_STALE
        assert exc.value.rule == "crl-issuer"


def test_listed_certificate_is_chain_untrusted() -> None:
    """A serial listed in the real, verified PCK CRL is CHAIN_UNTRUSTED (row 17)."""
    leaf, intermediate, _ = parse_pem_chain(pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat"))
    crl = verify_crl(PCK_CRL, intermediate, at=AT_2023, what="pck-crl")
    crl.check_not_revoked(leaf, "PCK")
    listed = next(iter(crl.crl)).serial_number
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "listed")])
    fake = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(listed)
            .not_valid_before(AT_2023).not_valid_after(AT_2023 + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with pytest.raises(KeybrokerError) as exc:
        crl.check_not_revoked(Certificate.from_cert(fake), "PCK")
    assert exc.value.category is Category.CHAIN_UNTRUSTED


@pytest.mark.parametrize("at", [datetime(2031, 1, 1, tzinfo=UTC),
                                datetime(2022, 1, 1, tzinfo=UTC)], ids=["expired", "early"])
def test_leaf_outside_validity_is_chain_untrusted(at: datetime) -> None:
    """A PCK used after notAfter (or before notBefore) is CHAIN_UNTRUSTED (row 18)."""
    with pytest.raises(KeybrokerError) as exc:
        _verifier().verify(pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat"), at=at,
                           root_crl=None, pck_crl=None, allow_missing_crl=True)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_leaf_under_the_wrong_intermediate_is_chain_untrusted() -> None:
    """A Platform-CA PCK presented with the Processor CA does not chain."""
    leaf = parse_pem_chain(pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat"))[0]
    other = parse_pem_chain(pem_chain(V / "sgx/dcapqvl-sgx-v3/sgx_quote"))
    with pytest.raises(KeybrokerError) as exc:
        _verifier().verify([leaf, other[1], other[2]], at=AT_2023, root_crl=None, pck_crl=None,
                           allow_missing_crl=True)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_substituted_root_is_chain_untrusted() -> None:
    """A self-made "Intel SGX Root CA" in the evidence chain is refused."""
    leaf, intermediate, root = parse_pem_chain(pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat"))
    key = ec.generate_private_key(ec.SECP256R1())
    fake = (x509.CertificateBuilder().subject_name(root.cert.subject)
            .issuer_name(root.cert.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(AT_2023 - timedelta(days=1))
            .not_valid_after(AT_2023 + timedelta(days=1)).sign(key, hashes.SHA256()))
    with pytest.raises(KeybrokerError) as exc:
        _verifier().verify([leaf, intermediate, Certificate.from_cert(fake)], at=AT_2023,
                           root_crl=None, pck_crl=None, allow_missing_crl=True)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_signature_cache_and_trailing_nul() -> None:
    """A chain with a trailing NUL parses; the second verification hits the signature cache."""
    verifier = _verifier()
    chain = pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat") + b"\x00"
    verifier.verify(chain, at=AT_2023, root_crl=ROOT_CRL, pck_crl=PCK_CRL)
    verifier.verify(chain, at=AT_2023, root_crl=ROOT_CRL, pck_crl=PCK_CRL)
    assert (verifier.stats.misses, verifier.stats.hits) == (2, 2)


def test_garbage_between_pem_blocks_is_malformed() -> None:
    """Bytes other than whitespace between PEM blocks are MALFORMED."""
    chain = pem_chain(GOTDX / "tdx_prod_quote_SPR_E4.dat")
    bad = chain.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----\nxx\n", 1)
    with pytest.raises(KeybrokerError) as exc:
        parse_pem_chain(bad)
    assert exc.value.category is Category.MALFORMED


@pytest.mark.parametrize("raw", [
    bytes.fromhex("0281010a"),          # non-minimal long-form length
    bytes.fromhex("02020001"),          # non-minimal INTEGER
    bytes.fromhex("020101ff"),          # trailing byte
    bytes.fromhex("0203010203"[:8]),    # truncated value
    bytes.fromhex("1f0100"),            # high tag number
], ids=["long-length", "integer", "trailing", "truncated", "high-tag"])
def test_der_reader_rejects_non_der(raw: bytes) -> None:
    """The DER reader refuses non-canonical or truncated encodings."""
    with pytest.raises(KeybrokerError) as exc:
        der.uint(der.read_one(raw, "test"), "test")
    assert exc.value.category is Category.MALFORMED


def test_der_oid_decodes() -> None:
    """The SGX extension OID decodes to its dotted form."""
    assert der.oid(der.read_one(bytes.fromhex("060a2a864886f84d010d0101"), "oid"),
                   "oid") == "1.2.840.113741.1.13.1.1"


def _real_extension() -> bytes:
    leaf = parse_pem_chain(pem_chain(V / "tdx/trustee-gnr-v4/tdx_quote_6.dat"))[0]
    value = leaf.cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


@given(st.integers(min_value=0, max_value=553), st.integers(min_value=0, max_value=255))
def test_mutated_extension_decodes_or_is_chain_untrusted(pos: int, byte: int) -> None:
    """Any single-byte mutation of a real SGX extension decodes or raises CHAIN_UNTRUSTED."""
    raw = bytearray(_real_extension())
    raw[pos % len(raw)] = byte
    try:
        parse_sgx_extension(bytes(raw))
    except KeybrokerError as exc:
        assert exc.category is Category.CHAIN_UNTRUSTED


@given(st.binary(max_size=64))
def test_random_extension_bytes_are_chain_untrusted(raw: bytes) -> None:
    """Random bytes never decode as an SGX extension."""
    with pytest.raises(KeybrokerError) as exc:
        parse_sgx_extension(raw)
    assert exc.value.category is Category.CHAIN_UNTRUSTED
