"""A simulated Azure paravisor on a real swtpm: the vTPM's persistent AK and the HCL report in
its NV index, regenerated from the report data the guest wrote, with an SEV-SNP report (the
SNP simulator) or a TDREPORT whose TD quote comes from the TDX simulator. INSECURE: every
signature chains to a test CA; for tests and demos only.

Invariants:
- ``provision`` makes the AK once (RSA-2048, RSASSA-SHA256, restricted signing, fixedTPM,
  fixedParent, persistent at ``AK_HANDLE``) and writes a first HCL report; it is idempotent.
- ``refresh`` is what the real paravisor does when the guest writes ``REPORT_DATA_INDEX``: the
  runtime claims (HCLAkPub = the persistent AK, ``vm_configuration``, ``user-data`` = the
  64 bytes written, zero when nothing was) are bound by the hardware report's REPORT_DATA
  (SHA-256 of the claims bytes, then 32 zero bytes) and written to ``HCL_REPORT_INDEX``.
- swtpm's NV indices hold at most ``MAX_NV_INDEX`` bytes, so the claims carry only the AK (no
  HCLEkPub) and the report is not padded; a report that would not fit is UNAVAILABLE.
- The TDREPORT is zero except its REPORT_DATA (offset 0x80); ``td_quote`` quotes exactly that
  REPORT_DATA, as the host's quoting enclave would after checking the TDREPORT's MAC.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from attester_agent.collectors.azure_vtpm import (
    AK_HANDLE,
    HCL_REPORT_INDEX,
    REPORT_DATA_INDEX,
    AzureVtpmCollector,
)
from attester_agent.collectors.simulator import SIMULATOR_CA_HINT
from attester_agent.collectors.simulator_dcap import SimulatorLayout
from attester_agent.collectors.tpm import TpmCollector
from attester_agent.simulator.dcap import TdxSimulator
from attester_agent.simulator.dcap_ca import DcapTestCa
from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Unavailable
from keybroker.evidence.hcl_report import (
    HW_REPORT_SIZE,
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    TDREPORT_SIZE,
    HclReport,
    build_hcl_report,
)

_log = logging.getLogger(__name__)
MAX_NV_INDEX = 2048
NV_CHUNK = 1024
_HEADER_AND_DATA = 20  # IGVM request data header before the runtime claims
DEFAULT_VM_CONFIGURATION: Mapping[str, object] = MappingProxyType({
    "console-enabled": False, "secure-boot": True, "tpm-enabled": True,
    "vmUniqueId": "6B1D4C35-3F1E-4B7A-9C2D-5E8F0A1B2C3D"})


def _b64url(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SimulatedParavisor:
    """The paravisor of one simulated Azure CVM over a swtpm (module invariants)."""

    def __init__(self, tcti: str, *, snp: SnpSimulator | None = None,
                 tdx: TdxSimulator | None = None,
                 vm_configuration: Mapping[str, object] = DEFAULT_VM_CONFIGURATION) -> None:
        if (snp is None) == (tdx is None):
            raise ValueError("a simulated paravisor runs on exactly one of SEV-SNP and TDX")
        self._tpm = TpmCollector(tcti, event_log=None, name="paravisor")
        self._snp = snp
        self._tdx = tdx
        self._configuration = dict(vm_configuration)

    @property
    def platform(self) -> str:
        return "az-snp-vtpm" if self._snp is not None else "az-tdx-vtpm"

    def provision(self) -> SimulatedParavisor:
        """Make the persistent AK if missing, then write a first HCL report."""
        self._tpm.run("provisioning the simulated vTPM AK", self._make_ak)
        self.refresh()
        return self

    @staticmethod
    def _make_ak(esys: Any, loaded: list[Any]) -> None:
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT  # noqa: PLC0415
        from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE  # noqa: PLC0415

        try:
            esys.tr_from_tpmpublic(AK_HANDLE)
            return
        except Exception:  # noqa: S110 - not provisioned yet
            pass
        attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
                 | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | TPMA_OBJECT.USERWITHAUTH)
        template = TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256:null", objectAttributes=attrs)
        template.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.NULL
        handle, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)
        loaded.append(handle)
        esys.evict_control(ESYS_TR.OWNER, handle, AK_HANDLE)

    def _claims(self, esys: Any, user_data: bytes) -> bytes:
        public, _, _ = esys.read_public(esys.tr_from_tpmpublic(AK_HANDLE))
        area = public.publicArea
        exponent = int(area.parameters.rsaDetail.exponent) or 65537
        modulus = int.from_bytes(bytes(area.unique.rsa.buffer), "big")
        claims = {"keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
                            "e": _b64url(exponent), "n": _b64url(modulus)}],
                  "vm-configuration": self._configuration, "user-data": user_data.hex().upper()}
        return json.dumps(claims, separators=(",", ":")).encode()

    def _hardware_report(self, report_data: bytes) -> tuple[int, bytes]:
        if self._snp is not None:
            return REPORT_TYPE_SNP, self._snp.sign(self._snp.report(report_data))
        tdreport = bytearray(TDREPORT_SIZE)
        tdreport[0x80:0xC0] = report_data
        return REPORT_TYPE_TDX, bytes(tdreport) + bytes(HW_REPORT_SIZE - TDREPORT_SIZE)

    def refresh(self) -> None:
        """Regenerate the HCL report from the report data written (module invariants)."""
        def body(esys: Any, loaded: list[Any]) -> None:
            del loaded
            try:
                user_data = self._tpm.nv_read(esys, REPORT_DATA_INDEX, 64)
            except Exception:  # the guest never wrote report data
                user_data = bytes(64)
            claims = self._claims(esys, user_data)
            kind, hardware = self._hardware_report(hashlib.sha256(claims).digest() + bytes(32))
            report = build_hcl_report(HclReport(
                version=1, report_size=32 + HW_REPORT_SIZE + _HEADER_AND_DATA + len(claims),
                request_type=2, status=0, hw_report=hardware,
                data_size=_HEADER_AND_DATA + len(claims), igvm_version=1, report_type=kind,
                hash_type=1, runtime_claims=claims))
            if len(report) > MAX_NV_INDEX:
                raise Unavailable("the simulated HCL report does not fit swtpm's NV index",
                                  expected=f"<= {MAX_NV_INDEX} bytes",
                                  actual=f"{len(report)} bytes")
            self._write_report(esys, report)
        self._tpm.run("writing the simulated HCL report", body)

    @staticmethod
    def _write_report(esys: Any, report: bytes) -> None:
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV  # noqa: PLC0415
        from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC  # noqa: PLC0415

        try:
            handle = esys.tr_from_tpmpublic(HCL_REPORT_INDEX)
        except Exception:  # not defined yet
            handle = None
        if handle is not None and int(
                esys.nv_read_public(handle)[0].nvPublic.dataSize) != len(report):
            esys.nv_undefine_space(handle, auth_handle=ESYS_TR.OWNER)
            handle = None
        if handle is None:  # absent, or of another size: (re)defined
            public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                nvIndex=HCL_REPORT_INDEX, nameAlg=TPM2_ALG.SHA256,
                attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, dataSize=len(report)))
            handle = esys.nv_define_space(b"", public, auth_handle=ESYS_TR.OWNER)
        for offset in range(0, len(report), NV_CHUNK):
            esys.nv_write(handle, report[offset:offset + NV_CHUNK], offset,
                          auth_handle=ESYS_TR.OWNER)

    def vcek(self) -> bytes:
        """The simulated VCEK (PEM), as THIM would give it."""
        if self._snp is None:
            raise Unavailable("a TDX paravisor has no VCEK")
        return self._snp.leaf.certificate.public_bytes(Encoding.PEM)

    def td_quote(self, tdreport: bytes) -> bytes:
        """The simulated TD quote of ``tdreport``'s REPORT_DATA."""
        if self._tdx is None:
            raise Unavailable("an SEV-SNP paravisor has no TD quote")
        return self._tdx.quote(bytes(tdreport[0x80:0xC0]))


