"""Azure confidential VM vTPM evidence (evidence-formats.md section 5.11): the HCL report binds
the runtime claims to the hardware report, the runtime claims carry the vTPM's AK (HCLAkPub),
and that AK signs the TPM quote over the PCRs.

Invariants:
- The hardware report is verified by the caller's SNP or TDX verifier (``hardware``: the
  existing AMD chain with the VCEK from the evidence or the cache, or the DCAP path for the TD
  quote); this module does not import another evidence family. The HCL report type must be
  the platform asked for (type confusion is MALFORMED, hostile-evidence row 8).
- Binding (row 54): report_data[0:32] = SHA-256(runtime claims bytes) and report_data[32:64]
  all zero, else BINDING; for TDX the TD quote's REPORTDATA must equal the TDREPORT's.
- The AK is HCLAkPub from the bound runtime claims only (an RSA JWK with ``sign``), never
  from the quote; the quote (signature, extraData against ``nonce``, pcrDigest over the 24
  SHA-256 PCRs) is checked by the caller's TPM quote verifier with that key.
- ``user-data``, when present, must be 64 bytes of hex; when ``user_data`` is expected it must
  equal it (BINDING).
- ``AzureVmVerifier`` is the registry's entry point: it verifies the hardware part through the
  peer family's verifier it was given (never by importing a family) and requires the vTPM
  quote's extraData to be the challenge binding (FRESHNESS otherwise).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.errors import BindingMismatch, Malformed, PlatformPolicyViolation
from keybroker.evidence.hcl_report import REPORT_TYPE_SNP, REPORT_TYPE_TDX, parse_hcl_report
from keybroker.evidence.snp_certs import GUID_VCEK, build_cert_table
from keybroker.evidence.tcg_log import ALG_SHA256
from keybroker.evidence.tpm_public import public_from_key
from keybroker.evidence.tpm_quote import ALG_RSASSA, TpmSignature, build_signature
from keybroker.v1 import evidence_pb2
from verifier.azure.claims import CLAIMS_TYPES, PLATFORM_AZ_SNP, PLATFORM_AZ_TDX, AzureVmClaims
from verifier.azure.evidence import AzureEvidence, parse_azure_evidence
from verifier.tee import Claims, EvidenceVerifier
from verifier.tpm_quote import VerifiedQuote, verify_quote

PLATFORMS = {"az-snp-vtpm": REPORT_TYPE_SNP, "az-tdx-vtpm": REPORT_TYPE_TDX}
AK_KID = "HCLAkPub"


@dataclass(frozen=True)
class RuntimeClaims:
    """The bound runtime claims: the AK, the VM configuration and the user data."""

    ak: rsa.RSAPublicKey
    vm_configuration: dict[str, Any]
    user_data: bytes | None


@dataclass(frozen=True)
class AzureClaims:
    """Claims of verified Azure vTPM evidence."""

    platform: str
    hardware: Any  # the SNP or TDX claims
    runtime: RuntimeClaims
    tpm: Any  # the TPM quote claims

    @property
    def report_data(self) -> bytes:
        """The binding a relying party checks: the TPM quote's extraData."""
        return bytes(self.tpm.report_data)

    @property
    def insecure_root(self) -> bool:
        """Whether the hardware report chained to a simulator root."""
        return bool(getattr(self.hardware, "insecure_root", False))

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (``platform`` = az-snp-vtpm | az-tdx-vtpm)."""
        return {"platform": self.platform, "hardware": self.hardware.as_dict(),
                "vm_configuration": self.runtime.vm_configuration,
                "user_data": self.runtime.user_data.hex() if self.runtime.user_data else None,
                "tpm": self.tpm.as_dict()}


def _b64url_int(value: Any, name: str) -> int:
    if not isinstance(value, str):
        raise Malformed(f"HCLAkPub {name} is not base64url", actual=type(value).__name__)
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (binascii.Error, ValueError):
        raise Malformed(f"HCLAkPub {name} is not base64url", actual=value[:40]) from None


def runtime_claims(raw: bytes) -> RuntimeClaims:
    """The AK, vm-configuration and user-data of the runtime-claims JSON."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise Malformed("HCL runtime claims are not JSON", actual=f"{len(raw)} bytes") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise Malformed("HCL runtime claims lack keys", expected='{"keys": [...]}',
                        actual=type(keys).__name__)
    found = [k for k in keys if isinstance(k, dict) and k.get("kid") == AK_KID]
    if len(found) != 1 or found[0].get("kty") != "RSA" or "sign" not in found[0].get(
            "key_ops", ["sign"]):
        raise Malformed("HCL runtime claims must hold exactly one RSA signing HCLAkPub",
                        expected="one RSA JWK with kid HCLAkPub", actual=f"{len(found)} found")
    n, e = _b64url_int(found[0].get("n"), "n"), _b64url_int(found[0].get("e"), "e")
    if n.bit_length() < 2048 or e < 3:
        raise Malformed("HCLAkPub is too small", expected="RSA >= 2048 bits",
                        actual=f"{n.bit_length()} bits")
    config = doc.get("vm-configuration", {})
    if not isinstance(config, dict):
        raise Malformed("vm-configuration is not an object", actual=type(config).__name__)
    user_data = doc.get("user-data")
    data: bytes | None = None
    if user_data is not None:
        try:
            data = bytes.fromhex(user_data)
        except (TypeError, ValueError):
            raise Malformed("user-data is not hex", actual=str(user_data)[:40]) from None
        if len(data) != 64:
            raise Malformed("user-data is not 64 bytes", actual=f"{len(data)} bytes")
    return RuntimeClaims(rsa.RSAPublicNumbers(e, n).public_key(), config, data)


