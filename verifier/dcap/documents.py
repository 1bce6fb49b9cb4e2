"""Signed Intel collateral: TCB Info and QE Identity verified over their exact served bytes.

Invariants:
- The signature (hex r||s, ECDSA-P256-SHA256) is checked over the RAW bytes of the top-level
  ``tcbInfo`` / ``enclaveIdentity`` member exactly as served (never re-serialized), as split by
  ``keybroker.evidence.pcs_document``.
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
import logging
from datetime import datetime
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import ChainUntrusted, CollateralStale, KeybrokerError
from keybroker.evidence.pcs_document import SignedMember, split_signed_body
from verifier.dcap.crl import verify_crl
from verifier.dcap.pck import PckVerifier, check_profile
from verifier.dcap.schema import EnclaveIdentity, TcbInfo, parse_enclave_identity, parse_tcb_info
from verifier.dcap.trust import IntelTrustStore, verify_p256_signature
from verifier.pki import CacheStats, Certificate, check_validity, parse_pem_chain

_log = logging.getLogger(__name__)

SIGNING_CN = "Intel SGX TCB Signing"
_T = TypeVar("_T", TcbInfo, EnclaveIdentity)


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
        check_validity(signer.cert, at, SIGNING_CN, rule="validity")
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
