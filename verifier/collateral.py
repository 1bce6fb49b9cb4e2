"""The verifier's collateral cache: certificates and CRLs read from files once, at start-up.

Invariants:
- Files are recognised by content, never by name: PEM (any number of CERTIFICATE and X509 CRL
  blocks), a DER certificate, or a DER CRL. Anything else is skipped and logged.
- Loading happens once (``CollateralStore.load``); lookups never touch the file system or the
  network. A missing path raises ``FileNotFoundError`` so a misconfiguration is loud.
- The store only indexes; it trusts nothing. Self-signed certificates in it are never anchors
  (chain validation takes roots from the trust store and compares DER bytes).
"""

from __future__ import annotations

import base64
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from keybroker.errors import KeybrokerError
from verifier.snp.certs import AmdExtensions, common_name, decode_amd_extensions
from verifier.snp.trust import Certificate

_log = logging.getLogger(__name__)

MAX_FILE_SIZE = 16 * 1024 * 1024
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


class CollateralStore:
    """Indexed certificates and CRLs."""

    def __init__(self, certs: Sequence[CollateralCert] = (),
                 crls: Sequence[CollateralCrl] = ()) -> None:
        seen: set[str] = set()
        unique = []
        for cert in certs:
            if cert.entry.fingerprint not in seen:
                seen.add(cert.entry.fingerprint)
                unique.append(cert)
        self._certs = tuple(unique)
        self._crls = tuple(crls)

    @classmethod
    def empty(cls) -> CollateralStore:
        """A store with nothing in it."""
        return cls()

    @classmethod
    def load(cls, paths: Sequence[Path]) -> CollateralStore:
        """Read files and (recursively) directories; see the module invariants."""
        certs: list[CollateralCert] = []
        crls: list[CollateralCrl] = []
        for given in paths:
            path = Path(given)
            if not path.exists():
                raise FileNotFoundError(f"collateral path does not exist: {path}")
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                _load_file(file, certs, crls)
        _log.info("collateral loaded: %d certificates, %d CRLs", len(certs), len(crls))
        return cls(certs, crls)

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
        return [c.entry for c in self._certs if c.entry.cert.subject == name]

    def vceks_for(self, chip_id: bytes, reported_tcb: bytes) -> list[Certificate]:
        """VCEKs whose hwID is this CHIP_ID (Turin: CHIP_ID[0:8]) and whose SPLs equal the
        reported TCB, read with the certificate's own layout."""
        out = []
        for c in self._certs:
            if c.amd is None or c.amd.hw_id is None or not any(chip_id):
                continue
            if common_name(c.entry.cert.subject) != "SEV-VCEK":
                continue
            wanted = chip_id[:8] if len(c.amd.hw_id) == 8 else chip_id
            if c.amd.hw_id == wanted and not c.amd.spl_mismatches(reported_tcb):
                out.append(c.entry)
        return out

    def vleks_for(self, reported_tcb: bytes) -> list[Certificate]:
        """VLEKs whose SPLs equal the reported TCB (any CSP; the report signature decides)."""
        return [c.entry for c in self._certs
                if c.amd is not None and c.amd.csp_id is not None
                and common_name(c.entry.cert.subject) == "SEV-VLEK"
                and not c.amd.spl_mismatches(reported_tcb)]

    def crls_by_issuer(self, issuer: x509.Name) -> list[CollateralCrl]:
        """CRLs whose issuer name equals ``issuer`` (their signatures are not checked here)."""
        return [c for c in self._crls if c.crl.issuer == issuer]


def _load_file(path: Path, certs: list[CollateralCert], crls: list[CollateralCrl]) -> None:
    size = path.stat().st_size
    if size > MAX_FILE_SIZE:
        _log.warning("collateral file %s skipped: %d bytes is over the limit", path, size)
        return
    data = path.read_bytes()
    ders: list[tuple[str, bytes]] = []
    if b"-----BEGIN " in data:
        for label, body in _PEM_BLOCK.findall(data):
            try:
                ders.append((label.decode(), base64.b64decode(b"".join(body.split()),
                                                               validate=True)))
            except ValueError:
                _log.warning("collateral file %s: a PEM block does not decode", path)
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
        _log.debug("collateral file %s holds nothing recognised", path)


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
