"""AMD KDS as a collateral source: what an SEV-SNP report needs (its VCEK at the reported TCB,
the ASK/ASVK + ARK chain, the ARK's CRL) and the checks a fetched item must pass before it is
kept.

Invariants:
- URLs follow KDS: ``/vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=`` (Turin:
  ``&fmcSPL=`` and the 8-byte hwID), ``/{vcek|vlek}/v1/{product}/cert_chain`` and
  ``/{vcek|vlek}/v1/{product}/crl``. A VLEK is the cloud provider's: a VLEK-signed report
  needs only the VLEK chain and CRL.
- A chain is kept only when its root is byte-for-byte a pinned ARK of the product and the
  intermediate (named SEV-<product> or SEV-VLEK-<product>) is a CA signed by that ARK. A VCEK
  is kept only when it is signed by the product's pinned ASK, names SEV-VCEK, and its hwID
  and SPLs are the ones asked for (a KDS answering for another chip or TCB is refused). A CRL
  is kept only when the product's ARK signed it and it has a next update.
- Nothing here touches the network: the fetcher hands bodies in.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from keybroker.errors import ChainUntrusted, KeybrokerError, Malformed
from keybroker.evidence.snp_certs import decode_amd_extensions
from keybroker.evidence.snp_report import SIGNING_KEY_NONE, SIGNING_KEY_VCEK, parse_report
from verifier.collateral.item import CollateralItem, Need
from verifier.collateral.settings import DEFAULT_KDS_URL
from verifier.pki import Certificate, common_name, load_crl
from verifier.snp.chain import check_ca, signature_hash, verify_signature
from verifier.snp.tcb import TcbVersion, product_from_cpuid
from verifier.snp.trust import PRODUCTS, AmdTrustStore, TrustAnchor, intermediate_cn


class KdsSource:
    """Builds KDS needs and verifies what KDS returned against the pinned AMD roots."""

    def __init__(self, base_url: str = DEFAULT_KDS_URL,
                 trust: AmdTrustStore | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._trust = trust or AmdTrustStore.pinned()

    def needs_for_report(self, raw: bytes, *, product: str | None = None) -> list[Need]:
        """Everything needed to verify the SEV-SNP report ``raw`` offline. ``product`` is
        required for v2 reports (they carry no CPUID) and must agree with v3+ ones."""
        report = parse_report(raw)
        if report.signing_key == SIGNING_KEY_NONE:
            raise Malformed("the report is unsigned: nothing endorses it", rule="signing-key",
                            expected="VCEK or VLEK", actual="none")
        found = (product_from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id)
                 if report.has_cpuid else None)
        if found is not None and product is not None and found != product:
            raise Malformed("--product disagrees with the report's CPUID", rule="product",
                            expected=found, actual=product)
        chosen = found or product
        if chosen is None:
            raise Malformed("the report names no product (v2 has no CPUID)", rule="product",
                            expected="--product " + " | ".join(PRODUCTS), actual="none")
        if report.signing_key != SIGNING_KEY_VCEK:
            return self.chain_needs(chosen, "vlek")
        hwid = report.chip_id[:8] if chosen == "Turin" else report.chip_id
        return [self.vcek_need(chosen, hwid, report.reported_tcb),
                *self.chain_needs(chosen, "vcek")]

    def chain_needs(self, product: str, kind: str = "vcek") -> list[Need]:
        """The certificate chain and CRL of ``product`` for VCEKs or VLEKs."""
        _check_product(product)
        base = f"{self.base_url}/{kind}/v1/{product}"
        return [Need(f"snp-{kind}-chain-{product}", "cert_chain",
                     f"{kind.upper()} certificate chain of {product}", f"{base}/cert_chain"),
                Need(f"snp-{kind}-crl-{product}", "crl", f"ARK-{product} CRL ({kind.upper()})",
                     f"{base}/crl")]

    def vcek_need(self, product: str, hwid: bytes, tcb_raw: bytes) -> Need:
        """The VCEK of chip ``hwid`` at TCB ``tcb_raw`` (8 bytes, the product's layout)."""
        _check_product(product)
        tcb = TcbVersion.decode(tcb_raw, product)
        want = 8 if product == "Turin" else 64
        if len(hwid) != want:
            raise Malformed(f"a {product} hwID is {want} bytes", rule="hwid",
                            expected=str(want), actual=str(len(hwid)))
        query = (f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}"
                 f"&ucodeSPL={tcb.microcode}")
        if tcb.fmc is not None:
            query += f"&fmcSPL={tcb.fmc}"
        return Need(f"snp-vcek-{product}-{hwid.hex()}-{tcb_raw.hex()}", "certificate",
                    f"VCEK of {product} chip {hwid.hex()[:16]}… at TCB {tcb_raw.hex()}",
                    f"{self.base_url}/vcek/v1/{product}/{hwid.hex()}?{query}", immutable=True)

    def need(self, key: str) -> Need:
        """The need a stored item's key names, with this source's URL."""
        parts = key.split("-")
        if len(parts) == 4 and parts[:1] == ["snp"] and parts[2] in ("chain", "crl"):
            return self.chain_needs(parts[3], parts[1])[parts[2] == "crl"]
        if len(parts) == 5 and parts[:2] == ["snp", "vcek"]:
            return self.vcek_need(parts[2], _hex(parts[3], "hwID"), _hex(parts[4], "TCB"))
        raise Malformed("not an AMD collateral key", rule="collateral.key",
                        expected="snp-<vcek|vlek>-<chain|crl>-<product> | snp-vcek-<product>-"
                                 "<hwid>-<tcb>", actual=key[:80])

    def verify(self, need: Need, body: bytes, issuer_chain: bytes, *, source: str,
               at: datetime, fetched_at: datetime) -> CollateralItem:
        """The item ``body`` is, once it passed the checks of the module invariants."""
        parts = need.key.split("-")
        product = parts[3] if parts[1] in ("vcek", "vlek") and parts[2] in ("chain", "crl") \
            else parts[2]
        anchor = self._anchor(product)
        if need.kind == "cert_chain":
            issued, expires = self._check_chain(body, anchor, kind=parts[1])
        elif need.kind == "crl":
            issued, expires = _check_crl(body, anchor)
        elif need.kind == "certificate":
            issued, expires = self._check_vcek(body, anchor, bytes.fromhex(parts[3]),
                                               bytes.fromhex(parts[4]))
        else:
            raise Malformed("not an AMD collateral item", expected="cert_chain | crl | "
                            "certificate", actual=need.kind)
        return CollateralItem(key=need.key, kind=need.kind, body=body, issuer_chain=b"",
                              issued=issued, next_update=expires, source=source,
                              fetched_at=fetched_at)

    def _anchor(self, product: str) -> TrustAnchor:
        anchors = [a for a in self._trust.anchors(product) if not a.insecure]
        if not anchors:
            raise ChainUntrusted(f"no pinned ARK for {product}", rule="root",
                                 expected=" | ".join(PRODUCTS), actual=product)
        return anchors[0]

    def _check_chain(self, body: bytes, anchor: TrustAnchor, *, kind: str
                     ) -> tuple[datetime, datetime]:
        try:
            certs = [Certificate.from_cert(c) for c in x509.load_pem_x509_certificates(body)]
        except ValueError as exc:
            raise Malformed("the certificate chain is not PEM", rule="collateral.chain",
                            expected="PEM: intermediate then ARK", actual=str(exc)) from None
        roots = [c for c in certs if c.der == anchor.ark.der]
        wanted = intermediate_cn("vcek" if kind == "vcek" else "vlek", anchor.product)
        middles = [c for c in certs if common_name(c.cert.subject) == wanted]
        if len(certs) != 2 or not roots or not middles:
            raise ChainUntrusted("the chain is not the pinned ARK and its intermediate",
                                 rule="root", expected=f"{wanted} + pinned ARK-{anchor.product}",
                                 actual=", ".join(f"{common_name(c.cert.subject)} "
                                                  f"{c.fingerprint[:16]}" for c in certs))
        middle = middles[0]
        check_ca(middle.cert, wanted)
        _signed(middle, anchor.ark, wanted)
        return (max(c.cert.not_valid_before_utc for c in certs),
                min(c.cert.not_valid_after_utc for c in certs))

    def _check_vcek(self, body: bytes, anchor: TrustAnchor, hwid: bytes, tcb_raw: bytes
                    ) -> tuple[datetime, datetime]:
        try:
            leaf = Certificate.from_der(body)
        except KeybrokerError:
            raise Malformed("the VCEK is not a DER certificate", rule="collateral.vcek",
                            expected="DER X.509", actual=f"{len(body)} bytes") from None
        if common_name(leaf.cert.subject) != "SEV-VCEK":
            raise ChainUntrusted("not a VCEK", rule="key-type", expected="CN=SEV-VCEK",
                                 actual=common_name(leaf.cert.subject))
        ask = anchor.ask
        if ask is None:
            raise ChainUntrusted(f"no pinned ASK for {anchor.product}", rule="root")
        _signed(leaf, ask, "VCEK")
        ext = decode_amd_extensions(leaf.cert)
        if ext.hw_id != hwid:
            raise ChainUntrusted("the VCEK is for another chip", rule="hwid",
                                 expected=hwid.hex()[:32], actual=(ext.hw_id or b"").hex()[:32])
        mismatches = ext.spl_mismatches(tcb_raw)
        if mismatches:
            raise ChainUntrusted("the VCEK is for another TCB", rule="tcb",
                                 expected=tcb_raw.hex(), actual="; ".join(mismatches))
        return leaf.cert.not_valid_before_utc, leaf.cert.not_valid_after_utc


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Malformed(f"the {what} in a collateral key is not hex", rule="collateral.key",
                        expected="hex digits", actual=text[:40]) from None


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise Malformed("unknown SEV-SNP product", rule="product",
                        expected=" | ".join(PRODUCTS), actual=product)


