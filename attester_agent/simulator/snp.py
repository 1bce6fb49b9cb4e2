"""SEV-SNP simulator under a test CA. INSECURE: its roots are for tests and demos only.

Invariants:
- The test CA is ECDSA P-384 throughout (fast to generate): a self-signed ARK-<product> ->
  SEV-<product> (ASK) and SEV-VLEK-<product> (ASVK) -> SEV-VCEK / SEV-VLEK leaves, all signed
  ECDSA-SHA384. Every subject's O names "<name> (INSECURE TEST ROOT)".
- Leaves carry the real AMD extensions (1.3.6.1.4.1.3704.1.x) encoded as AMD issues them: DER
  INTEGER SPLs and structVersion, IA5String productName/csp_id, raw-bytes hwID (64 bytes; 8 on
  Turin with structVersion 1 and fmcSPL).
- Reports are byte-exact (``keybroker.evidence.snp_report.build_report``) and signed over
  bytes 0x000..0x29F with the leaf key (r/s little-endian); ``sign`` re-signs a mutated report.
- ``save`` writes private keys with mode 0600 in a directory with mode 0700.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attester_agent.simulator.ca_files import load_pairs, save_pairs
from keybroker.evidence.der import der_ia5, der_uint
from keybroker.evidence.snp_certs import (
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    OID_CSP_ID,
    OID_HW_ID,
    OID_PRODUCT_NAME,
    OID_STRUCT_VERSION,
    SPL_ARC,
    SPL_BYTES_LEGACY,
    SPL_BYTES_TURIN,
    build_cert_table,
)
from keybroker.evidence.snp_report import (
    REPORT_SIZE,
    SIGNED_SIZE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SnpReport,
    build_report,
    parse_report,
)

Product = Literal["Milan", "Genoa", "Turin"]
CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x01)}
DEFAULT_TCB = {"Milan": bytes.fromhex("0300000000000873"),
               "Genoa": bytes.fromhex("0a00000000001719"),
               "Turin": bytes.fromhex("0001000300000009")}
NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)
_FILES = ("ark", "ask", "asvk")


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{org} (INSECURE TEST ROOT)"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ])


def _org(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    text = str(values[0].value) if values else ""
    return text.removesuffix(" (INSECURE TEST ROOT)")


@dataclass(frozen=True)
class Leaf:
    """A VCEK or VLEK with its private key."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        """The certificate's DER bytes."""
        return self.certificate.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class SnpTestCa:
    """A P-384 test ARK with its ASK and ASVK (see module invariants)."""

    product: str
    ark_key: ec.EllipticCurvePrivateKey
    ask_key: ec.EllipticCurvePrivateKey
    asvk_key: ec.EllipticCurvePrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate

    @classmethod
    def generate(cls, product: Product | str = "Milan", *, name: str = "keybroker simulator",
                 not_before: dt.datetime = NOT_BEFORE,
                 not_after: dt.datetime = NOT_AFTER) -> SnpTestCa:
        """A fresh CA for ``product`` (Milan, Genoa or Turin)."""
        if product not in CPUID:
            raise ValueError(f"unsupported simulator product {product!r}")
        keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
        ark_name = _name(f"ARK-{product}", name)
        ark = _issue(ark_name, keys[0].public_key(), ark_name, keys[0], ca=True,
                     not_before=not_before, not_after=not_after)
        ask = _issue(_name(f"SEV-{product}", name), keys[1].public_key(), ark_name, keys[0],
                     ca=True, not_before=not_before, not_after=not_after)
        asvk = _issue(_name(f"SEV-VLEK-{product}", name), keys[2].public_key(), ark_name,
                      keys[0], ca=True, not_before=not_before, not_after=not_after)
        return cls(product=product, ark_key=keys[0], ask_key=keys[1], asvk_key=keys[2],
                   ark=ark, ask=ask, asvk=asvk)

    @property
    def name(self) -> str:
        """The CA name (subject O without the INSECURE suffix)."""
        return _org(self.ark)

    @property
    def ark_pem(self) -> bytes:
        """The ARK as PEM: what a verifier trusts with the insecure flag."""
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def _leaf(self, kind: Literal["vcek", "vlek"], reported_tcb_raw: bytes,
              extensions: list[tuple[x509.ObjectIdentifier, bytes]], *, issuer: str,
              not_before: dt.datetime, not_after: dt.datetime) -> Leaf:
        if len(reported_tcb_raw) != 8:
            raise ValueError("reported TCB must be 8 bytes")
        turin = self.product == "Turin"
        layout = SPL_BYTES_TURIN if turin else SPL_BYTES_LEGACY
        ext = [(OID_STRUCT_VERSION, der_uint(1 if turin else 0))] + [
            (x509.ObjectIdentifier(f"{SPL_ARC}{arc}"), der_uint(reported_tcb_raw[index]))
            for arc, index in sorted(layout.items())] + extensions
        signer_cert, signer_key = ((self.ask, self.ask_key) if issuer == "ask"
                                   else (self.asvk, self.asvk_key))
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _issue(_name("SEV-VCEK" if kind == "vcek" else "SEV-VLEK", self.name),
                      key.public_key(), signer_cert.subject, signer_key, ca=False,
                      not_before=not_before, not_after=not_after, amd=ext)
        return Leaf(key=key, certificate=cert)

    def issue_vcek(self, chip_id: bytes, reported_tcb_raw: bytes, *,
                   product_name: str | None = None, issuer: Literal["ask", "asvk"] = "ask",
                   not_before: dt.datetime = NOT_BEFORE,
                   not_after: dt.datetime = NOT_AFTER) -> Leaf:
        """A VCEK for ``chip_id`` (hwID: 64 bytes, Turin: first 8) at ``reported_tcb_raw``."""
        hw_id = chip_id[:8] if self.product == "Turin" else chip_id
        ext = [(OID_PRODUCT_NAME, der_ia5(product_name or f"{self.product}-B0")),
               (OID_HW_ID, bytes(hw_id))]
        return self._leaf("vcek", reported_tcb_raw, ext, issuer=issuer,
                          not_before=not_before, not_after=not_after)

    def issue_vlek(self, reported_tcb_raw: bytes, csp_id: str = "keybroker-simulator", *,
                   product_name: str | None = None, issuer: Literal["ask", "asvk"] = "asvk",
                   not_before: dt.datetime = NOT_BEFORE,
                   not_after: dt.datetime = NOT_AFTER) -> Leaf:
        """A VLEK for a CSP at ``reported_tcb_raw`` (no hwID)."""
        ext = [(OID_PRODUCT_NAME, der_ia5(product_name or self.product)),
               (OID_CSP_ID, der_ia5(csp_id))]
        return self._leaf("vlek", reported_tcb_raw, ext, issuer=issuer,
                          not_before=not_before, not_after=not_after)

    def issue_crl(self, revoked_serials: Sequence[int] = (), *, this_update: dt.datetime,
                  next_update: dt.datetime,
                  signing_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """A DER CRL issued in the ARK's name (signed by the ARK unless ``signing_key``)."""
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
                   .last_update(this_update).next_update(next_update))
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(this_update).build())
        crl = builder.sign(signing_key or self.ark_key, hashes.SHA384())
        return crl.public_bytes(serialization.Encoding.DER)

    def write_collateral(self, directory: Path, *, now: dt.datetime, days: int = 30,
                         revoked_serials: Sequence[int] = ()) -> Path:
        """Write the ARK's CRL (valid from ``now - 1 day`` to ``now + days``) as
        ``ark-<product>.crl`` in ``directory`` (a verifier collateral directory)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"ark-{self.product.lower()}.crl"
        path.write_bytes(self.issue_crl(revoked_serials, this_update=now - dt.timedelta(days=1),
                                        next_update=now + dt.timedelta(days=days)))
        return path

    def save(self, directory: Path) -> None:
        """Write ``ark.pem``, ``ask.pem``, ``asvk.pem`` and ``*-key.pem`` (mode 0600)."""
        save_pairs(directory, list(zip(_FILES, (self.ark, self.ask, self.asvk),
                                       (self.ark_key, self.ask_key, self.asvk_key),
                                       strict=True)))

    @classmethod
    def load(cls, directory: Path) -> SnpTestCa:
        """Read a CA written by ``save``."""
        pairs = load_pairs(directory, _FILES)
        certs = [cert for cert, _ in pairs]
        keys = [key for _, key in pairs]
        (name,) = certs[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        product = str(name.value).removeprefix("ARK-")
        return cls(product=product, ark_key=keys[0], ask_key=keys[1], asvk_key=keys[2],
                   ark=certs[0], ask=certs[1], asvk=certs[2])


def _issue(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
           signer: ec.EllipticCurvePrivateKey, *, ca: bool, not_before: dt.datetime,
           not_after: dt.datetime,
           amd: Sequence[tuple[x509.ObjectIdentifier, bytes]] = ()) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), True)
    for oid, value in amd:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), False)
    return builder.sign(signer, hashes.SHA384())


class SnpSimulator:
    """Produces signed SEV-SNP reports and GHCB certificate tables under an ``SnpTestCa``."""

    def __init__(self, ca: SnpTestCa, *, version: int = 3, measurement: bytes = bytes(48),
                 host_data: bytes = bytes(32), policy: int = 0x30000, vmpl: int = 0,
                 chip_id: bytes | None = None, reported_tcb: bytes | None = None,
                 signing_key: Literal["vcek", "vlek"] = "vcek",
                 cpuid: tuple[int, int, int] | None = None, platform_info: int = 0x25,
                 guest_svn: int = 0, family_id: bytes = bytes(16), image_id: bytes = bytes(16),
                 firmware: tuple[int, int, int] = (1, 55, 40), leaf: Leaf | None = None) -> None:
        if version not in (2, 3, 5):
            raise ValueError("simulated report version must be 2, 3 or 5")
        self.ca = ca
        self.signing_key = signing_key
        if chip_id is None:
            chip_id = hashlib.sha512(b"keybroker simulator chip " + ca.ark.signature).digest()
            if ca.product == "Turin":
                chip_id = chip_id[:8] + bytes(56)
        tcb = reported_tcb if reported_tcb is not None else DEFAULT_TCB[ca.product]
        if leaf is None:
            leaf = (ca.issue_vcek(chip_id, tcb) if signing_key == "vcek"
                    else ca.issue_vlek(tcb))
        self.leaf = leaf
        fam, mod, step = cpuid if cpuid is not None else CPUID[ca.product]
        if version == 2:
            fam = mod = step = 0
        major, minor, build = firmware
        self._template = SnpReport(
            version=version, guest_svn=guest_svn, policy=policy, family_id=family_id,
            image_id=image_id, vmpl=vmpl, signature_algo=1, current_tcb=tcb,
            platform_info=platform_info,
            signer_info=(SIGNING_KEY_VCEK if signing_key == "vcek" else SIGNING_KEY_VLEK) << 2,
            report_data=bytes(64), measurement=measurement, host_data=host_data,
            id_key_digest=bytes(48), author_key_digest=bytes(48),
            report_id=hashlib.sha256(b"report id " + chip_id).digest(),
            report_id_ma=b"\xff" * 32, reported_tcb=tcb, cpuid_fam_id=fam, cpuid_mod_id=mod,
            cpuid_step=step, chip_id=chip_id if signing_key == "vcek" else bytes(64),
            committed_tcb=tcb, current_build=build, current_minor=minor, current_major=major,
            committed_build=build, committed_minor=minor, committed_major=major,
            launch_tcb=tcb, launch_mit_vector=0 if version < 5 else 0x3,
            current_mit_vector=0 if version < 5 else 0x3, signature_r=0, signature_s=0)

    def report(self, report_data: bytes) -> SnpReport:
        """The unsigned report for ``report_data`` (64 bytes)."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        return self._template.with_changes(report_data=bytes(report_data))

    def sign(self, report: SnpReport) -> bytes:
        """Sign ``report`` with the leaf key; returns the 1184 report bytes."""
        unsigned = build_report(report.with_changes(signature_r=0, signature_s=0))
        r, s = decode_dss_signature(
            self.leaf.key.sign(unsigned[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
        out = build_report(report.with_changes(signature_r=r, signature_s=s))
        assert len(out) == REPORT_SIZE
        return out

    def cert_table(self) -> bytes:
        """GHCB certificate table: the ASK (or ASVK) and the VCEK (or VLEK)."""
        if self.signing_key == "vcek":
            entries = [(GUID_ASK, _der(self.ca.ask)), (GUID_VCEK, self.leaf.der)]
        else:
            entries = [(GUID_ASK, _der(self.ca.asvk)), (GUID_VLEK, self.leaf.der)]
        return build_cert_table(entries)

    def attest(self, report_data: bytes) -> tuple[bytes, bytes]:
        """(signed report, certificate table) for ``report_data``."""
        return self.sign(self.report(report_data)), self.cert_table()

    @staticmethod
    def parse(raw: bytes) -> SnpReport:
        """Parse a report (for mutating and re-signing in tests)."""
        return parse_report(raw)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