def simulated_azure_collector(tcti: str, platform: str, sim_dir: Path, *,
                              measurement: bytes | None = None, vmpl: int = 0,
                              mr_td: bytes | None = None,
                              vm_configuration: Mapping[str, object] = DEFAULT_VM_CONFIGURATION
                              ) -> AzureVtpmCollector:
    """INSECURE: the Azure collector on a swtpm whose paravisor this process simulates, with
    the SEV-SNP (``az-snp-vtpm``) or DCAP (``az-tdx-vtpm``) test CA saved in ``sim_dir``."""
    try:
        if platform == "az-snp-vtpm":
            snp = SnpSimulator(SnpTestCa.load(sim_dir), vmpl=vmpl,
                               measurement=measurement or bytes(48))
            paravisor = SimulatedParavisor(tcti, snp=snp, vm_configuration=vm_configuration)
        else:
            tdx = TdxSimulator(DcapTestCa.load(SimulatorLayout(sim_dir).dcap_ca), mr_td=mr_td)
            paravisor = SimulatedParavisor(tcti, tdx=tdx, vm_configuration=vm_configuration)
    except (OSError, ValueError, TypeError) as exc:
        raise Unavailable(f"cannot load the simulator test CA from {sim_dir}",
                          expected=SIMULATOR_CA_HINT, actual=str(exc)) from exc
    _log.warning("INSECURE: simulating an Azure paravisor (%s) on %s with the test CA in %s; "
                 "its evidence proves nothing about real hardware", platform, tcti, sim_dir)
    paravisor.provision()
    return AzureVtpmCollector(tcti, vcek=paravisor.vcek, td_quote=paravisor.td_quote,
                              after_write=paravisor.refresh, name=f"{platform}-simulator")
