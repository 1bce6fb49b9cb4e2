"""The verifier's collateral cache: certificates, CRLs and Intel's signed collateral documents,
read from files and the collateral store's items (``load``); a verifier builds a new cache when
the store changes, never edits one.

Invariants:
- Files are recognised by content, never by name: PEM (any number of CERTIFICATE and X509 CRL
  blocks), a DER certificate, a DER CRL, an Intel PCS v4 JSON body (``{"tcbInfo": ...,
  "signature": ...}`` or ``{"enclaveIdentity": ..., "signature": ...}``), or a collateral
  bundle JSON (tcb_info, tcb_info_signature, qe_identity, qe_identity_signature, pck_crl,
  root_ca_crl and the PEM issuer chains; CRLs as hex DER), whose parts are indexed like the
  corresponding separate files. Anything else is skipped and named in ``skipped`` (file and
  why), which the CLI prints and the verifier logs as warnings. Inside a directory, README
  files are documentation and not read.
- Loading happens once (``CollateralStore.load``); lookups never touch the file system or the
  network. A missing path raises ``FileNotFoundError`` (with the path as its filename) so a
  misconfiguration is loud.
- The store only indexes; it trusts nothing. Self-signed certificates in it are never anchors
  (chain validation takes roots from the trust store and compares DER bytes). Intel documents
  are indexed by their UNVERIFIED id, FMSPC and dates only to find candidates; the DCAP
  verifier checks the signature over the exact member bytes before it parses or uses them.
- Duplicates (same certificate DER, same CRL DER, same signed member and signature) are kept
  once.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from keybroker.errors import KeybrokerError
from keybroker.evidence.pcs_document import SignedMember, parse_date, split_signed_body
from keybroker.evidence.snp_certs import AmdExtensions, decode_amd_extensions
from verifier.pki import Certificate

_log = logging.getLogger(__name__)

MAX_FILE_SIZE = 16 * 1024 * 1024
_UNRECOGNISED = ("not a certificate, CRL, Intel TCB Info / enclave identity or collateral "
                 "bundle")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class CollateralCert:
    """A certificate from the cache with its decoded AMD extensions (None if it has none or
    they do not decode)."""

    entry: Certificate
    amd: AmdExtensions | None


@dataclass(frozen=True)
class CollateralCrl:
    """A CRL from the cache with its exact DER bytes."""

    crl: x509.CertificateRevocationList
    der: bytes

    @functools.cached_property
    def issuer(self) -> x509.Name:
        """The issuer name (decoded once)."""
        return self.crl.issuer

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 hex of the DER bytes."""
        return hashlib.sha256(self.der).hexdigest()


IntelDocKind = Literal["tcbInfo", "enclaveIdentity"]
_BUNDLE_KEYS = frozenset({"tcb_info", "tcb_info_signature", "tcb_info_issuer_chain",
                          "qe_identity", "qe_identity_signature", "qe_identity_issuer_chain",
                          "pck_crl", "root_ca_crl", "pck_crl_issuer_chain"})


@dataclass(frozen=True)
class IntelDocument:
    """A signed Intel collateral document (TCB Info or enclave identity) as loaded, NOT verified.

    ``id``, ``fmspc`` and the dates are read from the unverified bytes for indexing only."""

    kind: IntelDocKind
    id: str
    fmspc: bytes | None  # TCB Info only
    issue_date: datetime
    next_update: datetime
    member: SignedMember
    digest: str  # SHA-256 hex over the member bytes and the signature
    source: str

    @property
    def window(self) -> str:
        """``issueDate .. nextUpdate`` as stated by the document."""
        return f"{self.issue_date.isoformat()} .. {self.next_update.isoformat()}"


