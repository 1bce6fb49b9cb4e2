"""TPM quote structures and verification with keys made here: the three signature schemes
(RSASSA, RSAPSS, ECDSA), the AK's scheme restriction, TPM2_Sign forgeries (hostile row 22),
the clock's safe flag, and hypothesis properties of every TPM parser (round trip; arbitrary
bytes raise only MALFORMED)."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.evidence.tpm_public import (
    ALG_NULL,
    build_public,
    parse_public,
    public_from_key,
)
from keybroker.evidence.tpm_quote import (
    ALG_ECDSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    ST_ATTEST_QUOTE,
    TPM_GENERATED,
    Attest,
    PcrSelection,
    QuoteInfo,
    TpmSignature,
    build_attest,
    build_quote_info,
    build_signature,
    parse_attest,
    parse_quote_info,
    parse_signature,
)
from verifier.tpm_quote import verify_quote

SHA256 = 0x000B
PCRS = {i: hashlib.sha256(bytes([i])).digest() for i in range(24)}
GCE = VECTORS / "tpm" / "gce-cos85-vtpm-no-nonce"


def _attest(nonce: bytes = b"n" * 32, *, magic: int = TPM_GENERATED,
            kind: int = ST_ATTEST_QUOTE, safe: int = 1) -> bytes:
    digest = hashlib.sha256(b"".join(PCRS[i] for i in range(24))).digest()
    info = build_quote_info(QuoteInfo((PcrSelection.of(SHA256, set(range(24))),), digest))
    return build_attest(Attest(magic, kind, b"\x00\x0b" + bytes(32), nonce, 1234, 5, 6, safe,
                               0x1122, info, b""))


def _sign(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, scheme: int,
          data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return build_signature(TpmSignature(ALG_ECDSA, SHA256, r.to_bytes(size, "big"),
                                            s.to_bytes(size, "big")))
    pad = (padding.PKCS1v15() if scheme == ALG_RSASSA
           else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))
    return build_signature(TpmSignature(scheme, SHA256, key.sign(data, pad, hashes.SHA256())))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(("key", "scheme"), [(RSA_KEY, ALG_RSASSA), (RSA_KEY, ALG_RSAPSS),
                                             (EC_KEY, ALG_ECDSA)])
def test_each_scheme_verifies(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                              scheme: int) -> None:
    attest = _attest()
    quote = verify_quote(attest, _sign(key, scheme, attest), public_from_key(key.public_key()),
                         {SHA256: PCRS}, nonce=b"n" * 32)
    assert quote.pcrs[SHA256] == PCRS and quote.attest.clock == 1234


@pytest.mark.parametrize(("magic", "kind"), [(0xFF544348, ST_ATTEST_QUOTE),
                                             (TPM_GENERATED, 0x8017),   # CERTIFY
                                             (0, 0x8014)])              # TPM2_Sign of a blob
def test_sign_forgery_is_sig_invalid(magic: int, kind: int) -> None:
    """Row 22: bytes the AK signed that are not a TPM-generated quote."""
    attest = _attest(magic=magic, kind=kind)
    with pytest.raises(KeybrokerError) as exc:
        verify_quote(attest, _sign(RSA_KEY, ALG_RSASSA, attest),
                     public_from_key(RSA_KEY.public_key()), {SHA256: PCRS}, nonce=None)
    assert (exc.value.category, exc.value.rule) == (Category.SIG_INVALID, "tpm.attest")


def test_scheme_other_than_the_aks_is_sig_invalid() -> None:
    """An AK restricted to RSASSA-SHA256 does not accept an RSAPSS signature."""
    ak = parse_public((GCE / "ak_pub.tpmt").read_bytes())
    attest = _attest()
    restricted = replace(public_from_key(RSA_KEY.public_key()), scheme=ak.scheme,
                         scheme_hash=ak.scheme_hash)
    with pytest.raises(KeybrokerError) as exc:
        verify_quote(attest, _sign(RSA_KEY, ALG_RSAPSS, attest), restricted, {SHA256: PCRS},
                     nonce=None)
    assert exc.value.category is Category.SIG_INVALID
    assert "scheme is not the AK's" in exc.value.reason


def test_unsafe_clock_is_freshness() -> None:
    attest = _attest(safe=0)
    with pytest.raises(KeybrokerError) as exc:
        verify_quote(attest, _sign(EC_KEY, ALG_ECDSA, attest),
                     public_from_key(EC_KEY.public_key()), {SHA256: PCRS}, nonce=None)
    assert (exc.value.category, exc.value.rule) == (Category.FRESHNESS, "tpm.clock")


def test_extra_supplied_pcr_is_measurement() -> None:
    """A PCR value outside the quote's selection is refused (the quote does not cover it)."""
    attest = _attest()
    banks = {SHA256: PCRS, 0x0004: {0: bytes(20)}}
    with pytest.raises(KeybrokerError) as exc:
        verify_quote(attest, _sign(EC_KEY, ALG_ECDSA, attest),
                     public_from_key(EC_KEY.public_key()), banks, nonce=None)
    assert (exc.value.category, exc.value.rule) == (Category.MEASUREMENT, "tpm.pcrs")


