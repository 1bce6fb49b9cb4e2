"""The Azure confidential VM collector: the paravisor's vTPM (tpm2-pytss over a TCTI, the
kernel's resource manager by default) gives the HCL report and a quote under its AK; the host
gives the hardware report's endorsement (the VCEK, or the TD quote of the TDREPORT). The
evidence is Trustee's ``az-snp-vtpm`` / ``az-tdx-vtpm`` JSON, format version 1.

Invariants:
- The binding goes in twice: written to NV ``REPORT_DATA_INDEX`` (the paravisor puts it in the
  runtime claims' ``user-data``, which the hardware report binds), and as the quote's
  qualifyingData. The HCL report read back from ``HCL_REPORT_INDEX`` must carry exactly that
  user-data; one that does not (yet) is read again until ``settle`` seconds have passed, then
  UNAVAILABLE: evidence for another binding is never sent.
- The report-data index is defined (owner read/write, 64 bytes) when the VM does not have it;
  one of another size is MALFORMED, never redefined.
- The quote is by the paravisor's persistent AK ``AK_HANDLE`` over SHA-256 PCRs 0..23 (the
  scheme of the key, RSASSA-SHA256), the PCR values read around it with the update-counter
  check of the TPM collector.
- The HCL report is read bounded (``MAX_HCL_REPORT``) and parsed before anything is sent; its
  report type decides the platform (and ``tee``).
- ``after_write`` is for the simulator only (it plays the paravisor); hardware runs without it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from attester_agent.collectors.azure_imds import Imds
from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.tpm import DEFAULT_TCTI, TpmCollector
from keybroker.errors import Malformed, Unavailable
from keybroker.evidence.hcl_report import REPORT_TYPE_SNP, REPORT_TYPE_TDX, parse_hcl_report
from keybroker.v1 import evidence_pb2

HCL_REPORT_INDEX = 0x01400001
REPORT_DATA_INDEX = 0x01400002
AK_HANDLE = 0x81000003
MAX_HCL_REPORT = 16 * 1024
PCRS = tuple(range(24))
DEFAULT_SETTLE = 3.0
PLATFORMS = {REPORT_TYPE_SNP: "az-snp-vtpm", REPORT_TYPE_TDX: "az-tdx-vtpm"}
_TEES = {"az-snp-vtpm": evidence_pb2.TEE_TYPE_AZURE_SNP_VTPM,
         "az-tdx-vtpm": evidence_pb2.TEE_TYPE_AZURE_TDX_VTPM}


def user_data_of(report: bytes) -> bytes | None:
    """The runtime claims' ``user-data`` of an HCL report (None when absent or unreadable)."""
    try:
        claims = json.loads(parse_hcl_report(report).runtime_claims)
        return bytes.fromhex(claims["user-data"])
    except (Malformed, ValueError, KeyError, TypeError):
        return None


