"""Intel TDX and SGX DCAP quote simulators under a ``DcapTestCa``. INSECURE: their roots are
for tests and demos only.

Invariants:
- Quotes are byte-exact (``keybroker.evidence.dcap_quote.build_quote``): TDX v4 (TD report 1.0)
  or v5 (body type 2 or 3), SGX v3; header att_key_type 2 with Intel's QE vendor ID; signature
  data with the QE report, its PCK signature, 32 bytes of QE auth data and the PCK chain PEM
  (leaf, PCK Platform CA, root, then a NUL as real quotes end) as certification data type 5
  (nested in type 6 for v4/v5).
- Each simulator has its own P-256 attestation key and PCK leaf (fresh unless given). The QE
  report matches the QE identity its CA writes (MRSIGNER, ISVPRODID, attributes, MISCSELECT,
  ISVSVN) and binds the key: report_data = SHA-256(attestation key X||Y || QE auth data) ||
  32 zero bytes. The PCK key signs the 384 QE report bytes; the attestation key signs the
  header and body (ECDSA-P256-SHA256, r||s big-endian).
- ``tcb`` selects which TCB level of ``dcap_collateral.LEVELS`` the platform matches: TDX via
  TEE_TCB_SVN, SGX via the PCK leaf's SGX SVNs; ``"unsupported"`` matches no level.
- ``sign`` re-signs a mutated ``DcapQuote`` as received (QE report binding recomputed from the
  quote's own attestation key and auth data unless ``qe_report_data`` overrides it).
- TDX: RTMR0..2 are what ``ccel()`` replays to; RTMR3 starts at zero and only
  ``extend_rtmr3`` (or the ``rtmr3`` setter, for state persisted between processes) changes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attester_agent.simulator import dcap_collateral as coll
from attester_agent.simulator.ccel import SimulatedCcel, TdBoot, simulate_ccel
from attester_agent.simulator.dcap_ca import DcapTestCa, PckLeaf
from keybroker.evidence.dcap_quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    BODY_TYPE_SGX,
    BODY_TYPE_TD10,
    BODY_TYPE_TD15,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_SGX,
    TEE_TYPE_TDX,
    DcapQuote,
    QuoteHeader,
    TdReportBody,
    build_quote,
)
from keybroker.evidence.dcap_signature import (
    CERT_TYPE_PCK_CERT_CHAIN,
    CertificationData,
    EcdsaSignatureData,
    SgxReportBody,
    build_sgx_report_body,
)
from keybroker.evidence.runtime_log import RuntimeEvent, extend

__all__ = ["DcapTestCa", "PckLeaf", "SgxSimulator", "TdBoot", "TdxSimulator", "qe_binding"]

TD_ATTRIBUTES_SEPT_VE_DISABLE = 1 << 28
DEFAULT_XFAM = 0xE7
DEFAULT_MR_SEAM = hashlib.sha384(b"keybroker/dcap-simulator/tdx-module").digest()
DEFAULT_MR_ENCLAVE = hashlib.sha256(b"keybroker/dcap-simulator/enclave").digest()
DEFAULT_MR_SIGNER = hashlib.sha256(b"keybroker/dcap-simulator/enclave-signer").digest()
SGX_ATTRIBUTES_PRODUCTION = bytes.fromhex("0500000000000000e700000000000000")  # INIT|MODE64BIT
QE_AUTH_DATA = bytes(range(32))
_ZERO_SIG = bytes(64)


def mr_td_for(boot: TdBoot) -> bytes:
    """The simulated MRTD of a TD whose firmware is ``boot.firmware``."""
    return hashlib.sha384(b"keybroker/dcap-simulator/mrtd\x00" + boot.firmware).digest()


def qe_binding(attestation_key: bytes, qe_auth_data: bytes) -> bytes:
    """QE report_data binding: SHA-256(attestation key || QE auth data) || 32 zero bytes."""
    return hashlib.sha256(attestation_key + qe_auth_data).digest() + bytes(32)


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def _check_size(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return bytes(value)


class _DcapSimulator:
    """What TDX and SGX simulators share: PCK leaf, attestation key, QE report and signing."""

    def __init__(self, ca: DcapTestCa, *, enclave: str, tcb: str, fmspc: bytes,
                 pck: PckLeaf | None, attestation_key: ec.EllipticCurvePrivateKey | None,
                 platform_svns: Sequence[int]) -> None:
        if tcb not in coll.TCB_CHOICES:
            raise ValueError(f"unknown simulator TCB {tcb!r}; one of "
                             f"{', '.join(coll.TCB_CHOICES)}")
        self.ca = ca
        self.tcb = tcb
        self.pck = pck if pck is not None else ca.issue_pck(sgx_svns=platform_svns, fmspc=fmspc)
        self.attestation_key = (attestation_key if attestation_key is not None
                                else ec.generate_private_key(ec.SECP256R1()))
        self._qe_template = SgxReportBody(
            cpu_svn=self.pck.extensions.cpusvn, misc_select=coll.QE_MISCSELECT,
            isv_ext_prod_id=bytes(16), attributes=coll.QE_ATTRIBUTES,
            mr_enclave=hashlib.sha256(b"keybroker/dcap-simulator/" + enclave.encode()).digest(),
            mr_signer=ca.qe_mrsigner, config_id=bytes(64),
            isv_prod_id=coll.QE_ISVPRODID[enclave], isv_svn=coll.QE_ISVSVN, config_svn=0,
            isv_family_id=bytes(16), report_data=bytes(64))
        self._user_data = hashlib.sha256(b"qe-id" + self.pck.extensions.ppid).digest()[:16]

    @property
    def attestation_public_key(self) -> bytes:
        """The attestation key as in quotes: X||Y (64 bytes, big-endian)."""
        return _raw_public(self.attestation_key)

    def _header(self, version: int, tee_type: int, qe_svn: int, pce_svn: int) -> QuoteHeader:
        return QuoteHeader(version=version, att_key_type=ATT_KEY_TYPE_ECDSA_P256,
                           tee_type=tee_type, qe_svn=qe_svn, pce_svn=pce_svn,
                           qe_vendor_id=INTEL_QE_VENDOR_ID, user_data=self._user_data + bytes(4))

    def _signature_data(self) -> EcdsaSignatureData:
        chain = self.ca.pck_chain_pem(self.pck) + b"\x00"
        return EcdsaSignatureData(
            signature=_ZERO_SIG, attestation_key=self.attestation_public_key,
            qe_report=self._qe_template, qe_report_signature=_ZERO_SIG,
            qe_auth_data=QE_AUTH_DATA,
            pck_cert_data=CertificationData(CERT_TYPE_PCK_CERT_CHAIN, chain))

    def sign(self, quote: DcapQuote, *, qe_report_data: bytes | None = None) -> bytes:
        """Sign ``quote`` as given: its QE report (report_data = the binding of the quote's
        attestation key and auth data, or ``qe_report_data``) with the PCK key, then the header
        and body with the attestation key. Returns the quote bytes."""
        sig = quote.signature_data
        binding = (qe_binding(sig.attestation_key, sig.qe_auth_data)
                   if qe_report_data is None else _check_size("qe_report_data",
                                                              qe_report_data, 64))
        qe = dataclasses.replace(sig.qe_report, report_data=binding)
        qe_raw = build_sgx_report_body(qe)
        sig = dataclasses.replace(sig, qe_report=qe, qe_report_raw=qe_raw,
                                  qe_report_signature=coll.raw_signature(self.pck.key, qe_raw))
        unsigned = quote.with_changes(signature_data=sig)
        signature = coll.raw_signature(self.attestation_key, unsigned.signed_bytes)
        return build_quote(unsigned.with_changes(
            signature_data=dataclasses.replace(sig, signature=signature)))


class TdxSimulator(_DcapSimulator):
    """Produces signed TDX quotes (v4 or v5) and the matching CCEL."""

    def __init__(self, ca: DcapTestCa, *, version: int = 4, body_type: int | None = None,
                 mr_td: bytes | None = None,
                 td_attributes: int = TD_ATTRIBUTES_SEPT_VE_DISABLE, xfam: int = DEFAULT_XFAM,
                 mr_config_id: bytes = bytes(48), mr_owner: bytes = bytes(48),
                 mr_owner_config: bytes = bytes(48), tcb: str = "UpToDate",
                 rtmrs: Sequence[bytes] | None = None, rtmr3: bytes | None = None,
                 boot: TdBoot | None = None, mr_seam: bytes = DEFAULT_MR_SEAM,
                 mr_signer_seam: bytes = coll.MODULE_MRSIGNER, pck: PckLeaf | None = None,
                 attestation_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        if version not in (4, 5):
            raise ValueError("simulated TDX quote version must be 4 or 5")
        body_type = body_type if body_type is not None else (
            BODY_TYPE_TD10 if version == 4 else BODY_TYPE_TD15)
        if body_type not in ((BODY_TYPE_TD10,) if version == 4
                             else (BODY_TYPE_TD10, BODY_TYPE_TD15)):
            raise ValueError(f"body type {body_type} is not allowed in a v{version} quote")
        super().__init__(ca, enclave="TD_QE", tcb=tcb, fmspc=coll.TDX_FMSPC, pck=pck,
                         attestation_key=attestation_key,
                         platform_svns=coll.sgx_svns("UpToDate"))
        self.version = version
        self.body_type = body_type
        self.boot = boot if boot is not None else TdBoot()
        self._ccel: SimulatedCcel = simulate_ccel(self.boot)
        if rtmrs is not None:
            if len(rtmrs) != 4:
                raise ValueError("rtmrs must hold RTMR0..RTMR3")
            boot_rtmrs = tuple(_check_size(f"RTMR{i}", r, 48) for i, r in enumerate(rtmrs))
        else:
            boot_rtmrs = self._ccel.rtmrs
        self._rtmrs = boot_rtmrs[:3]
        self._rtmr3 = boot_rtmrs[3]
        if rtmr3 is not None:
            self.rtmr3 = rtmr3
        svn = coll.tee_tcb_svn(tcb)
        self._body = TdReportBody(
            tee_tcb_svn=svn, mr_seam=_check_size("mr_seam", mr_seam, 48),
            mr_signer_seam=_check_size("mr_signer_seam", mr_signer_seam, 48),
            seam_attributes=bytes(8), td_attributes=td_attributes, xfam=xfam,
            mr_td=_check_size("mr_td", mr_td, 48) if mr_td is not None else mr_td_for(self.boot),
            mr_config_id=_check_size("mr_config_id", mr_config_id, 48),
            mr_owner=_check_size("mr_owner", mr_owner, 48),
            mr_owner_config=_check_size("mr_owner_config", mr_owner_config, 48),
            rtmrs=(), report_data=bytes(64),
            tee_tcb_svn2=svn if body_type == BODY_TYPE_TD15 else None,
            mr_service_td=bytes(48) if body_type == BODY_TYPE_TD15 else None)

    @property
    def rtmr3(self) -> bytes:
        """The current RTMR3 (48 bytes)."""
        return self._rtmr3

    @rtmr3.setter
    def rtmr3(self, value: bytes) -> None:
        self._rtmr3 = _check_size("rtmr3", value, 48)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        """RTMR0..RTMR3 as the next quote will report them."""
        return (self._rtmrs[0], self._rtmrs[1], self._rtmrs[2], self._rtmr3)

    @property
    def mr_td(self) -> bytes:
        """The MRTD every quote reports."""
        return self._body.mr_td

    def extend_rtmr3(self, event: RuntimeEvent) -> None:
        """Extend RTMR3 with a runtime event's digest (what ``attester-agent measure`` does)."""
        if event.mr != 3:
            raise ValueError(f"runtime event targets register {event.mr}, not RTMR3")
        self._rtmr3 = extend(self._rtmr3, event)

    def ccel(self) -> tuple[bytes, bytes]:
        """(CCEL ACPI table, CCEL log area) replaying to RTMR0..2 (RTMR3 has no CCEL event)."""
        return self._ccel.table, self._ccel.data

    def template(self, report_data: bytes) -> DcapQuote:
        """The unsigned quote for ``report_data`` (64 bytes), for mutating before ``sign``."""
        body = dataclasses.replace(self._body, rtmrs=self.rtmrs,
                                   report_data=_check_size("report_data", report_data, 64))
        return DcapQuote(header=self._header(self.version, TEE_TYPE_TDX, 0, 0),
                         body_type=self.body_type, body=body,
                         signature_data=self._signature_data()).with_changes()

    def quote(self, report_data: bytes) -> bytes:
        """A signed quote for ``report_data`` (64 bytes)."""
        return self.sign(self.template(report_data))