def _signed(subject: Certificate, issuer: Certificate, what: str) -> None:
    if subject.cert.issuer != issuer.cert.subject:
        raise ChainUntrusted(f"{what}: issuer name does not match", rule="issuer",
                             expected=issuer.cert.subject.rfc4514_string(),
                             actual=subject.cert.issuer.rfc4514_string())
    verify_signature(issuer.cert.public_key(), algorithm=subject.cert.signature_algorithm_oid,
                     hash_algorithm=signature_hash(subject.cert), signature=subject.cert.signature,
                     tbs=subject.cert.tbs_certificate_bytes, allow_ecdsa=False, what=what)


def _check_crl(body: bytes, anchor: TrustAnchor) -> tuple[datetime, datetime]:
    crl, der = load_crl(body)
    what = f"ARK-{anchor.product} CRL"
    if crl.issuer != anchor.ark.cert.subject:
        raise ChainUntrusted(f"{what}: issued by someone else", rule="crl-issuer",
                             expected=anchor.ark.cert.subject.rfc4514_string(),
                             actual=crl.issuer.rfc4514_string())
    verify_signature(anchor.ark.cert.public_key(), algorithm=crl.signature_algorithm_oid,
                     hash_algorithm=signature_hash(crl), signature=crl.signature,
                     tbs=crl.tbs_certlist_bytes, allow_ecdsa=False, what=what)
    if crl.next_update_utc is None:
        raise Malformed(f"{what} has no next update", rule="crl-window",
                        expected="nextUpdate", actual="absent")
    del der
    return crl.last_update_utc, crl.next_update_utc
