"""Verification of an AWS Nitro Enclaves attestation document (evidence-formats.md section
4.6): strict COSE/CBOR decoding, the ES384 algorithm pinned in the protected header, the chain
to the configured root, the signature over the exact Sig_structure, the timestamp window.

Invariants:
- Order: decode (MALFORMED), algorithm (SIG_INVALID: absent, another one, or only in the
  unprotected header), payload fields (MALFORMED), chain at ``at`` (CHAIN_UNTRUSTED),
  signature (SIG_INVALID), then the timestamp within [at - max_age, at + max_skew]
  (FRESHNESS). A document checked long after it was made therefore fails on its expired leaf
  (CHAIN_UNTRUSTED) first.
- The signature is checked over RFC 9052's Sig_structure built from the protected header
  bytes and payload bytes exactly as received: the raw 96-byte r||s signature, P-384/SHA-384,
  with the leaf certificate's key.
- The unprotected header must be empty (the NSM sends ``{}``); anything in it other than an
  algorithm is MALFORMED.
- Nothing here compares the binding: the claims carry user_data, nonce and public_key for the
  service (``NitroClaims.report_data`` and ``check_request``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import FreshnessError, Malformed, SignatureInvalid
from keybroker.evidence.nitro_document import (
    ALG_ES384,
    CoseSign1,
    decode_document,
    parse_payload,
    sig_structure,
)
from verifier.nitro.chain import NitroChains, NitroRoot
from verifier.nitro.claims import NitroClaims

ALG = 1  # the COSE header label of the algorithm
DEFAULT_MAX_AGE = timedelta(minutes=5)
DEFAULT_MAX_SKEW = timedelta(seconds=30)


def check_algorithm(cose: CoseSign1) -> None:
    """ES384 in the protected header, nothing in the unprotected one (module invariants)."""
    if ALG in cose.unprotected:
        raise SignatureInvalid("the algorithm is in the unprotected header",
                               rule="nitro.alg", expected="alg ES384 (-35) in the protected "
                               "header only", actual=f"unprotected alg {cose.unprotected[ALG]!r}")
    if cose.unprotected:
        raise Malformed("the unprotected header is not empty", rule="nitro.unprotected",
                        expected="{}", actual=repr(dict(cose.unprotected))[:120])
    alg = cose.protected_header.get(ALG)
    if alg != ALG_ES384 or set(cose.protected_header) != {ALG}:
        raise SignatureInvalid("the protected header does not pin ES384", rule="nitro.alg",
                               expected="{1: -35} (ES384)",
                               actual=repr(dict(cose.protected_header))[:120])


def check_signature(cose: CoseSign1, key: ec.EllipticCurvePublicKey) -> None:
    """The raw r||s ES384 signature over the Sig_structure, with ``key``."""
    if len(cose.signature) != 96:
        raise SignatureInvalid("the signature is not a raw P-384 r||s", rule="nitro.signature",
                               expected="96 bytes", actual=f"{len(cose.signature)} bytes")
    der = encode_dss_signature(int.from_bytes(cose.signature[:48], "big"),
                               int.from_bytes(cose.signature[48:], "big"))
    try:
        key.verify(der, sig_structure(cose.protected, cose.payload), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureInvalid("the document's signature does not verify with its leaf key",
                               rule="nitro.signature", expected="a valid ES384 signature",
                               actual="invalid") from None


class NitroVerifier:
    """Verifies documents against configured roots and a timestamp window."""

    def __init__(self, roots: Sequence[NitroRoot], *, max_age: timedelta = DEFAULT_MAX_AGE,
                 max_skew: timedelta = DEFAULT_MAX_SKEW) -> None:
        self._chains = NitroChains(roots)
        self._max_age = max_age
        self._max_skew = max_skew

    def verify(self, raw: bytes, *, at: datetime) -> NitroClaims:
        """Typed claims of the document ``raw`` verified at ``at`` (module invariants)."""
        cose = decode_document(raw)
        check_algorithm(cose)
        payload = parse_payload(cose.payload)
        chain = self._chains.verify(payload.certificate, payload.cabundle, at)
        key = chain.leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # the chain's leaf rule
        check_signature(cose, key)
        made = datetime.fromtimestamp(payload.timestamp_ms / 1000, UTC)
        if not at - self._max_age <= made <= at + self._max_skew:
            raise FreshnessError("the document's timestamp is outside the accepted window",
                                 rule="nitro.timestamp",
                                 expected=f"{(at - self._max_age).isoformat()} .. "
                                          f"{(at + self._max_skew).isoformat()}",
                                 actual=made.isoformat())
        return NitroClaims(
            module_id=payload.module_id, timestamp_ms=payload.timestamp_ms,
            pcrs=dict(payload.pcrs), public_key=payload.public_key,
            user_data=payload.user_data, nonce=payload.nonce, leaf_subject=chain.leaf_subject,
            leaf_not_after=int(chain.leaf.not_valid_after_utc.timestamp()),
            insecure=chain.root.insecure)
