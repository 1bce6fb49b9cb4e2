"""The SEV-SNP entry of the verifier's registry: one platform, ``sev-snp``, whose evidence is
the ``snp`` arm (an attestation report and its GHCB certificate table).

Invariants:
- Trust anchors are the pinned AMD roots, plus the configured ``simulator_roots`` (insecure)
  only when the configuration names them; the service refuses those without the insecure
  switch before this runs (``verifier.config.ensure_secure``).
- Init-data is bound by HOST_DATA (SHA-256); SEV-SNP has no runtime log, so nothing is
  measured at run time and no claim pins the runtime beyond the launch MEASUREMENT.
- The platform identity is the chip (first 8 bytes of CHIP_ID) for VCEK-signed reports and
  the CSP for VLEK-signed ones (whose CHIP_ID is zero).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from keybroker.document_reader import DocumentReader
from keybroker.v1 import evidence_pb2
from verifier.init_data import HOST_DATA
from verifier.snp.appraisal import appraise_snp, tcb_debt
from verifier.snp.claims import PLATFORM_SNP, SnpClaims
from verifier.snp.policy import (
    EARLY_WARNING_KEY,
    IDENTITY_CLAIMS,
    compile_early_warning,
    compile_snp,
)
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier
from verifier.snp.view import sample_snp_claims, snp_claims_from_dict
from verifier.tee import (
    Claims,
    EvidenceFamily,
    EvidenceVerifier,
    TcbEarlyWarning,
    Tee,
    VerifierSetup,
    no_runtime_log,
    own_claims,
)
from verifier.verdict import Appraisal, PolicyRef


def _snp(claims: Claims) -> SnpClaims:
    return own_claims(claims, SnpClaims, PLATFORM_SNP)


def _appraise(claims: Claims, policy: PolicyRef, at: datetime,
              allow_insecure_root: bool) -> Appraisal:
    del at  # SEV-SNP rules do not depend on the time (the chain's validity already did)
    return appraise_snp(_snp(claims), policy, allow_insecure_root=allow_insecure_root)


def _compile(section: DocumentReader, identity_referenced: bool) -> object:
    return compile_snp(section, identity_referenced)


def _debt(claims: Claims, warning: TcbEarlyWarning) -> tuple[str, ...]:
    return tcb_debt(_snp(claims), warning)


def _host_data(claims: Claims) -> bytes:
    return _snp(claims).host_data


def platform_identity(evidence: Mapping[str, object]) -> str:
    """``chip:<16 hex>`` (VCEK) or ``csp:<id>`` (VLEK) from SNP claims' ``as_dict``."""
    chip = str(evidence.get("chip_id", ""))
    if chip.strip("0"):
        return f"chip:{chip[:16]}"
    return f"csp:{evidence.get('csp_id')}"


class SnpEvidence:
    """The ``snp`` arm: report + certificate table, verified by one ``SnpVerifier``."""

    def __init__(self, verifier: SnpVerifier) -> None:
        self._verifier = verifier

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        del expected_report_data  # nothing runs after the signature: the service checks it
        snp = evidence.snp
        # A missing CRL is reported in the claims; each policy's allow_missing_crl decides.
        return self._verifier.verify(snp.report, snp.cert_table, at=at, allow_missing_crl=True)


def open_verifier(setup: VerifierSetup) -> EvidenceVerifier:
    """The pinned AMD roots (plus configured simulator roots) over the collateral cache."""
    trust = AmdTrustStore.pinned()
    if setup.config.simulator_roots:
        trust = trust.with_simulator_roots(list(setup.config.simulator_roots))
    return SnpEvidence(SnpVerifier(trust, setup.collateral))


SNP = Tee(
    platform=PLATFORM_SNP,
    section="snp",
    evidence_kind="snp",
    display_name="SEV-SNP",
    claims_type=SnpClaims,
    identity_claims=IDENTITY_CLAIMS,
    runtime_claims=frozenset(),
    compile_section=_compile,
    appraise=_appraise,
    claims_from_dict=snp_claims_from_dict,
    sample_claims=sample_snp_claims,
    init_data_register=HOST_DATA,
    init_data_value=_host_data,
    measured_images=no_runtime_log,
    early_warning_keys=frozenset({EARLY_WARNING_KEY}),
    compile_early_warning=compile_early_warning,
    tcb_debt=_debt,
    platform_identity=platform_identity,
)

FAMILY = EvidenceFamily(name="snp", tees=(SNP,), open_verifier=open_verifier)