class AzureVtpmCollector:
    """Azure vTPM evidence (module invariants)."""

    def __init__(self, tcti: str = DEFAULT_TCTI, *, imds: Imds | None = None,
                 vcek: Callable[[], bytes] | None = None,
                 td_quote: Callable[[bytes], bytes] | None = None,
                 after_write: Callable[[], None] | None = None, settle: float = DEFAULT_SETTLE,
                 name: str = "azure-vtpm") -> None:
        """``vcek`` / ``td_quote`` replace the IMDS calls (``imds``, default the link-local
        service) for the hardware report's endorsement."""
        host = imds or Imds()
        self._tpm = TpmCollector(tcti, event_log=None, pcrs=PCRS, name=name)
        self._vcek = vcek or host.vcek
        self._td_quote = td_quote or host.td_quote
        self._after_write = after_write
        self._settle = settle
        self._name = name
        self._platform: str | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def tee(self) -> int:
        """The platform of the VM's HCL report (read once)."""
        if self._platform is None:
            self._platform = PLATFORMS[parse_hcl_report(self._read_report()).report_type]
        return _TEES[self._platform]

    def available(self) -> bool:
        """Whether the vTPM answers and holds an HCL report."""
        if not self._tpm.available():
            return False
        try:
            return self.tee in _TEES.values()
        except (Malformed, Unavailable):
            return False

    def _read_report(self) -> bytes:
        return self._tpm.run("reading the HCL report", lambda esys, _: self._tpm.nv_read(
            esys, HCL_REPORT_INDEX, MAX_HCL_REPORT))

    def _write_report_data(self, report_data: bytes) -> None:
        def body(esys: Any, loaded: list[Any]) -> None:
            del loaded
            from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV  # noqa: PLC0415
            from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC  # noqa: PLC0415

            try:
                handle = esys.tr_from_tpmpublic(REPORT_DATA_INDEX)
            except Exception:  # not defined on this VM yet
                public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=REPORT_DATA_INDEX, nameAlg=TPM2_ALG.SHA256,
                    attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.PPREAD,
                    dataSize=len(report_data)))
                handle = esys.nv_define_space(b"", public, auth_handle=ESYS_TR.OWNER)
            size = int(esys.nv_read_public(handle)[0].nvPublic.dataSize)
            if size != len(report_data):
                raise Malformed("the report-data NV index has another size",
                                expected=f"{len(report_data)} bytes at {REPORT_DATA_INDEX:#x}",
                                actual=f"{size} bytes")
            esys.nv_write(handle, report_data, 0, auth_handle=ESYS_TR.OWNER)
        self._tpm.run("writing the report data to the vTPM", body)

    def _bound_report(self, report_data: bytes) -> bytes:
        deadline = time.monotonic() + self._settle
        while True:
            report = self._read_report()
            if user_data_of(report) == report_data:
                return report
            if time.monotonic() >= deadline:
                raise Unavailable("the HCL report does not carry the report data written",
                                  expected=report_data.hex(),
                                  actual=(user_data_of(report) or b"").hex() or "none")
            time.sleep(0.1)

    def _quote(self, report_data: bytes) -> tuple[bytes, bytes, dict[int, bytes]]:
        def body(esys: Any, loaded: list[Any]) -> tuple[bytes, bytes, dict[int, bytes]]:
            del loaded  # the AK is persistent: nothing to flush
            from tpm2_pytss.constants import TPM2_ALG  # noqa: PLC0415
            from tpm2_pytss.types import (  # noqa: PLC0415
                TPM2B_DATA,
                TPML_PCR_SELECTION,
                TPMT_SIG_SCHEME,
            )

            ak = esys.tr_from_tpmpublic(AK_HANDLE)
            counter, values = self._tpm.pcr_values(esys)
            attest, signature = esys.quote(
                ak, TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in PCRS)),
                TPM2B_DATA(report_data), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            if self._tpm.pcr_values(esys)[0] != counter:
                raise Unavailable("PCRs changed while quoting; try again")
            if int(signature.sigAlg) != int(TPM2_ALG.RSASSA):
                raise Malformed("the vTPM AK does not sign RSASSA", expected="RSASSA-SHA256",
                                actual=str(signature.sigAlg))
            return (bytes(attest.attestationData),
                    bytes(signature.signature.rsassa.sig.buffer), values)
        return self._tpm.run("TPM2_Quote with the vTPM AK", body)

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """Trustee v1 evidence whose user-data and quote extraData are ``report_data``."""
        check_report_data(report_data)
        self._write_report_data(report_data)
        if self._after_write is not None:
            self._after_write()
        report = self._bound_report(report_data)
        hcl = parse_hcl_report(report)
        self._platform = PLATFORMS[hcl.report_type]
        message, signature, pcrs = self._quote(report_data)
        document: dict[str, object] = {
            "version": 1,
            "tpm_quote": {"signature": signature.hex(), "message": message.hex(),
                          "pcrs": [pcrs[i].hex() for i in PCRS]},
            "hcl_report": base64.urlsafe_b64encode(report).rstrip(b"=").decode()}
        if hcl.report_type == REPORT_TYPE_SNP:
            document["vcek"] = self._vcek().decode()
        else:
            document["td_quote"] = base64.urlsafe_b64encode(
                self._td_quote(hcl.tdreport)).rstrip(b"=").decode()
        raw = json.dumps(document).encode()
        arm = evidence_pb2.AzureVtpmEvidence(evidence=raw)
        if hcl.report_type == REPORT_TYPE_SNP:
            return evidence_pb2.Evidence(az_snp_vtpm=arm)
        return evidence_pb2.Evidence(az_tdx_vtpm=arm)