def verify_azure(evidence: AzureEvidence, platform: str, *,
                 hardware: Callable[[bytes, AzureEvidence], Any],
                 quote: Callable[[AzureEvidence, rsa.RSAPublicKey], Any],
                 user_data: bytes | None = None) -> AzureClaims:
    """Verify ``evidence`` as ``platform`` (module invariants). ``hardware`` verifies the
    hardware report (SNP report bytes, or the TDREPORT with the evidence's TD quote) and
    returns its claims; ``quote`` verifies the TPM quote with the AK and returns its claims."""
    hcl = parse_hcl_report(evidence.hcl_report)
    if hcl.report_type != PLATFORMS[platform]:
        raise Malformed("HCL report is for another platform", rule="azure.report-type",
                        expected=f"report type {PLATFORMS[platform]} ({platform})",
                        actual=f"report type {hcl.report_type}")
    digest = hashlib.sha256(hcl.runtime_claims).digest()
    if hcl.report_data[:32] != digest or any(hcl.report_data[32:]):
        raise BindingMismatch("the hardware report does not bind the runtime claims",
                              rule="azure.runtime-claims",
                              expected=(digest + bytes(32)).hex(), actual=hcl.report_data.hex())
    hw = hardware(hcl.snp_report if hcl.report_type == REPORT_TYPE_SNP else hcl.tdreport,
                  evidence)
    if hcl.report_type == REPORT_TYPE_TDX and bytes(hw.report_data) != hcl.report_data:
        raise BindingMismatch("the TD quote is not the TDREPORT's", rule="azure.td-quote",
                              expected=hcl.report_data.hex(),
                              actual=bytes(hw.report_data).hex())
    runtime = runtime_claims(hcl.runtime_claims)
    if user_data is not None and runtime.user_data != user_data:
        raise BindingMismatch("user-data is not the expected binding", rule="azure.user-data",
                              expected=user_data.hex(),
                              actual=runtime.user_data.hex() if runtime.user_data else "absent")
    return AzureClaims(platform, hw, runtime, quote(evidence, runtime.ak))