class CollateralStore:
    """Indexed certificates and CRLs."""

    def __init__(self, certs: Sequence[CollateralCert] = (),
                 crls: Sequence[CollateralCrl] = (),
                 intel_documents: Sequence[IntelDocument] = (),
                 skipped: Sequence[str] = ()) -> None:
        self.skipped = tuple(skipped)
        seen: set[str] = set()
        unique = []
        for cert in certs:
            if cert.entry.fingerprint not in seen:
                seen.add(cert.entry.fingerprint)
                unique.append(cert)
        self._certs = tuple(unique)
        seen_crls: set[bytes] = set()
        unique_crls = []
        for crl in crls:
            if crl.der not in seen_crls:
                seen_crls.add(crl.der)
                unique_crls.append(crl)
        self._crls = tuple(unique_crls)
        docs: dict[str, IntelDocument] = {}
        for doc in intel_documents:
            docs.setdefault(doc.digest, doc)
        newest_first = sorted(docs.values(), key=lambda d: d.issue_date, reverse=True)
        self._intel_docs = tuple(newest_first)
        self._tcb_infos: dict[tuple[str, bytes], tuple[IntelDocument, ...]] = {}
        self._identities: dict[str, tuple[IntelDocument, ...]] = {}
        for doc in newest_first:
            if doc.kind == "tcbInfo" and doc.fmspc is not None:
                key = (doc.id, doc.fmspc)
                self._tcb_infos[key] = (*self._tcb_infos.get(key, ()), doc)
            elif doc.kind == "enclaveIdentity":
                self._identities[doc.id] = (*self._identities.get(doc.id, ()), doc)

    @classmethod
    def empty(cls) -> CollateralStore:
        """A store with nothing in it."""
        return cls()

    @classmethod
    def load(cls, paths: Sequence[Path], blobs: Sequence[tuple[str, bytes]] = ()
             ) -> CollateralStore:
        """Read files and (recursively) directories, then ``blobs`` (name, content: the
        collateral store's items); see the module invariants."""
        sink = _Sink()
        for given in paths:
            path = Path(given)
            if not path.exists():
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(path))
            files = (sorted(p for p in path.rglob("*")
                            if p.is_file() and not p.name.upper().startswith("README"))
                     if path.is_dir() else [path])
            for file in files:
                _load_file(file, sink)
        for name, data in blobs:
            _load_data(Path(name), data, sink)
        store = cls(sink.certs, sink.crls, sink.docs, sink.skipped)
        _log.info("collateral loaded: %d certificates, %d CRLs, %d Intel documents, "
                  "%d files not recognised", len(store.certificates), len(store.crls),
                  len(store.intel_documents), len(store.skipped))
        return store

    @property
    def certificates(self) -> tuple[CollateralCert, ...]:
        """Every certificate, in load order."""
        return self._certs

    @property
    def crls(self) -> tuple[CollateralCrl, ...]:
        """Every CRL, in load order."""
        return self._crls

    def with_subject(self, name: x509.Name) -> list[Certificate]:
        """Certificates whose subject equals ``name`` (candidate intermediates)."""
        return [c.entry for c in self._certs if c.entry.subject == name]

    def with_subject_cn(self, cn: str) -> list[Certificate]:
        """Certificates whose subject common name is ``cn``."""
        return [c.entry for c in self._certs if c.entry.subject_cn == cn]

    def vceks_for(self, chip_id: bytes, reported_tcb: bytes) -> list[Certificate]:
        """VCEKs whose hwID is this CHIP_ID (Turin: CHIP_ID[0:8]) and whose SPLs equal the
        reported TCB, read with the certificate's own layout."""
        out = []
        for c in self._certs:
            if c.amd is None or c.amd.hw_id is None or not any(chip_id):
                continue
            if c.entry.subject_cn != "SEV-VCEK":
                continue
            wanted = chip_id[:8] if len(c.amd.hw_id) == 8 else chip_id
            if c.amd.hw_id == wanted and not c.amd.spl_mismatches(reported_tcb):
                out.append(c.entry)
        return out

    def vcek_mismatches(self, chip_id: bytes, reported_tcb: bytes) -> list[str]:
        """Why each VCEK in the cache does not endorse this report: ``hwID ...`` (another chip)
        or the SPL differences (this chip at another TCB); for messages only."""
        out = []
        for c in self._certs:
            if (c.amd is None or c.amd.hw_id is None
                    or c.entry.subject_cn != "SEV-VCEK"):
                continue
            wanted = chip_id[:8] if len(c.amd.hw_id) == 8 else chip_id
            if c.amd.hw_id != wanted:
                out.append(f"hwID {c.amd.hw_id.hex()[:16]}… (another chip)")
            else:
                out.append("this chip at another TCB: "
                           + ", ".join(c.amd.spl_mismatches(reported_tcb)))
        return out

    def vleks_for(self, reported_tcb: bytes) -> list[Certificate]:
        """VLEKs whose SPLs equal the reported TCB (any CSP; the report signature decides)."""
        return [c.entry for c in self._certs
                if c.amd is not None and c.amd.csp_id is not None
                and c.entry.subject_cn == "SEV-VLEK"
                and not c.amd.spl_mismatches(reported_tcb)]

    def crls_by_issuer(self, issuer: x509.Name) -> list[CollateralCrl]:
        """CRLs whose issuer name equals ``issuer`` (their signatures are not checked here)."""
        return [c for c in self._crls if c.issuer == issuer]

    @property
    def intel_documents(self) -> tuple[IntelDocument, ...]:
        """Every Intel TCB Info / enclave identity document, newest issue date first."""
        return self._intel_docs

    def tcb_infos(self, tee: str, fmspc: bytes) -> tuple[IntelDocument, ...]:
        """TCB Info documents claiming id ``tee`` ("SGX" | "TDX") and ``fmspc``, newest first
        (unverified: the caller checks signatures and windows)."""
        return self._tcb_infos.get((tee, bytes(fmspc)), ())

    def enclave_identities(self, identity_id: str) -> tuple[IntelDocument, ...]:
        """Enclave identity documents claiming ``identity_id`` ("QE" | "TD_QE" | "QVE"),
        newest first (unverified)."""
        return self._identities.get(identity_id, ())

    def tcb_info_fmspcs(self, tee: str) -> tuple[bytes, ...]:
        """FMSPCs for which TCB Info with id ``tee`` is present (for error messages)."""
        return tuple(sorted({fmspc for (ident, fmspc) in self._tcb_infos if ident == tee}))


