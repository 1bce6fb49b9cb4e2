"""The Azure confidential VM entries of the verifier's registry: two platforms,
``az-snp-vtpm`` and ``az-tdx-vtpm``, whose evidence is Trustee's vTPM JSON in the arms of the
same names (the HCL report with its hardware report, the vTPM quote, the VCEK or TD quote).

Invariants:
- The hardware report is verified by the SEV-SNP or DCAP family's verifier, handed over at
  start-up (``VerifierSetup.peers``: the registry opens those families first); this folder
  imports no other family. Their trust anchors (pinned roots, configured simulator roots) are
  therefore exactly theirs.
- The binding is the HCL runtime claims' user-data; the vTPM quote's extraData must be the
  binding too. Init-data is not bound (no register), no runtime log, no TCB early warning.
- The platform identity is the VM's unique id from the vm-configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from keybroker.document_reader import DocumentReader
from keybroker.v1 import evidence_pb2
from verifier.azure.appraisal import appraise_azure
from verifier.azure.claims import CLAIMS_TYPES, PLATFORM_AZ_SNP, PLATFORM_AZ_TDX, AzureVmClaims
from verifier.azure.policy import IDENTITY_CLAIMS, compile_azure
from verifier.azure.verify import AzureVmVerifier
from verifier.azure.view import azure_claims_from_dict, sample_azure_claims
from verifier.tee import (
    Claims,
    EvidenceFamily,
    EvidenceVerifier,
    Tee,
    VerifierSetup,
    no_early_warning,
    no_init_data,
    no_runtime_log,
    no_tcb_debt,
    own_claims,
)
from verifier.verdict import Appraisal, PolicyRef

_ARMS = {PLATFORM_AZ_SNP: "az_snp_vtpm", PLATFORM_AZ_TDX: "az_tdx_vtpm"}
_HARDWARE_KIND = {PLATFORM_AZ_SNP: "snp", PLATFORM_AZ_TDX: "tdx"}


def _appraise(claims: Claims, policy: PolicyRef, at: datetime,
              allow_insecure_root: bool) -> Appraisal:
    del at  # the hardware family checked validity at its verification time
    azure = own_claims(claims, AzureVmClaims, str(claims.as_dict().get("platform")))
    return appraise_azure(azure, policy, allow_insecure_root=allow_insecure_root)


def _compile(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_azure(section, identity_referenced)


def platform_identity(evidence: Mapping[str, object]) -> str:
    """``vm:<vmUniqueId>`` from Azure claims' ``as_dict``."""
    config = evidence.get("vm_configuration")
    return f"vm:{config.get('vmUniqueId') if isinstance(config, dict) else None}"


class AzureVtpmEvidence:
    """Both Azure arms, each verified by its platform's ``AzureVmVerifier``."""

    def __init__(self, verifiers: Mapping[str, AzureVmVerifier]) -> None:
        self._verifiers = verifiers

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        arm = str(evidence.WhichOneof("kind"))
        platform = next(p for p, name in _ARMS.items() if name == arm)
        document = getattr(evidence, arm).evidence
        return self._verifiers[platform].verify(document, at=at, binding=expected_report_data)


def open_verifier(setup: VerifierSetup) -> EvidenceVerifier:
    """One verifier per platform over the hardware families' verifiers."""
    return AzureVtpmEvidence({
        platform: AzureVmVerifier(platform, setup.peers.get(_HARDWARE_KIND[platform]))
        for platform in _ARMS})


def _tee(platform: str, display: str) -> Tee:
    return Tee(
        platform=platform, section=_ARMS[platform], evidence_kind=_ARMS[platform],
        display_name=display, claims_type=CLAIMS_TYPES[platform],
        identity_claims=IDENTITY_CLAIMS, runtime_claims=frozenset(), compile_section=_compile,
        appraise=_appraise, claims_from_dict=azure_claims_from_dict,
        sample_claims=lambda: sample_azure_claims(platform), init_data_register=None,
        init_data_value=no_init_data, measured_images=no_runtime_log,
        early_warning_keys=frozenset(), compile_early_warning=no_early_warning,
        tcb_debt=no_tcb_debt, platform_identity=platform_identity)


FAMILY = EvidenceFamily(name="azure", tees=(
    _tee(PLATFORM_AZ_SNP, "Azure CVM (SEV-SNP, vTPM)"),
    _tee(PLATFORM_AZ_TDX, "Azure CVM (TDX, vTPM)")), open_verifier=open_verifier)