def vcek_table(evidence: AzureEvidence) -> bytes:
    """A GHCB certificate table holding the evidence's VCEK (PEM or DER), or empty."""
    if evidence.vcek is None:
        return b""
    try:
        cert = (x509.load_pem_x509_certificate(evidence.vcek)
                if evidence.vcek.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(evidence.vcek))
    except ValueError as exc:
        raise Malformed("the evidence's VCEK is not a certificate", rule="azure.vcek",
                        expected="PEM or DER X.509", actual=str(exc)[:120]) from None
    return build_cert_table([(GUID_VCEK, cert.public_bytes(Encoding.DER))])


class AzureVmVerifier:
    """The registry's verifier of one Azure platform: the hardware report through the peer
    family's verifier (SEV-SNP with the evidence's VCEK as its certificate table, or the TD
    quote through DCAP), the vTPM quote under the bound AK with extraData = the binding."""

    def __init__(self, platform: str, hardware: EvidenceVerifier | None) -> None:
        self._platform = platform
        self._hardware = hardware

    def _hardware_claims(self, report: bytes, evidence: AzureEvidence, at: datetime) -> Claims:
        if self._hardware is None:
            raise Malformed(f"{self._platform} needs the hardware family's verifier",
                            rule="azure.hardware", expected="SEV-SNP and DCAP families",
                            actual="not opened")
        if self._platform == PLATFORM_AZ_SNP:
            message = evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(
                report=report, cert_table=vcek_table(evidence)))
            claims = self._hardware.verify(message, at=at, expected_report_data=b"")
            vmpl = claims.as_dict().get("vmpl")
            if vmpl != 0:  # the paravisor's vTPM attests the whole VM only from VMPL 0
                raise PlatformPolicyViolation("the SNP report is not from VMPL 0",
                                              rule="azure.vmpl", expected="0", actual=str(vmpl))
            return claims
        if evidence.td_quote is None:
            raise Malformed("az-tdx-vtpm evidence without a td_quote", rule="azure.td-quote",
                            expected="the TD quote", actual="absent")
        expected = parse_hcl_report(evidence.hcl_report).report_data
        return self._hardware.verify(
            evidence_pb2.Evidence(tdx=evidence_pb2.TdxEvidence(quote=evidence.td_quote)),
            at=at, expected_report_data=expected)

    def verify(self, raw: bytes, *, at: datetime, binding: bytes) -> AzureVmClaims:
        """Typed claims of the evidence document ``raw`` (module invariants)."""
        evidence = parse_azure_evidence(raw)

        def quote(ev: AzureEvidence, key: rsa.RSAPublicKey) -> VerifiedQuote:
            signature = build_signature(TpmSignature(ALG_RSASSA, ALG_SHA256, ev.tpm_signature))
            return verify_quote(ev.tpm_message, signature, public_from_key(key),
                                {ALG_SHA256: dict(enumerate(ev.pcrs))}, nonce=binding)

        result = verify_azure(evidence, self._platform, quote=quote,
                              hardware=lambda report, ev: self._hardware_claims(report, ev, at))
        hardware: dict[str, Any] = result.hardware.as_dict()
        tdx = self._platform == PLATFORM_AZ_TDX
        tcb: dict[str, Any] = hardware.get("tcb") or {} if tdx else {}
        verified: VerifiedQuote = result.tpm
        return CLAIMS_TYPES[self._platform](
            platform=self._platform, hardware=hardware,
            measurement=bytes.fromhex(str(hardware["mr_td" if tdx else "measurement"])),
            debug=bool(hardware["td_attributes" if tdx else "policy"]["debug"]),
            tcb_status=str(tcb["status"]) if tdx else None,
            collateral_warnings=tuple(str(w) for w in (
                tcb if tdx else hardware).get("collateral_warnings", ())),
            vm_configuration=result.runtime.vm_configuration,
            user_data=result.runtime.user_data or b"",
            pcrs=verified.pcrs.get(ALG_SHA256, {}), extra_data=verified.extra_data,
            reset_count=verified.attest.reset_count,
            restart_count=verified.attest.restart_count,
            insecure=result.hardware.insecure_root)
