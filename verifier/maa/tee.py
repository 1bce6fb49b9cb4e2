"""The Microsoft Azure Attestation entry of the verifier's registry: one platform, ``maa``,
whose evidence is the ``maa`` arm (a token MAA issued after verifying the hardware itself).

Invariants:
- Trust comes only from configuration: ``maa_instances`` (issuer URL and JWKS file); with none
  configured every token is TOKEN_INVALID. There is no simulator root: ``insecure_root`` is
  always false.
- The binding is the runtime data the attested party gave MAA (``MaaClaims.report_data``).
- A token binds no init-data and carries no runtime log or TCB collateral of ours: no init-data
  register, nothing measured at run time, no TCB debt.
- The platform identity is the issuing instance and the attested identity (the enclave's
  MRSIGNER for SGX, the VM id for confidential VMs when MAA reports one).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from keybroker.document_reader import DocumentReader
from keybroker.v1 import evidence_pb2
from verifier.maa.appraisal import appraise_maa
from verifier.maa.claims import PLATFORM_MAA, MaaClaims
from verifier.maa.policy import IDENTITY_CLAIMS, compile_maa
from verifier.maa.token import MaaInstance, load_jwks
from verifier.maa.verify import MaaVerifier
from verifier.maa.view import maa_claims_from_dict, sample_maa_claims
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


def _maa(claims: Claims) -> MaaClaims:
    return own_claims(claims, MaaClaims, PLATFORM_MAA)


def _appraise(claims: Claims, policy: PolicyRef, at: datetime,
              allow_insecure_root: bool) -> Appraisal:
    del at, allow_insecure_root  # token times were checked at verification; no test roots
    return appraise_maa(_maa(claims), policy)


def _compile(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_maa(section, identity_referenced)


def platform_identity(evidence: Mapping[str, object]) -> str:
    """``maa:<issuer>:<MRSIGNER or VM id>`` from MAA claims' ``as_dict``."""
    sgx = evidence.get("sgx")
    tee = evidence.get("isolation_tee")
    who = (sgx.get("mrsigner") if isinstance(sgx, dict)
           else tee.get("x-ms-azurevm-vmid") if isinstance(tee, dict) else None)
    return f"maa:{evidence.get('issuer')}:{who}"


class MaaEvidence:
    """The ``maa`` arm, verified by one ``MaaVerifier``."""

    def __init__(self, verifier: MaaVerifier) -> None:
        self._verifier = verifier

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        del expected_report_data  # the service compares the token's runtime data
        return self._verifier.verify(evidence.maa, at=at)


def open_verifier(setup: VerifierSetup) -> EvidenceVerifier:
    """The configured MAA instances (their JWKS files read once)."""
    instances = [MaaInstance(load_jwks(i.jwks.read_bytes()), i.issuer)
                 for i in setup.config.maa_instances]
    return MaaEvidence(MaaVerifier(instances))


MAA = Tee(
    platform=PLATFORM_MAA,
    section="maa",
    evidence_kind="maa",
    display_name="Microsoft Azure Attestation",
    claims_type=MaaClaims,
    identity_claims=IDENTITY_CLAIMS,
    runtime_claims=frozenset(),
    compile_section=_compile,
    appraise=_appraise,
    claims_from_dict=maa_claims_from_dict,
    sample_claims=sample_maa_claims,
    init_data_register=None,
    init_data_value=no_init_data,
    measured_images=no_runtime_log,
    early_warning_keys=frozenset(),
    compile_early_warning=no_early_warning,
    tcb_debt=no_tcb_debt,
    platform_identity=platform_identity,
)

FAMILY = EvidenceFamily(name="maa", tees=(MAA,), open_verifier=open_verifier)
