"""The TPM 2.0 entry of the verifier's registry: one platform, ``tpm``, whose evidence is the
``tpm`` arm (a TPM2_Quote with its AK, PCR values and optional boot and IMA logs).

Invariants:
- Trust anchors come only from configuration: ``tpm_ek_roots`` (enrolment by credential
  activation), ``tpm_ak_roots`` (AK certificates) and ``simulator_tpm_roots`` (swtpm's CA,
  insecure; the service refuses it without the insecure switch before this runs). With none
  configured no AK is trusted and every quote is CHAIN_UNTRUSTED.
- The enrolled AKs live in the verifier's state database (``verifier.tpm.enrolment``).
- Init-data is bound by PCR 8 (SHA-256 bank), which the host extends once with the SHA-256 of
  the init-data before the workload starts; a quote that does not cover PCR 8 binds nothing
  (any presented init-data is then refused). There is no runtime image log and no TCB:
  nothing is measured at run time and the TCB debt is empty.
- The platform identity is the AK's Name (the enrolled or certified key).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from keybroker.document_reader import DocumentReader
from keybroker.v1 import evidence_pb2
from verifier.init_data import PCR8
from verifier.tee import (
    Claims,
    EvidenceFamily,
    EvidenceVerifier,
    Tee,
    VerifierSetup,
    no_early_warning,
    no_runtime_log,
    no_tcb_debt,
    own_claims,
)
from verifier.tpm.appraisal import appraise_tpm
from verifier.tpm.claims import PLATFORM_TPM, TpmClaims
from verifier.tpm.enrolment import EkRoots, TpmEnrolments
from verifier.tpm.policy import IDENTITY_CLAIMS, compile_tpm
from verifier.tpm.verify import TpmVerifier
from verifier.tpm.view import sample_tpm_claims, tpm_claims_from_dict
from verifier.verdict import Appraisal, PolicyRef


def _tpm(claims: Claims) -> TpmClaims:
    return own_claims(claims, TpmClaims, PLATFORM_TPM)


def _appraise(claims: Claims, policy: PolicyRef, at: datetime,
              allow_insecure_root: bool) -> Appraisal:
    del at  # TPM rules do not depend on the time (certificate validity already did)
    return appraise_tpm(_tpm(claims), policy, allow_insecure_root=allow_insecure_root)


def _compile(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_tpm(section, identity_referenced)


def _pcr8(claims: Claims) -> bytes:
    return _tpm(claims).pcrs.get("sha256", {}).get(8, b"")


def platform_identity(evidence: Mapping[str, object]) -> str:
    """``ak:<Name hex>`` from TPM claims' ``as_dict``."""
    return f"ak:{evidence.get('ak_name')}"


class TpmEvidence:
    """The ``tpm`` arm, verified by one ``TpmVerifier``; also answers AK enrolment."""

    def __init__(self, verifier: TpmVerifier, enrolments: TpmEnrolments) -> None:
        self._verifier = verifier
        self._enrolments = enrolments

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        return self._verifier.verify(evidence.tpm, at=at,
                                     expected_report_data=expected_report_data)

    def enrol(self, request: evidence_pb2.EnrolTpmRequest) -> evidence_pb2.EnrolTpmChallenge:
        """Step 1 of enrolment (``TpmEnrolments.begin``)."""
        pending = self._enrolments.begin(request.ek_certificate, list(request.ek_intermediates),
                                         request.ak_public)
        return evidence_pb2.EnrolTpmChallenge(
            enrolment_id=pending.enrolment_id, credential_blob=pending.blob,
            encrypted_secret=pending.encrypted_secret,
            expires_at_unix=int(pending.expires_at.astimezone(UTC).timestamp()))

    def activate(self, request: evidence_pb2.ActivateTpmRequest) -> evidence_pb2.TpmEnrolment:
        """Step 2 of enrolment (``TpmEnrolments.activate``)."""
        enrolled = self._enrolments.activate(request.enrolment_id, request.credential)
        return evidence_pb2.TpmEnrolment(ak_name=enrolled.ak_name,
                                         ek_fingerprint=enrolled.ek_fingerprint)


def open_verifier(setup: VerifierSetup) -> EvidenceVerifier:
    """The configured EK/AK roots and the enrolled AKs of the state database."""
    config = setup.config
    ek = EkRoots.load(config.tpm_ek_roots, config.simulator_tpm_roots)
    ak = EkRoots.load(config.tpm_ak_roots, config.simulator_tpm_roots)
    enrolments = TpmEnrolments(config.state_db, ek)
    return TpmEvidence(TpmVerifier(ak.trusted, ak.simulator, enrolments), enrolments)


TPM = Tee(
    platform=PLATFORM_TPM,
    section="tpm",
    evidence_kind="tpm",
    display_name="TPM 2.0",
    claims_type=TpmClaims,
    identity_claims=IDENTITY_CLAIMS,
    runtime_claims=frozenset(),
    compile_section=_compile,
    appraise=_appraise,
    claims_from_dict=tpm_claims_from_dict,
    sample_claims=sample_tpm_claims,
    init_data_register=PCR8,
    init_data_value=_pcr8,
    measured_images=no_runtime_log,
    early_warning_keys=frozenset(),
    compile_early_warning=no_early_warning,
    tcb_debt=no_tcb_debt,
    platform_identity=platform_identity,
)

FAMILY = EvidenceFamily(name="tpm", tees=(TPM,), open_verifier=open_verifier)
