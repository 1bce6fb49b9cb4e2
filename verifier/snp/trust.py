"""Trust anchors for AMD SEV-SNP: per product (Milan, Genoa, Turin) the ARK and the pinned
ASK (VCEK intermediate) and ASVK (VLEK intermediate).

Invariants:
- The AMD certificates come only from the package data in ``verifier/snp/roots`` and each one
  must match a SHA-256 fingerprint pinned in this module (computed over the DER bytes); a
  mismatch refuses to build the store.
- Simulator roots are only ever added by ``with_simulator_roots`` and are marked ``insecure``;
  they never replace a pinned AMD anchor. Nothing is trusted because it appeared in evidence:
  ``is_pinned_root`` compares exact DER bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from cryptography import x509

from keybroker.errors import ChainUntrusted, Malformed
from verifier.pki import Certificate, common_name

_log = logging.getLogger(__name__)

KeyKind = Literal["vcek", "vlek"]
PRODUCTS = ("Milan", "Genoa", "Turin")

# SHA-256 of the DER of every shipped AMD certificate, keyed by subject CN. The values listed
# in evidence-formats.md section 1.7 were re-computed from the files; the two VLEK entries
# not listed there (Genoa, Turin) were computed from go-sev-guest verify/trust/*.pem.
PINNED_FINGERPRINTS = {
    "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "SEV-Milan": "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
    "SEV-VLEK-Milan": "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "SEV-Genoa": "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
    "SEV-VLEK-Genoa": "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    "SEV-Turin": "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
    "SEV-VLEK-Turin": "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
}
_ROOT_FILES = {
    "Milan": ("ask_ark_milan.pem", "ask_ark_milan_vlek.pem"),
    "Genoa": ("ask_ark_genoa.pem", "ask_ark_genoa_vlek.pem"),
    "Turin": ("ask_ark_turin_vcek.pem", "ask_ark_turin_vlek.pem"),
}


def intermediate_cn(kind: KeyKind, product: str) -> str:
    """Subject CN of the intermediate that signs a VCEK (ASK) or a VLEK (ASVK)."""
    return f"SEV-{product}" if kind == "vcek" else f"SEV-VLEK-{product}"


@dataclass(frozen=True)
class TrustAnchor:
    """One product's ARK with its pinned intermediates; ``insecure`` for simulator roots."""

    product: str
    ark: Certificate
    ask: Certificate | None
    asvk: Certificate | None
    insecure: bool

    def intermediate(self, kind: KeyKind) -> Certificate | None:
        """The pinned ASK (for VCEKs) or ASVK (for VLEKs), if configured."""
        return self.ask if kind == "vcek" else self.asvk


class AmdTrustStore:
    """Trust anchors by product. Immutable: ``with_simulator_roots`` returns a new store."""

    def __init__(self, anchors: Sequence[TrustAnchor]) -> None:
        self._anchors = tuple(anchors)

    @classmethod
    def pinned(cls) -> AmdTrustStore:
        """The AMD roots shipped as package data, each checked against its pinned fingerprint."""
        anchors = []
        package = resources.files("verifier.snp.roots")
        for product, (vcek_file, vlek_file) in _ROOT_FILES.items():
            by_cn: dict[str, Certificate] = {}
            for name in (vcek_file, vlek_file):
                for cert in x509.load_pem_x509_certificates(package.joinpath(name).read_bytes()):
                    entry = Certificate.from_cert(cert)
                    cn = common_name(cert.subject)
                    if PINNED_FINGERPRINTS.get(cn) != entry.fingerprint:
                        raise ChainUntrusted("shipped AMD certificate does not match its pin",
                                             expected=PINNED_FINGERPRINTS.get(cn, "a pinned CN"),
                                             actual=f"{cn} {entry.fingerprint}")
                    by_cn[cn] = entry
            anchors.append(TrustAnchor(
                product=product, ark=by_cn[f"ARK-{product}"], ask=by_cn[f"SEV-{product}"],
                asvk=by_cn[f"SEV-VLEK-{product}"], insecure=False))
        return cls(anchors)

    def with_simulator_roots(self, paths: Sequence[Path]) -> AmdTrustStore:
        """A store that also trusts simulator ARKs (PEM files; an ASK/ASVK in the same file is
        pinned with it). INSECURE: for tests and demos only; every result says so."""
        added = []
        for path in paths:
            try:
                certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
            except ValueError as exc:
                raise Malformed("simulator root file holds no PEM certificate",
                                actual=str(path)) from exc
            by_cn = {common_name(cert.subject): Certificate.from_cert(cert) for cert in certs}
            arks = [(cn, entry) for cn, entry in by_cn.items()
                    if cn.startswith("ARK-") and entry.cert.issuer == entry.cert.subject]
            if len(arks) != 1 or arks[0][0][len("ARK-"):] not in PRODUCTS:
                raise Malformed("simulator root file must hold one self-signed ARK-<product>",
                                expected="ARK-Milan | ARK-Genoa | ARK-Turin",
                                actual=", ".join(sorted(by_cn)) or "nothing")
            cn, ark = arks[0]
            product = cn[len("ARK-"):]
            _log.warning("trusting INSECURE simulator root %s for %s (sha256 %s)",
                         path, product, ark.fingerprint)
            added.append(TrustAnchor(product=product, ark=ark,
                                     ask=by_cn.get(f"SEV-{product}"),
                                     asvk=by_cn.get(f"SEV-VLEK-{product}"), insecure=True))
        return AmdTrustStore(self._anchors + tuple(added))

    def anchors(self, product: str) -> tuple[TrustAnchor, ...]:
        """All anchors for ``product`` (AMD first, then simulator roots)."""
        return tuple(a for a in self._anchors if a.product == product)

    def is_pinned_root(self, der: bytes) -> bool:
        """True only for the exact DER of a configured ARK."""
        return any(a.ark.der == der for a in self._anchors)

    @property
    def insecure(self) -> bool:
        """True when any simulator root is trusted."""
        return any(a.insecure for a in self._anchors)
