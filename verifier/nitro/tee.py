"""The AWS Nitro Enclaves entry of the verifier's registry: one platform, ``nitro``, whose
evidence is the ``nitro`` arm (the NSM's attestation document).

Invariants:
- Trust comes only from configuration: the pinned AWS Nitro Enclaves root G1 (or the
  ``nitro_roots`` an operator names instead), and the ``simulator_nitro_roots`` only behind
  the insecure switch (``verifier.config``). The
  timestamp window is ``nitro_max_age_seconds`` / ``nitro_max_skew_seconds``.
- The binding is the document's user_data; its nonce and public_key must also be the
  request's (``NitroClaims.check_request``, called by the service).
- Init-data is bound by PCR 16: the enclave's init extends it once from zero with the SHA-384
  of the init-data document and locks it. No runtime log, no TCB collateral, no TCB debt.
- The platform identity is the NSM module id (instance and enclave).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from keybroker.document_reader import DocumentReader
from keybroker.v1 import evidence_pb2
from verifier.init_data import NITRO_PCR16
from verifier.nitro.appraisal import appraise_nitro
from verifier.nitro.chain import configured_roots, simulator_roots
from verifier.nitro.claims import PLATFORM_NITRO, NitroClaims
from verifier.nitro.policy import IDENTITY_CLAIMS, compile_nitro
from verifier.nitro.verify import NitroVerifier
from verifier.nitro.view import nitro_claims_from_dict, sample_nitro_claims
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
from verifier.verdict import Appraisal, PolicyRef


def _nitro(claims: Claims) -> NitroClaims:
    return own_claims(claims, NitroClaims, PLATFORM_NITRO)


def _appraise(claims: Claims, policy: PolicyRef, at: datetime,
              allow_insecure_root: bool) -> Appraisal:
    del at  # the chain and the timestamp were checked at verification time
    return appraise_nitro(_nitro(claims), policy, allow_insecure_root=allow_insecure_root)


def _compile(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_nitro(section, identity_referenced)


def _pcr16(claims: Claims) -> bytes:
    return _nitro(claims).pcrs.get(16, b"")


def platform_identity(evidence: Mapping[str, object]) -> str:
    """``nitro:<module id>`` from Nitro claims' ``as_dict``."""
    return f"nitro:{evidence.get('module_id')}"


class NitroEvidence:
    """The ``nitro`` arm, verified by one ``NitroVerifier``."""

    def __init__(self, verifier: NitroVerifier) -> None:
        self._verifier = verifier

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        del expected_report_data  # the service compares user_data, nonce and public_key
        return self._verifier.verify(evidence.nitro.document, at=at)


def open_verifier(setup: VerifierSetup) -> EvidenceVerifier:
    """The configured roots (and simulator roots), the configured window."""
    config = setup.config
    roots = (*configured_roots(config.nitro_roots),
             *simulator_roots(config.simulator_nitro_roots))
    return NitroEvidence(NitroVerifier(
        roots, max_age=timedelta(seconds=config.nitro_max_age_seconds),
        max_skew=timedelta(seconds=config.nitro_max_skew_seconds)))


NITRO = Tee(
    platform=PLATFORM_NITRO,
    section="nitro",
    evidence_kind="nitro",
    display_name="AWS Nitro Enclaves",
    claims_type=NitroClaims,
    identity_claims=IDENTITY_CLAIMS,
    runtime_claims=frozenset(),
    compile_section=_compile,
    appraise=_appraise,
    claims_from_dict=nitro_claims_from_dict,
    sample_claims=sample_nitro_claims,
    init_data_register=NITRO_PCR16,
    init_data_value=_pcr16,
    measured_images=no_runtime_log,
    early_warning_keys=frozenset(),
    compile_early_warning=no_early_warning,
    tcb_debt=no_tcb_debt,
    platform_identity=platform_identity,
)

FAMILY = EvidenceFamily(name="nitro", tees=(NITRO,), open_verifier=open_verifier)