def test_real_structures_round_trip() -> None:
    for bank in ("sha1", "sha256", "sha384"):
        raw = (GCE / f"quote_{bank}.attest").read_bytes()
        attest = parse_attest(raw)
        assert build_attest(attest) == raw
        assert build_quote_info(parse_quote_info(attest.attested)) == attest.attested
        sig = (GCE / f"quote_{bank}.sig").read_bytes()
        assert build_signature(parse_signature(sig)) == sig
    ak = (GCE / "ak_pub.tpmt").read_bytes()
    assert build_public(parse_public(ak)) == ak
    assert parse_public(len(ak).to_bytes(2, "big") + ak).raw == ak  # TPM2B_PUBLIC


def test_public_refusals() -> None:
    ak = bytearray((GCE / "ak_pub.tpmt").read_bytes())
    for mutate in (lambda b: b.__setitem__(slice(0, 2), b"\x00\x25"),   # KEYEDHASH type
                   lambda b: b.append(0),                               # trailing byte
                   lambda b: b.__setitem__(slice(-258, -256), b"\x01\x01")):  # length lies
        data = bytearray(ak)
        mutate(data)
        with pytest.raises(Malformed):
            parse_public(bytes(data))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(Malformed, match="RSA modulus size"):
        public_from_key(small.public_key())
    assert public_from_key(EC_KEY.public_key()).scheme == ALG_NULL


@st.composite
def attests(draw: st.DrawFn) -> Attest:
    banks = draw(st.lists(st.tuples(st.sampled_from([0x4, 0xB, 0xC]),
                                    st.frozensets(st.integers(0, 23), min_size=1)),
                          min_size=1, max_size=3))
    info = QuoteInfo(tuple(PcrSelection.of(a, p) for a, p in banks),
                     draw(st.binary(min_size=0, max_size=64)))
    return Attest(draw(st.integers(0, 2**32 - 1)), ST_ATTEST_QUOTE,
                  draw(st.binary(max_size=66)), draw(st.binary(max_size=64)),
                  draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1)),
                  draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 1)),
                  draw(st.integers(0, 2**64 - 1)), build_quote_info(info), b"")


@settings(max_examples=60, deadline=None)
@given(attests())
def test_attest_round_trip(attest: Attest) -> None:
    raw = build_attest(attest)
    parsed = parse_attest(raw)
    assert parsed == replace(attest, raw=raw)
    assert build_quote_info(parse_quote_info(parsed.attested)) == parsed.attested


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_malformed(data: bytes) -> None:
    for parse in (parse_attest, parse_signature, parse_public, parse_quote_info):
        with contextlib.suppress(Malformed):
            parse(data)
