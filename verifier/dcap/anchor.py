"""Everything the DCAP verifier checks under one Intel root (the pinned Intel SGX Root CA or an
INSECURE simulator root): PCK chains, CRLs, TCB Signing certificates and the signed TCB Info /
enclave identity documents of the collateral store.

Invariants:
- Signatures are verified once and the outcome cached: PCK chains per PEM bytes (in
  ``PckVerifier``), CRLs per issuer certificate, TCB Signing certificates once per anchor,
  documents per (document, signer). The store is immutable, so a cache entry can never go
  stale; the caches are bounded and simply refilled when cleared.
- Everything that depends on the verification time is decided on every call, against the
  caller's ``at``: certificate validity, which CRL is current (thisUpdate <= at < nextUpdate,
  newest first), which document is current (issueDate <= at < nextUpdate, newest issue
  first), whether the signing certificate is valid and not revoked by the current Root CA CRL.
- A CRL or document counts only under this anchor's root: CRLs must be signed by the expected
  CA of this chain, documents by a TCB Signing certificate that this root signed. A CRL whose
  signature fails is ignored (logged) when a verified CRL of that issuer is present (another
  root's CRL under the same name); when every CRL of that issuer fails, the call is
  ``ChainUntrusted`` (forged, never "missing", whatever ``allow_missing`` says). A
  document signed by a TCB Signing certificate of another root in the store is another root's
  collateral and not a candidate. Any other document whose signature fails is forged: never
  used; if only forged documents cover ``at`` the call is ``ChainUntrusted``, if no document
  covers ``at`` it is ``CollateralStale``.
- Lookups read only memory (the store was loaded at start-up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from keybroker.errors import ChainUntrusted, CollateralStale, KeybrokerError
from verifier.collateral.cache import CollateralStore, IntelDocument
from verifier.dcap.crl import verify_crl_signature
from verifier.dcap.documents import SIGNING_CN, CollateralVerifier
from verifier.dcap.pck import PckVerifier, check_profile
from verifier.dcap.schema import EnclaveIdentity, TcbInfo
from verifier.dcap.trust import IntelTrustStore
from verifier.pki import Certificate, VerifiedCrl, common_name

_log = logging.getLogger(__name__)

_D = TypeVar("_D", TcbInfo, EnclaveIdentity)


@dataclass(frozen=True)
class VerifiedDocument(Generic[_D]):
    """A document whose signature verified under ``signers`` (TCB Signing certs of the root)."""

    source: IntelDocument
    parsed: _D
    signers: tuple[Certificate, ...]


@dataclass(frozen=True)
class _Candidates(Generic[_D]):
    verified: tuple[VerifiedDocument[_D], ...]  # newest issue date first
    forged: tuple[IntelDocument, ...]  # signed by no TCB Signing cert of this root


@dataclass(frozen=True)
class CrlCheck:
    """The current CRL of one issuer at one time, or why there is none."""

    name: str  # "root-ca-crl" | "pck-crl"
    crl: VerifiedCrl | None
    warning: str | None  # set when missing (and allowed)


class Anchor:
    """Verification state for one root; keep one per process (it holds the caches)."""

    def __init__(self, trust: IntelTrustStore, store: CollateralStore, *,
                 cache_limit: int = 4096) -> None:
        self.trust = trust
        self.chains = PckVerifier(trust, cache_limit=cache_limit)
        self.documents = CollateralVerifier(trust, chains=self.chains, cache_limit=cache_limit)
        self._store = store
        self._cache_limit = cache_limit
        self._crls: dict[str, tuple[tuple[VerifiedCrl, ...], int]] = {}
        self._signers: tuple[Certificate, ...] | None = None
        self._docs: dict[tuple[str, str, bytes], _Candidates[TcbInfo] | _Candidates[
            EnclaveIdentity]] = {}
        self.crl_signatures = 0

    @property
    def insecure(self) -> bool:
        """True for a simulator root."""
        return self.trust.insecure

    def issued(self, issuer_name_der: bytes) -> bool:
        """Whether this anchor's root has the given subject (DER of an issuer name)."""
        return self.trust.subject_der == issuer_name_der

    # --- CRLs ---------------------------------------------------------------------------------

    def crls(self, issuer: Certificate) -> tuple[VerifiedCrl, ...]:
        """Signature-verified CRLs of ``issuer`` in the store, newest thisUpdate first;
        ``ChainUntrusted`` when the store holds CRLs in its name and none verifies."""
        cached = self._crls.get(issuer.fingerprint)
        if cached is None:
            good: list[VerifiedCrl] = []
            forged = 0
            for entry in self._store.crls_by_issuer(issuer.cert.subject):
                self.crl_signatures += 1
                try:
                    good.append(verify_crl_signature(
                        entry.crl, entry.der, issuer,
                        what=f"CRL of {common_name(issuer.cert.subject)}"))
                except KeybrokerError as exc:
                    forged += 1
                    _log.warning("ignoring a CRL that claims issuer %s: %s",
                                 issuer.cert.subject.rfc4514_string(), exc.detail)
            cached = (tuple(sorted(good, key=lambda c: c.this_update, reverse=True)), forged)
            if len(self._crls) >= self._cache_limit:
                self._crls.clear()
            self._crls[issuer.fingerprint] = cached
        result, forged = cached
        if forged and not result:
            raise ChainUntrusted(f"every CRL named for {common_name(issuer.cert.subject)} fails "
                                 "its signature", rule="crl-signature",
                                 expected=f"signed by {issuer.fingerprint}",
                                 actual=f"{forged} CRL(s) with a bad signature")
        return result

    def current_crl(self, issuer: Certificate, name: str, at: datetime, *,
                    allow_missing: bool) -> CrlCheck:
        """The newest CRL of ``issuer`` covering ``at``; without one ``CollateralStale``
        unless ``allow_missing`` (then a warning naming it)."""
        crls = self.crls(issuer)
        for crl in crls:
            if crl.covers(at):
                return CrlCheck(name=name, crl=crl, warning=None)
        state = "stale" if crls else "missing"
        if not allow_missing:
            cn = common_name(issuer.cert.subject)
            if crls:
                raise CollateralStale(f"no {name} covers the verification time",
                                      rule="crl-window",
                                      expected=" | ".join(c.window for c in crls),
                                      actual=at.isoformat())
            raise CollateralStale(f"the {name} is not available", rule="crl-missing",
                                  expected=f"a CRL issued by {cn}", actual="none")
        return CrlCheck(name=name, crl=None, warning=f"{name} {state}")

    # --- TCB Signing certificates and documents ----------------------------------------------

    def signers(self) -> tuple[Certificate, ...]:
        """TCB Signing certificates in the store that this root signed (checked once)."""
        if self._signers is not None:
            return self._signers
        root = self.trust.root
        found = []
        for entry in self._store.with_subject_cn(SIGNING_CN):
            if entry.cert.issuer != root.cert.subject:
                continue
            try:
                check_profile(entry, cn=SIGNING_CN, ca=False)
                self.chains.check_signed(entry, root, SIGNING_CN)
            except KeybrokerError as exc:
                _log.warning("ignoring TCB Signing certificate %s: %s", entry.fingerprint,
                             exc.detail)
                continue
            found.append(entry)
        self._signers = tuple(found)
        return self._signers

    def tcb_info(self, tee: str, fmspc: bytes, at: datetime,
                 root_crl: VerifiedCrl | None) -> VerifiedDocument[TcbInfo]:
        """The current verified TCB Info with id ``tee`` for ``fmspc``."""
        candidates = self._candidates(("tcbInfo", tee, fmspc), TcbInfo,
                                      lambda: self._store.tcb_infos(tee, fmspc))
        what = f"{tee} TCB Info for FMSPC {fmspc.hex()}"
        if not candidates.verified and not candidates.forged:
            have = ", ".join(f.hex() for f in self._store.tcb_info_fmspcs(tee)) or "none"
            raise CollateralStale(f"no {what} in the collateral cache", rule="collateral-missing",
                                  expected=f"{tee} TCB Info fmspc {fmspc.hex()}",
                                  actual=f"{tee} TCB Info for: {have}")
        return self._current(candidates, what, at, root_crl)

    def qe_identity(self, identity_id: str, at: datetime,
                    root_crl: VerifiedCrl | None) -> VerifiedDocument[EnclaveIdentity]:
        """The current verified enclave identity ``identity_id`` ("QE" | "TD_QE")."""
        candidates = self._candidates(("enclaveIdentity", identity_id, b""), EnclaveIdentity,
                                      lambda: self._store.enclave_identities(identity_id))
        what = f"{identity_id} identity"
        if not candidates.verified and not candidates.forged:
            raise CollateralStale(f"no {what} in the collateral cache", rule="collateral-missing",
                                  expected=f"enclave identity id {identity_id}", actual="none")
        return self._current(candidates, what, at, root_crl)

    def _candidates(self, key: tuple[str, str, bytes], kind: type[_D],
                    find: Callable[[], tuple[IntelDocument, ...]]) -> _Candidates[_D]:
        cached = self._docs.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]  # key fixes the kind
        verified: list[VerifiedDocument[_D]] = []
        forged: list[IntelDocument] = []
        for doc in find():
            parsed: _D | None = None
            signers = []
            for signer in self.signers():
                try:
                    parsed = self.documents.verify_signed(doc.member, signer, kind)
                except KeybrokerError:
                    continue
                signers.append(signer)
            if parsed is None:
                if self._signed_elsewhere(doc, kind):
                    continue  # another root's collateral (e.g. a simulator's): not a candidate
                if self.signers():
                    _log.warning("collateral %s (%s %s) is not signed by a TCB Signing "
                                 "certificate of root %s", doc.source, doc.kind, doc.id,
                                 self.trust.root.fingerprint[:16])
                forged.append(doc)
            else:
                verified.append(VerifiedDocument(source=doc, parsed=parsed,
                                                 signers=tuple(signers)))
        result = _Candidates(verified=tuple(verified), forged=tuple(forged))
        if len(self._docs) >= self._cache_limit:
            self._docs.clear()
        self._docs[key] = result
        return result

    def _signed_elsewhere(self, doc: IntelDocument, kind: type[_D]) -> bool:
        """Whether a TCB Signing certificate of ANOTHER root in the store signed ``doc`` (it is
        then that root's collateral, neither used nor counted as forged here)."""
        own = {c.fingerprint for c in self.signers()}
        for cert in self._store.with_subject_cn(SIGNING_CN):
            if cert.fingerprint in own:
                continue
            try:
                self.documents.verify_signed(doc.member, cert, kind)
            except KeybrokerError:
                continue
            return True
        return False

    def _current(self, candidates: _Candidates[_D], what: str, at: datetime,
                 root_crl: VerifiedCrl | None) -> VerifiedDocument[_D]:
        for doc in candidates.verified:
            if doc.parsed.issue_date <= at < doc.parsed.next_update:
                self._check_signer(doc, what, at, root_crl)
                return doc
        forged = [d for d in candidates.forged if d.issue_date <= at < d.next_update]
        if forged and not self.signers():
            raise CollateralStale(
                f"no {SIGNING_CN} certificate of the root in the collateral, so the {what} "
                "signature cannot be checked (add the TCB signing chain: the "
                "TCB-Info-Issuer-Chain or SGX-Enclave-Identity-Issuer-Chain header of PCS)",
                rule="collateral-missing",
                expected=f"an {SIGNING_CN} certificate issued by root "
                         f"{self.trust.root.fingerprint[:16]}",
                actual=f"none; {what} from {forged[0].source}")
        if forged:
            raise ChainUntrusted(f"{what} signature does not verify under a TCB Signing "
                                 "certificate of the root", rule="collateral-sig",
                                 expected=f"signed by {SIGNING_CN}",
                                 actual=f"{forged[0].source} (sha256 {forged[0].digest[:16]})")
        windows = [d.source.window for d in candidates.verified]
        windows += [d.window for d in candidates.forged]
        raise CollateralStale(f"no {what} is current at the verification time",
                              rule="collateral-window", expected=" | ".join(windows),
                              actual=at.isoformat())

    @staticmethod
    def _check_signer(doc: VerifiedDocument[_D], what: str, at: datetime,
                      root_crl: VerifiedCrl | None) -> None:
        first: KeybrokerError | None = None
        for signer in doc.signers:
            start, end = signer.cert.not_valid_before_utc, signer.cert.not_valid_after_utc
            if not start <= at <= end:
                first = first or ChainUntrusted(
                    f"{SIGNING_CN} certificate of the {what} is not valid at the verification "
                    "time", rule="validity", expected=f"{start.isoformat()} .. {end.isoformat()}",
                    actual=at.isoformat())
                continue
            if root_crl is not None:
                try:
                    root_crl.check_not_revoked(signer, SIGNING_CN)
                except KeybrokerError as exc:
                    first = first or exc
                    continue
            return
        assert first is not None  # a verified document has at least one signer
        raise first
