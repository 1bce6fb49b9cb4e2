"""Signed Intel collateral: TCB Info and QE Identity verified over their exact served bytes.

Invariants:
- The signature (hex r||s, ECDSA-P256-SHA256) is checked over the RAW bytes of the top-level
  ``tcbInfo`` / ``enclaveIdentity`` member exactly as served (never re-serialized). The body is
  walked member by member at the top level only, so a nested or string occurrence of the name
  can never be taken; the body must be exactly {<member>, "signature"} with unique names.
- The signing certificate ("Intel SGX TCB Signing", from the PEM issuer chain) must chain to the
  pinned Intel SGX Root CA, be valid at ``at`` and, with a Root CA CRL, not be revoked. Any other
  root in the issuer chain must be byte-identical to the pinned one. Signature or chain failures
  are ``ChainUntrusted``; a missing Root CA CRL is ``CollateralStale`` unless allowed.
- Only signature-verified bytes are parsed (``verifier.dcap.schema``). ``issueDate <= at <
  nextUpdate`` is checked on every call (``CollateralStale`` otherwise).
- Verified documents are cached by SHA-256 of (member bytes, signature, signing cert DER); a
  repeated document costs one dictionary lookup plus the time checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import ChainUntrusted, CollateralStale, KeybrokerError, Malformed
from verifier.dcap.crl import verify_crl
from verifier.dcap.pck import (
    CacheStats,
    PckVerifier,
    check_profile,
    check_validity,
    parse_pem_chain,
)
from verifier.dcap.schema import EnclaveIdentity, TcbInfo, parse_enclave_identity, parse_tcb_info
from verifier.dcap.trust import IntelTrustStore, verify_p256_signature
from verifier.snp.trust import Certificate

_log = logging.getLogger(__name__)

SIGNING_CN = "Intel SGX TCB Signing"
MAX_BODY = 1024 * 1024
_WS = " \t\r\n"
_T = TypeVar("_T", TcbInfo, EnclaveIdentity)


@dataclass(frozen=True)
class SignedMember:
    """The exact bytes of a signed JSON member and its 64-byte r||s signature."""

    raw: bytes
    signature: bytes

    @classmethod
    def from_hex(cls, raw: bytes, signature_hex: str) -> SignedMember:
        """From member bytes and the hex signature (how some collateral bundles store them)."""
        try:
            sig = bytes.fromhex(signature_hex)
        except ValueError as exc:
            raise Malformed("collateral signature is not hex", actual=signature_hex[:40]) from exc
        if len(sig) != 64:
            raise Malformed("collateral signature is not 64 bytes (r||s)", expected="64",
                            actual=str(len(sig)))
        return cls(raw=bytes(raw), signature=sig)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _scan_members(text: str) -> dict[str, tuple[int, int]]:
    """Walk one JSON object's top level; raises ``ValueError`` on anything else."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    i = _skip(text, 0)
    if text[i:i + 1] != "{":
        raise ValueError("not an object")
    i = _skip(text, i + 1)
    if text[i:i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise ValueError("member name expected")
            key, i = decoder.raw_decode(text, i)
            i = _skip(text, i)
            if text[i:i + 1] != ":":
                raise ValueError("':' expected")
            start = _skip(text, i + 1)
            _, end = decoder.raw_decode(text, start)
            if key in spans:
                raise ValueError(f"duplicate member {key!r}")
            spans[key] = (start, end)
            i = _skip(text, end)
            if text[i:i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i:i + 1] != "}":
                raise ValueError("',' or '}' expected")
            i += 1
            break
    if _skip(text, i) != len(text):
        raise ValueError("trailing data")
    return spans


def top_level_members(text: str) -> dict[str, tuple[int, int]]:
    """(start, end) character spans of every top-level member value of a JSON object text;
    ``Malformed`` on anything that is not one object with unique member names."""
    try:
        return _scan_members(text)
    except (ValueError, RecursionError) as exc:
        raise Malformed("collateral body is not one JSON object", actual=str(exc)[:80]) from exc


def split_signed_body(body: bytes, member: str) -> SignedMember:
    """The raw ``member`` bytes and signature of a PCS response body {member, "signature"}."""
    if len(body) > MAX_BODY:
        raise Malformed("collateral body too large", expected=f"<= {MAX_BODY}",
                        actual=str(len(body)))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("collateral body is not UTF-8") from exc
    spans = top_level_members(text)
    if set(spans) != {member, "signature"}:
        raise Malformed("collateral body has the wrong members",
                        expected=f"{member}, signature", actual=", ".join(sorted(spans)))
    sig_start, sig_end = spans["signature"]
    signature = json.loads(text[sig_start:sig_end])
    if not isinstance(signature, str):
        raise Malformed("collateral signature is not a string")
    start, end = spans[member]
    return SignedMember.from_hex(text[start:end].encode("utf-8"), signature)


def check_window(issue: datetime, next_update: datetime, at: datetime, what: str) -> None:
    """``CollateralStale`` unless issueDate <= at < nextUpdate."""
    if not issue <= at < next_update:
        raise CollateralStale(f"{what} is not current at the verification time",
                              rule="collateral-window",
                              expected=f"{issue.isoformat()} .. {next_update.isoformat()}",
                              actual=at.isoformat())


class CollateralVerifier:
    """Verifies TCB Info / QE Identity documents against the pinned root (cached)."""

    def __init__(self, trust: IntelTrustStore, *, cache_limit: int = 1024,
                 chains: PckVerifier | None = None) -> None:
        self._trust = trust
        self._chains = chains if chains is not None else PckVerifier(trust)
        self._crls: set[tuple[str, str]] = set()
        self._cache_limit = cache_limit
        self._verified: dict[str, TcbInfo | EnclaveIdentity] = {}
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        """Documents served from the cache (hits) or signature-verified (misses)."""
        return dataclasses.replace(self._stats)

    def signing_cert(self, issuer_chain_pem: bytes, *, at: datetime, root_crl: bytes | None,
                     allow_missing_crl: bool = False) -> Certificate:
        """The TCB Signing certificate of an issuer chain, chained to the pinned root at
        ``at`` and checked against the Root CA CRL."""
        certs = parse_pem_chain(issuer_chain_pem)
        root = self._chains.check_root(certs, at)
        signers = [c for c in certs if not self._trust.is_pinned_root(c.der)]
        if len(signers) != 1:
            raise ChainUntrusted("issuer chain must hold one signing certificate and the root",
                                 expected=SIGNING_CN, actual=f"{len(signers)} non-root certs")
        signer = signers[0]
        check_profile(signer, cn=SIGNING_CN, ca=False)
        check_validity(signer, at, SIGNING_CN)
        self._chains.check_signed(signer, root, SIGNING_CN)
        if root_crl is None:
            if not allow_missing_crl:
                raise CollateralStale("the root-ca-crl is not available", rule="crl-missing",
                                      expected="a CRL issued by Intel SGX Root CA",
                                      actual="none")
        else:
            verify_crl(root_crl, root, at=at, what="root-ca-crl",
                       verified=self._crls).check_not_revoked(signer, SIGNING_CN)
        return signer

    def tcb_info(self, signed: SignedMember | bytes, issuer_chain_pem: bytes, *, at: datetime,
                 root_crl: bytes | None, allow_missing_crl: bool = False) -> TcbInfo:
        """A verified, current TCB Info (PCS body bytes or a ``SignedMember``)."""
        member = split_signed_body(signed, "tcbInfo") if isinstance(signed, bytes) else signed
        info = self._verify(member, issuer_chain_pem, TcbInfo, at=at, root_crl=root_crl,
                            allow_missing_crl=allow_missing_crl)
        check_window(info.issue_date, info.next_update, at, f"{info.id} TCB Info")
        return info

    def qe_identity(self, signed: SignedMember | bytes, issuer_chain_pem: bytes, *,
                    at: datetime, root_crl: bytes | None,
                    allow_missing_crl: bool = False) -> EnclaveIdentity:
        """A verified, current Enclave (QE) Identity (body bytes or a ``SignedMember``)."""
        member = (split_signed_body(signed, "enclaveIdentity") if isinstance(signed, bytes)
                  else signed)
        ident = self._verify(member, issuer_chain_pem, EnclaveIdentity, at=at,
                             root_crl=root_crl, allow_missing_crl=allow_missing_crl)
        check_window(ident.issue_date, ident.next_update, at, f"{ident.id} identity")
        return ident

    def _verify(self, member: SignedMember, issuer_chain_pem: bytes, kind: type[_T], *,
                at: datetime, root_crl: bytes | None, allow_missing_crl: bool) -> _T:
        signer = self.signing_cert(issuer_chain_pem, at=at, root_crl=root_crl,
                                   allow_missing_crl=allow_missing_crl)
        return self.verify_signed(member, signer, kind)

    def verify_signed(self, member: SignedMember, signer: Certificate, kind: type[_T]) -> _T:
        """The parsed document if ``signer`` (a TCB Signing certificate the caller has chained
        to the root) signed ``member``; ``ChainUntrusted`` otherwise. Cached by content and
        signer; time windows are the caller's to check."""
        key = hashlib.sha256(hashlib.sha256(member.raw).digest() + member.signature
                             + signer.der).hexdigest()
        cached = self._verified.get(key)
        if isinstance(cached, kind):
            self._stats.hits += 1
            return cached
        self._stats.misses += 1
        what = "TCB Info" if kind is TcbInfo else "enclave identity"
        der_sig = encode_dss_signature(int.from_bytes(member.signature[:32], "big"),
                                       int.from_bytes(member.signature[32:], "big"))
        try:
            verify_p256_signature(signer, algorithm_oid="1.2.840.10045.4.3.2",
                                  signature=der_sig, tbs=member.raw, what=what)
        except KeybrokerError as exc:
            raise ChainUntrusted(f"{what} signature does not verify", rule="collateral-sig",
                                 expected=f"signed by {SIGNING_CN}",
                                 actual=hashlib.sha256(member.raw).hexdigest()) from exc
        parsed = (parse_tcb_info(member.raw) if kind is TcbInfo
                  else parse_enclave_identity(member.raw))
        assert isinstance(parsed, kind)
        if len(self._verified) >= self._cache_limit:
            self._verified.clear()
        self._verified[key] = parsed
        _log.debug("verified %s %s", what, key[:16])
        return parsed
