"""Intel PCS v4 (or a PCCS) as a collateral source: what a TDX or SGX quote needs (TCB Info
for its FMSPC, the QE identity, the PCK CRL of its CA, the Root CA CRL) and the checks a
fetched item must pass before it is kept.

Invariants:
- URLs follow PCS v4: ``/{sgx|tdx}/certification/v4/tcb?fmspc=``,
  ``/{sgx|tdx}/certification/v4/qe/identity``,
  ``/sgx/certification/v4/pckcrl?ca={processor|platform}&encoding=der``; the Root CA CRL
  comes from ``root_crl_url`` (default: the pinned root's CRL distribution point).
- Issuer chains come from the response headers (``TCB-Info-Issuer-Chain``,
  ``SGX-TCB-Info-Issuer-Chain``, ``SGX-Enclave-Identity-Issuer-Chain``,
  ``SGX-PCK-CRL-Issuer-Chain``; percent-encoded PEM) and must end at the pinned root.
- A TCB Info or QE identity is kept only when its signature verifies under a TCB Signing
  certificate chained to the pinned root at the given time and it is the document asked for
  (id and FMSPC). A CRL is kept only when its issuer CA signed it: the PCK CA of the header
  chain (itself signed by the pinned root) or the pinned root. Windows are not checked here:
  a stale item is kept and reported stale, so an operator sees what the vendor serves.
- The quote's PCK chain is checked structurally (pinned root, names, signatures) only to read
  its FMSPC and CA; the quote itself is verified later, by the verifier.
"""

from __future__ import annotations

from datetime import datetime

from keybroker.errors import ChainUntrusted, Malformed
from keybroker.evidence.dcap_quote import parse_quote
from keybroker.evidence.pcs_document import split_signed_body
from verifier.collateral.item import CollateralItem, Need
from verifier.collateral.settings import DEFAULT_PCS_URL, DEFAULT_ROOT_CRL_URL
from verifier.dcap.crl import verify_crl_signature
from verifier.dcap.documents import CollateralVerifier
from verifier.dcap.pck import INTERMEDIATE_CNS, PckVerifier, check_profile
from verifier.dcap.schema import EnclaveIdentity, TcbInfo
from verifier.dcap.trust import IntelTrustStore
from verifier.pki import common_name, load_crl, parse_pem_chain

TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)
_QE_IDS = {"tdx": "TD_QE", "sgx": "QE"}