@dataclass
class _Sink:
    """What the files loaded so far hold."""

    certs: list[CollateralCert] = field(default_factory=list)
    crls: list[CollateralCrl] = field(default_factory=list)
    docs: list[IntelDocument] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _load_file(path: Path, sink: _Sink) -> None:
    size = path.stat().st_size
    if size > MAX_FILE_SIZE:
        sink.skipped.append(f"{path}: {size} bytes is over the {MAX_FILE_SIZE}-byte limit")
        return
    _load_data(path, path.read_bytes(), sink)


def _load_data(path: Path, data: bytes, sink: _Sink) -> None:
    if data.lstrip()[:1] == b"{":
        _load_json(path, data, sink)
        return
    _load_certs_and_crls(path, data, sink)


def _load_certs_and_crls(path: Path, data: bytes, sink: _Sink) -> None:
    certs, crls = sink.certs, sink.crls
    ders: list[tuple[str, bytes]] = []
    if b"-----BEGIN " in data:
        for label, body in _PEM_BLOCK.findall(data):
            try:
                ders.append((label.decode(), base64.b64decode(b"".join(body.split()),
                                                               validate=True)))
            except ValueError:
                sink.skipped.append(f"{path}: a PEM block does not decode")
    else:
        ders.append(("", data))
    before = len(certs) + len(crls)
    for label, der in ders:
        if label in ("CERTIFICATE", ""):
            cert = _try_certificate(der)
            if cert is not None:
                certs.append(cert)
                continue
        if label in ("X509 CRL", ""):
            crl = _try_crl(der)
            if crl is not None:
                crls.append(crl)
    if len(certs) + len(crls) == before:
        sink.skipped.append(f"{path}: {_UNRECOGNISED}")