class SgxSimulator(_DcapSimulator):
    """Produces signed SGX v3 quotes for one enclave."""

    def __init__(self, ca: DcapTestCa, *, mr_enclave: bytes = DEFAULT_MR_ENCLAVE,
                 mr_signer: bytes = DEFAULT_MR_SIGNER, isv_prod_id: int = 1, isv_svn: int = 1,
                 attributes: bytes = SGX_ATTRIBUTES_PRODUCTION, misc_select: int = 0,
                 config_id: bytes = bytes(64), config_svn: int = 0,
                 isv_family_id: bytes = bytes(16), isv_ext_prod_id: bytes = bytes(16),
                 tcb: str = "UpToDate", pck: PckLeaf | None = None,
                 attestation_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        super().__init__(ca, enclave="QE", tcb=tcb, fmspc=coll.SGX_FMSPC, pck=pck,
                         attestation_key=attestation_key, platform_svns=coll.sgx_svns(tcb))
        self._body = SgxReportBody(
            cpu_svn=self.pck.extensions.cpusvn, misc_select=misc_select,
            isv_ext_prod_id=_check_size("isv_ext_prod_id", isv_ext_prod_id, 16),
            attributes=_check_size("attributes", attributes, 16),
            mr_enclave=_check_size("mr_enclave", mr_enclave, 32),
            mr_signer=_check_size("mr_signer", mr_signer, 32),
            config_id=_check_size("config_id", config_id, 64), isv_prod_id=isv_prod_id,
            isv_svn=isv_svn, config_svn=config_svn,
            isv_family_id=_check_size("isv_family_id", isv_family_id, 16),
            report_data=bytes(64))

    def template(self, report_data: bytes) -> DcapQuote:
        """The unsigned quote for ``report_data`` (64 bytes), for mutating before ``sign``."""
        body = dataclasses.replace(self._body,
                                   report_data=_check_size("report_data", report_data, 64))
        header = self._header(3, TEE_TYPE_SGX, coll.QE_ISVSVN, self.pck.extensions.pcesvn)
        return DcapQuote(header=header, body_type=BODY_TYPE_SGX, body=body,
                         signature_data=self._signature_data()).with_changes()

    def quote(self, report_data: bytes) -> bytes:
        """A signed quote for ``report_data`` (64 bytes)."""
        return self.sign(self.template(report_data))
