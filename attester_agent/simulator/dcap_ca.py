"""A test PKI mimicking Intel's SGX/TDX DCAP PKI. INSECURE: for tests and demos only.

Invariants:
- ECDSA P-256 keys and ecdsa-with-SHA256 signatures throughout, X.509 v3: a self-signed
  "Intel SGX Root CA" -> "Intel SGX PCK Platform CA" -> "Intel SGX PCK Certificate" leaves, and
  "Intel SGX TCB Signing" (signed by the root) for TCB Info / QE Identity. Every subject's O is
  "<name> (INSECURE TEST ROOT)"; CAs carry basicConstraints CA:TRUE and keyCertSign|cRLSign,
  leaves CA:FALSE and digitalSignature|nonRepudiation, as Intel's do.
- PCK leaves carry the SGX extension (OID 1.2.840.113741.1.13.1) encoded in DER here, exactly as
  Intel issues it: SEQUENCE OF SEQUENCE {OID, value} with PPID, TCB (COMP01..16 SVN INTEGERs,
  PCESVN INTEGER, CPUSVN OCTET STRING), PCE-ID, FMSPC, SGX Type (ENUMERATED) and, for Platform
  CA leaves, PlatformInstanceID and Configuration (BOOLEANs), written by
  ``keybroker.evidence.sgx_extensions.encode_sgx_extension``.
- CRLs are DER, issued in the name of their CA (root CA CRL by the root, PCK CRL by the PCK
  Platform CA) unless a different signing key is given (hostile tests).
- ``save`` writes private keys with mode 0600 in a directory with mode 0700.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attester_agent.simulator import dcap_collateral as coll
from attester_agent.simulator.ca_files import load_pairs, save_pairs
from keybroker.evidence.sgx_extensions import (
    OID_SGX_EXTENSION,
    PlatformConfiguration,
    SgxExtensions,
    encode_sgx_extension,
)

ROOT_CN = "Intel SGX Root CA"
PCK_CA_CN = "Intel SGX PCK Platform CA"
PCK_CN = "Intel SGX PCK Certificate"
TCB_SIGNING_CN = "Intel SGX TCB Signing"
INSECURE_SUFFIX = " (INSECURE TEST ROOT)"
NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)
_FILES = ("root", "pck-platform-ca", "tcb-signing")
TDX_TCB_INFO_FILE = "tcb-info-tdx.json"
SGX_TCB_INFO_FILE = "tcb-info-sgx.json"
TD_QE_IDENTITY_FILE = "qe-identity-td-qe.json"
QE_IDENTITY_FILE = "qe-identity-qe.json"
TCB_SIGNING_CHAIN_FILE = "tcb-info-issuer-chain.pem"
PCK_CRL_CHAIN_FILE = "pck-crl-issuer-chain.pem"
ROOT_CRL_FILE = "root-ca-crl.der"
PCK_CRL_FILE = "pck-crl.der"


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{org}{INSECURE_SUFFIX}"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=not ca,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def _issue(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
           signer: ec.EllipticCurvePrivateKey, *, ca: bool, path_length: int | None = None,
           not_before: dt.datetime = NOT_BEFORE, not_after: dt.datetime = NOT_AFTER,
           sgx: SgxExtensions | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), True)
               .add_extension(_key_usage(ca=ca), True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer.public_key()), False))
    if sgx is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(OID_SGX_EXTENSION, encode_sgx_extension(sgx)), False)
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class PckLeaf:
    """A PCK certificate with its private key and the SGX extension values it carries."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    extensions: SgxExtensions

    @property
    def der(self) -> bytes:
        """The certificate's DER bytes."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def serial(self) -> int:
        """The certificate serial number (what a PCK CRL lists)."""
        return self.certificate.serial_number


@dataclass(frozen=True)
class DcapTestCa:
    """The test root, PCK Platform CA and TCB signing key (see module invariants)."""

    root_key: ec.EllipticCurvePrivateKey
    pck_ca_key: ec.EllipticCurvePrivateKey
    tcb_signing_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca: x509.Certificate
    tcb_signing: x509.Certificate

    @classmethod
    def generate(cls, *, name: str = "keybroker simulator",
                 not_before: dt.datetime = NOT_BEFORE,
                 not_after: dt.datetime = NOT_AFTER) -> DcapTestCa:
        """A fresh PKI whose subjects' O is ``name`` plus the INSECURE suffix."""
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
        root_name = _name(ROOT_CN, name)
        root = _issue(root_name, keys[0].public_key(), root_name, keys[0], ca=True,
                      path_length=1, not_before=not_before, not_after=not_after)
        pck_ca = _issue(_name(PCK_CA_CN, name), keys[1].public_key(), root_name, keys[0],
                        ca=True, path_length=0, not_before=not_before, not_after=not_after)
        signing = _issue(_name(TCB_SIGNING_CN, name), keys[2].public_key(), root_name, keys[0],
                         ca=False, not_before=not_before, not_after=not_after)
        return cls(root_key=keys[0], pck_ca_key=keys[1], tcb_signing_key=keys[2], root=root,
                   pck_ca=pck_ca, tcb_signing=signing)

    @property
    def name(self) -> str:
        """The CA name (subject O without the INSECURE suffix)."""
        values = self.root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return (str(values[0].value) if values else "").removesuffix(INSECURE_SUFFIX)

    @property
    def root_der(self) -> bytes:
        """The root's DER (``IntelTrustStore.from_der`` for a verifier run with the flag)."""
        return self.root.public_bytes(serialization.Encoding.DER)

    def root_pem(self) -> bytes:
        """The root as PEM."""
        return _pem(self.root)

    @property
    def qe_mrsigner(self) -> bytes:
        """MRSIGNER of this PKI's simulated quoting enclaves (as its QE identities say)."""
        return coll.qe_mrsigner(self.name)

    def issue_pck(self, *, sgx_svns: Sequence[int], fmspc: bytes, pcesvn: int = coll.PCESVN,
                  pce_id: bytes = coll.PCE_ID, ppid: bytes | None = None,
                  sgx_type: int = 1, platform_instance_id: bytes | None = None,
                  configuration: PlatformConfiguration | None = None,
                  not_before: dt.datetime = NOT_BEFORE,
                  not_after: dt.datetime = NOT_AFTER) -> PckLeaf:
        """A PCK leaf (fresh P-256 key) under the PCK Platform CA for the given TCB."""
        key = ec.generate_private_key(ec.SECP256R1())
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        ext = SgxExtensions(
            ppid=ppid if ppid is not None else point[1:17], sgx_tcb_svns=tuple(sgx_svns),
            pcesvn=pcesvn, cpusvn=bytes(sgx_svns), pce_id=pce_id, fmspc=fmspc,
            sgx_type=sgx_type,
            platform_instance_id=(platform_instance_id if platform_instance_id is not None
                                  else point[17:33]),
            configuration=configuration if configuration is not None else PlatformConfiguration(
                dynamic_platform=True, cached_keys=True, smt_enabled=True))
        cert = _issue(_name(PCK_CN, self.name), key.public_key(), self.pck_ca.subject,
                      self.pck_ca_key, ca=False, not_before=not_before, not_after=not_after,
                      sgx=ext)
        return PckLeaf(key=key, certificate=cert, extensions=ext)

    def pck_chain_pem(self, leaf: PckLeaf) -> bytes:
        """Leaf, PCK Platform CA and root as PEM (what certification data type 5 carries)."""
        return _pem(leaf.certificate) + _pem(self.pck_ca) + _pem(self.root)

    def tcb_signing_chain_pem(self) -> bytes:
        """The TCB Info / QE Identity issuer chain: TCB Signing, then the root."""
        return _pem(self.tcb_signing) + _pem(self.root)

    def pck_crl_issuer_chain_pem(self) -> bytes:
        """The PCK CRL issuer chain: PCK Platform CA, then the root."""
        return _pem(self.pck_ca) + _pem(self.root)

    def _crl(self, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey,
             revoked: Sequence[int], now: dt.datetime, days: int) -> bytes:
        this_update = now - dt.timedelta(days=1)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
                   .last_update(this_update).next_update(now + dt.timedelta(days=days))
                   .add_extension(x509.CRLNumber(1), False))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(this_update).build())
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def root_crl(self, revoked: Sequence[int] = (), *, now: dt.datetime, days: int = 30,
                 signing_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """Root CA CRL (DER) listing ``revoked`` serials; signed by the root unless
        ``signing_key``."""
        return self._crl(self.root, signing_key or self.root_key, revoked, now, days)

    def pck_crl(self, revoked: Sequence[int] = (), *, now: dt.datetime, days: int = 30,
                signing_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """PCK CRL (DER) of the PCK Platform CA listing ``revoked`` serials."""
        return self._crl(self.pck_ca, signing_key or self.pck_ca_key, revoked, now, days)

    def tcb_info(self, tee: Literal["TDX", "SGX"], *, now: dt.datetime, days: int = 30,
                 signing_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """A signed PCS v4 TCB Info body for the simulator profile."""
        member = coll.tcb_info_member(tee, now=now, days=days)
        return coll.signed_body("tcbInfo", member, signing_key or self.tcb_signing_key)

    def qe_identity(self, enclave: Literal["QE", "TD_QE"], *, now: dt.datetime, days: int = 30,
                    signing_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """A signed PCS v4 enclave identity body for the simulated QE or TD QE."""
        member = coll.qe_identity_member(enclave, name=self.name, now=now, days=days)
        return coll.signed_body("enclaveIdentity", member, signing_key or self.tcb_signing_key)

    def write_collateral(self, directory: Path, *, now: dt.datetime, days: int = 30,
                         revoked_pck_serials: Sequence[int] = (),
                         revoked_ca_serials: Sequence[int] = ()) -> None:
        """Write TCB Info (TDX, SGX), QE identities (TD_QE, QE), the issuer chains and both
        CRLs, all valid from ``now - 1 day`` to ``now + days`` (file names: ``*_FILE``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            TDX_TCB_INFO_FILE: self.tcb_info("TDX", now=now, days=days),
            SGX_TCB_INFO_FILE: self.tcb_info("SGX", now=now, days=days),
            TD_QE_IDENTITY_FILE: self.qe_identity("TD_QE", now=now, days=days),
            QE_IDENTITY_FILE: self.qe_identity("QE", now=now, days=days),
            TCB_SIGNING_CHAIN_FILE: self.tcb_signing_chain_pem(),
            PCK_CRL_CHAIN_FILE: self.pck_crl_issuer_chain_pem(),
            ROOT_CRL_FILE: self.root_crl(revoked_ca_serials, now=now, days=days),
            PCK_CRL_FILE: self.pck_crl(revoked_pck_serials, now=now, days=days),
        }
        for file, data in files.items():
            (directory / file).write_bytes(data)

    def save(self, directory: Path) -> None:
        """Write ``root.pem``, ``pck-platform-ca.pem``, ``tcb-signing.pem`` and their
        ``*-key.pem`` (mode 0600) into ``directory`` (mode 0700)."""
        save_pairs(directory, list(zip(_FILES, (self.root, self.pck_ca, self.tcb_signing),
                                       (self.root_key, self.pck_ca_key, self.tcb_signing_key),
                                       strict=True)))

    @classmethod
    def load(cls, directory: Path) -> DcapTestCa:
        """Read a CA written by ``save``."""
        pairs = load_pairs(directory, _FILES)
        certs = [cert for cert, _ in pairs]
        keys = [key for _, key in pairs]
        return cls(root_key=keys[0], pck_ca_key=keys[1], tcb_signing_key=keys[2],
                   root=certs[0], pck_ca=certs[1], tcb_signing=certs[2])