def _load_json(path: Path, data: bytes, sink: _Sink) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        sink.skipped.append(f"{path}: starts like JSON but does not parse")
        return
    if not isinstance(doc, dict):
        sink.skipped.append(f"{path}: JSON that is not an object ({_UNRECOGNISED})")
        return
    try:
        if set(doc) == {"tcbInfo", "signature"}:
            sink.docs.append(_document("tcbInfo", split_signed_body(data, "tcbInfo"), path))
        elif set(doc) == {"enclaveIdentity", "signature"}:
            sink.docs.append(_document("enclaveIdentity",
                                       split_signed_body(data, "enclaveIdentity"), path))
        elif set(doc) >= _BUNDLE_KEYS:
            _load_bundle(path, doc, sink)
        else:
            sink.skipped.append(f"{path}: JSON with keys {', '.join(sorted(doc)[:6])} "
                                f"({_UNRECOGNISED})")
    except (KeybrokerError, ValueError, TypeError, KeyError) as exc:
        sink.skipped.append(f"{path}: {exc}")


def _load_bundle(path: Path, doc: dict[str, object], sink: _Sink) -> None:
    """A collateral bundle: both documents, both CRLs (hex DER) and the issuer chains."""
    def text(key: str) -> str:
        value = doc[key]
        if not isinstance(value, str):
            raise TypeError(f"bundle member {key} is not a string")
        return value

    sink.docs.append(_document("tcbInfo", SignedMember.from_hex(
        text("tcb_info").encode("utf-8"), text("tcb_info_signature")), path))
    sink.docs.append(_document("enclaveIdentity", SignedMember.from_hex(
        text("qe_identity").encode("utf-8"), text("qe_identity_signature")), path))
    for key in ("root_ca_crl", "pck_crl"):
        crl = _try_crl(bytes.fromhex(text(key)))
        if crl is None:
            sink.skipped.append(f"{path}: bundle member {key} is not a DER CRL")
        else:
            sink.crls.append(crl)
    for key in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        _load_certs_and_crls(path, text(key).encode("ascii"), sink)


def _document(kind: IntelDocKind, member: SignedMember, path: Path) -> IntelDocument:
    """Index an unverified signed member by its claimed id, FMSPC and dates."""
    body = json.loads(member.raw)
    if not isinstance(body, dict):
        raise TypeError(f"{kind} is not a JSON object")
    ident, issue, nxt = body.get("id"), body.get("issueDate"), body.get("nextUpdate")
    if not isinstance(ident, str) or not isinstance(issue, str) or not isinstance(nxt, str):
        raise TypeError(f"{kind} lacks id, issueDate or nextUpdate")
    fmspc: bytes | None = None
    if kind == "tcbInfo":
        fmspc_hex = body.get("fmspc")
        if not isinstance(fmspc_hex, str):
            raise ValueError("tcbInfo lacks fmspc")
        fmspc = bytes.fromhex(fmspc_hex)
    digest = hashlib.sha256(member.raw + member.signature).hexdigest()
    return IntelDocument(kind=kind, id=ident, fmspc=fmspc,
                         issue_date=parse_date(issue, f"{kind}.issueDate"),
                         next_update=parse_date(nxt, f"{kind}.nextUpdate"), member=member,
                         digest=digest, source=str(path))


def _try_certificate(der: bytes) -> CollateralCert | None:
    try:
        entry = Certificate.from_der(der)
    except KeybrokerError:
        return None
    try:
        amd: AmdExtensions | None = decode_amd_extensions(entry.cert)
    except KeybrokerError as exc:
        _log.warning("certificate %s has undecodable AMD extensions: %s", entry.fingerprint,
                     exc.reason)
        amd = None
    return CollateralCert(entry=entry, amd=amd)


def _try_crl(der: bytes) -> CollateralCrl | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            crl = x509.load_der_x509_crl(der)
    except ValueError:
        return None
    return CollateralCrl(crl=crl, der=bytes(der))
