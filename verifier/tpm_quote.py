"""TPM2_Quote verification (evidence-formats.md section 5.7), shared by the TPM family and the
Azure vTPM family (whose AK comes from the HCL report): the AK signature over the
TPMS_ATTEST bytes, the quote's magic and type, extraData against the expected nonce, and the
PCR digest recomputed from the supplied PCR values.

Invariants:
- The AK is trusted by the caller (an AK certificate chain, enrolment, or a platform binding
  such as Azure's HCL report); this module only checks what the AK signed.
- A foreign magic or type under a valid AK signature is SIG_INVALID (TPM2_Sign forgery,
  hostile-evidence row 22); a signature scheme the AK does not allow is SIG_INVALID.
- extraData must equal the expected nonce byte for byte, when one is given (FRESHNESS,
  row 31); ``safe`` must be set (FRESHNESS: the clock may have gone backwards).
- pcrDigest = H_sig(values of every selected PCR, selections in order, PCRs ascending), with
  H_sig the signature's hash; a selected PCR without a supplied value, a supplied PCR outside
  the selection, or a digest that differs is MEASUREMENT. Only verified values reach claims.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import FreshnessError, MeasurementMismatch, SignatureInvalid
from keybroker.evidence.tcg_log import HASH_NAMES
from keybroker.evidence.tpm_public import ALG_NULL, HASHES, TpmPublic
from keybroker.evidence.tpm_quote import (
    ALG_ECDSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    ST_ATTEST_QUOTE,
    TPM_GENERATED,
    Attest,
    QuoteInfo,
    TpmSignature,
    parse_attest,
    parse_quote_info,
    parse_signature,
)

BANK_NAMES = HASH_NAMES
BANK_IDS = {name: alg for alg, name in BANK_NAMES.items()}
Banks = Mapping[int, Mapping[int, bytes]]  # bank algorithm -> PCR index -> value


@dataclass(frozen=True)
class VerifiedQuote:
    """What a verified quote proves: the PCR values it covers (per bank), its nonce and the
    TPM clock state."""

    attest: Attest
    info: QuoteInfo
    signature: TpmSignature
    pcrs: dict[int, dict[int, bytes]]

    @property
    def extra_data(self) -> bytes:
        """The quote's qualifyingData (the caller's nonce)."""
        return self.attest.extra_data


def _hash(alg: int) -> hashes.HashAlgorithm:
    name = HASHES.get(alg)
    if name is None:
        raise SignatureInvalid("unsupported signature hash", rule="tpm.signature",
                               expected="SHA-1/256/384/512", actual=f"{alg:#06x}")
    # SHA-1 is what older AK templates sign with; the bank and policy decide what is enough.
    return {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(),  # noqa: S303
            "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[name]


def check_signature(ak: TpmPublic, sig: TpmSignature, signed: bytes) -> None:
    """The AK's signature over ``signed``, in a scheme the AK allows."""
    if ak.scheme != ALG_NULL and (sig.sig_alg, sig.hash_alg) != (ak.scheme, ak.scheme_hash):
        raise SignatureInvalid("signature scheme is not the AK's", rule="tpm.signature",
                               expected=f"{ak.scheme:#06x}/{ak.scheme_hash or 0:#06x}",
                               actual=f"{sig.sig_alg:#06x}/{sig.hash_alg:#06x}")
    digest = _hash(sig.hash_alg)
    key = ak.public_key()
    try:
        if sig.sig_alg in (ALG_RSASSA, ALG_RSAPSS) and isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15() if sig.sig_alg == ALG_RSASSA
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO))
            key.verify(sig.signature, signed, pad, digest)
        elif sig.sig_alg == ALG_ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(sig.signature, "big"),
                                       int.from_bytes(sig.s, "big"))
            key.verify(der, signed, ec.ECDSA(digest))
        else:
            raise SignatureInvalid("signature scheme does not fit the AK's key type",
                                   rule="tpm.signature", expected="RSA: RSASSA/RSAPSS, ECC: ECDSA",
                                   actual=f"{sig.sig_alg:#06x}")
    except InvalidSignature:
        raise SignatureInvalid("quote signature does not verify under the AK",
                               rule="tpm.signature") from None


def pcr_digest(info: QuoteInfo, banks: Banks,
               hash_alg: int) -> tuple[bytes, dict[int, dict[int, bytes]]]:
    """H_sig over the selected PCR values, and the values used (MEASUREMENT if one is
    missing or a supplied one lies outside the selection)."""
    used: dict[int, dict[int, bytes]] = {}
    concat = b""
    for selection in info.selections:
        supplied = banks.get(selection.hash_alg, {})
        bank = BANK_NAMES.get(selection.hash_alg, f"{selection.hash_alg:#06x}")
        for pcr in selection.pcrs:
            if pcr not in supplied:
                raise MeasurementMismatch(f"quoted PCR {pcr} of bank {bank} has no value",
                                          rule="tpm.pcrs", expected=f"a value for PCR {pcr}",
                                          actual="absent")
            concat += supplied[pcr]
            used.setdefault(selection.hash_alg, {})[pcr] = supplied[pcr]
    for alg, values in banks.items():
        extra = sorted(set(values) - set(used.get(alg, {})))
        if extra:
            raise MeasurementMismatch("PCR values supplied that the quote does not cover",
                                      rule="tpm.pcrs", expected="only quoted PCRs",
                                      actual=f"{BANK_NAMES.get(alg, alg)} PCRs {extra}")
    return hashlib.new(HASHES[hash_alg], concat).digest(), used


def verify_quote(attest_bytes: bytes, signature_bytes: bytes, ak: TpmPublic, banks: Banks, *,
                 nonce: bytes | None) -> VerifiedQuote:
    """Verify a TPM2_Quote (module invariants); ``nonce`` None leaves extraData unchecked."""
    attest = parse_attest(attest_bytes)
    sig = parse_signature(signature_bytes)
    check_signature(ak, sig, attest.raw)
    if attest.magic != TPM_GENERATED or attest.type != ST_ATTEST_QUOTE:
        raise SignatureInvalid("the AK signed something that is not a TPM-generated quote",
                               rule="tpm.attest", expected="magic 0xff544347, type 0x8018",
                               actual=f"magic {attest.magic:#010x}, type {attest.type:#06x}")
    if nonce is not None and attest.extra_data != nonce:
        raise FreshnessError("quote extraData is not the expected nonce", rule="tpm.nonce",
                             expected=nonce.hex(), actual=attest.extra_data.hex() or "(empty)")
    if not attest.safe:
        raise FreshnessError("quote clock is not safe (it may have gone backwards)",
                             rule="tpm.clock", expected="safe = 1", actual="safe = 0")
    info = parse_quote_info(attest.attested)
    digest, used = pcr_digest(info, banks, sig.hash_alg)
    if digest != info.pcr_digest:
        raise MeasurementMismatch("the supplied PCR values do not give the quoted pcrDigest",
                                  rule="tpm.pcr-digest", expected=info.pcr_digest.hex(),
                                  actual=digest.hex())
    return VerifiedQuote(attest, info, sig, used)