class PcsSource:
    """Builds PCS needs and verifies what PCS returned against the pinned Intel root."""

    def __init__(self, base_url: str = DEFAULT_PCS_URL, *,
                 root_crl_url: str = DEFAULT_ROOT_CRL_URL,
                 trust: IntelTrustStore | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_crl_url = root_crl_url
        self._trust = trust or IntelTrustStore.pinned()
        self._chains = PckVerifier(self._trust)
        self._documents = CollateralVerifier(self._trust, chains=self._chains)

    def needs_for_quote(self, raw: bytes, tee: str) -> list[Need]:
        """Everything needed to verify the quote ``raw`` (``tee`` "tdx" or "sgx") offline."""
        quote = parse_quote(raw)
        if quote.is_tdx != (tee == "tdx"):
            raise Malformed("the quote is not of the TEE asked for", rule="tee",
                            expected=tee, actual="tdx" if quote.is_tdx else "sgx")
        chain = self._chains.static_chain(quote.signature_data.pck_cert_data.data
                                          .rstrip(b"\x00"))
        return self.platform_needs(tee, chain.extensions.fmspc, chain.ca)

    def platform_needs(self, tee: str, fmspc: bytes, ca: str) -> list[Need]:
        """TCB Info of ``fmspc``, the QE identity, the PCK CRL of ``ca`` and the root CRL."""
        if tee not in _QE_IDS or ca not in INTERMEDIATE_CNS.values() or len(fmspc) != 6:
            raise Malformed("not a PCS platform", rule="collateral.platform",
                            expected="tee tdx|sgx, ca platform|processor, 6-byte FMSPC",
                            actual=f"{tee} {ca} {fmspc.hex()}")
        api = f"{self.base_url}/{tee}/certification/v4"
        return [
            Need(f"{tee}-tcb-{fmspc.hex()}", "tcb_info",
                 f"{tee.upper()} TCB Info for FMSPC {fmspc.hex()}",
                 f"{api}/tcb?fmspc={fmspc.hex()}", TCB_CHAIN_HEADERS),
            Need(f"{tee}-qe-identity", "qe_identity", f"{_QE_IDS[tee]} identity",
                 f"{api}/qe/identity", IDENTITY_CHAIN_HEADERS),
            Need(f"sgx-pck-crl-{ca}", "crl", f"PCK {ca.capitalize()} CA CRL",
                 f"{self.base_url}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der",
                 CRL_CHAIN_HEADERS),
            Need("intel-root-ca-crl", "crl", "Intel SGX Root CA CRL", self.root_crl_url),
        ]

    def need(self, key: str) -> Need:
        """The need a stored item's key names, with this source's URLs."""
        parts = key.split("-")
        if key == "intel-root-ca-crl":
            return self.platform_needs("sgx", bytes(6), "platform")[3]
        if parts[:3] == ["sgx", "pck", "crl"] and len(parts) == 4:
            return self.platform_needs("sgx", bytes(6), parts[3])[2]
        if parts[0] in _QE_IDS and parts[1:] == ["qe", "identity"]:
            return self.platform_needs(parts[0], bytes(6), "platform")[1]
        if parts[0] in _QE_IDS and parts[1] == "tcb" and len(parts) == 3 \
                and all(c in "0123456789abcdef" for c in parts[2]) and len(parts[2]) == 12:
            return self.platform_needs(parts[0], bytes.fromhex(parts[2]), "platform")[0]
        raise Malformed("not an Intel collateral key", rule="collateral.key",
                        expected="<tdx|sgx>-tcb-<fmspc> | <tdx|sgx>-qe-identity | "
                                 "sgx-pck-crl-<ca> | intel-root-ca-crl", actual=key[:80])

    def verify(self, need: Need, body: bytes, issuer_chain: bytes, *, source: str,
               at: datetime, fetched_at: datetime) -> CollateralItem:
        """The item ``body`` is, once it passed the checks of the module invariants."""
        tee = need.key.split("-", 1)[0]
        if need.kind in ("tcb_info", "qe_identity"):
            signer = self._documents.signing_cert(issuer_chain, at=at, root_crl=None,
                                                  allow_missing_crl=True)
            if need.kind == "tcb_info":
                info = self._documents.verify_signed(split_signed_body(body, "tcbInfo"),
                                                     signer, TcbInfo)
                fmspc = need.key.rsplit("-", 1)[1]
                if info.id.lower() != tee or info.fmspc.hex() != fmspc:
                    raise ChainUntrusted("the TCB Info is for another platform",
                                         rule="collateral.fmspc", expected=f"{tee} {fmspc}",
                                         actual=f"{info.id} {info.fmspc.hex()}")
                issued, nxt = info.issue_date, info.next_update
            else:
                ident = self._documents.verify_signed(
                    split_signed_body(body, "enclaveIdentity"), signer, EnclaveIdentity)
                if ident.id != _QE_IDS[tee]:
                    raise ChainUntrusted("the identity is of another enclave",
                                         rule="collateral.identity", expected=_QE_IDS[tee],
                                         actual=ident.id)
                issued, nxt = ident.issue_date, ident.next_update
        elif need.kind == "crl":
            body = _crl_der(body)
            issued, nxt = self._check_crl(need, body, issuer_chain)
        else:
            raise Malformed("not an Intel collateral item", expected="tcb_info | qe_identity "
                            "| crl", actual=need.kind)
        return CollateralItem(key=need.key, kind=need.kind, body=body,
                              issuer_chain=issuer_chain, issued=issued, next_update=nxt,
                              source=source, fetched_at=fetched_at)

    def _check_crl(self, need: Need, body: bytes, issuer_chain: bytes
                   ) -> tuple[datetime, datetime]:
        crl, der = load_crl(body)
        root = self._trust.root
        if need.key == "intel-root-ca-crl":
            issuer = root
        else:
            certs = parse_pem_chain(issuer_chain)
            cas = [c for c in certs if common_name(c.cert.subject) in INTERMEDIATE_CNS]
            if len(cas) != 1 or not any(self._trust.is_pinned_root(c.der) for c in certs):
                raise ChainUntrusted("the PCK CRL issuer chain is not a PCK CA and the pinned "
                                     "root", rule="collateral.chain",
                                     expected=" | ".join(INTERMEDIATE_CNS) + " + root",
                                     actual=", ".join(common_name(c.cert.subject)
                                                      for c in certs) or "none")
            issuer = cas[0]
            check_profile(issuer, cn=common_name(issuer.cert.subject), ca=True)
            self._chains.check_signed(issuer, root, common_name(issuer.cert.subject))
        verified = verify_crl_signature(crl, der, issuer, what=need.what)
        if verified.next_update is None:
            raise Malformed(f"{need.what} has no next update", rule="crl-window",
                            expected="nextUpdate", actual="absent")
        return verified.this_update, verified.next_update


def _crl_der(body: bytes) -> bytes:
    """A CRL body as DER: PCCS may answer hex text."""
    text = body.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode("ascii"))
    return body
