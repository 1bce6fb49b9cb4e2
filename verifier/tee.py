"""The shape every evidence family presents to the verifier: one ``EvidenceFamily`` per folder
(``verifier/snp/``, ``verifier/dcap/``, ...), holding one ``Tee`` per platform it verifies.

A family's folder builds its entry from its own modules (verify, claims, policy, appraisal);
``verifier.registry`` lists the entries; the service, the policy compiler, the claims view
and the decision engine find a platform only through the registry, never through an ``if``
chain over platform names.

Invariants:
- Every hook takes and returns neutral types (``Claims``, ``PolicyRef``, ``Appraisal``,
  ``DocumentReader``, plain mappings), so nothing above a family imports the family's types
  to dispatch. A hook given claims of another platform raises ``Malformed`` (``own_claims``).
- ``Tee.platform`` is the string in claims (``evidence.platform``) and policies
  (``platform:``); ``section`` is the policy's section key; ``evidence_kind`` is the arm of
  the wire contract's ``Evidence`` oneof. All three are unique across the registry.
- A family's ``open_verifier`` is called once at start-up; the verifier it returns holds the
  family's trust anchors and caches for the life of the process, and does no I/O per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from keybroker.document_reader import DocumentReader
from keybroker.errors import BindingMismatch, Malformed
from keybroker.v1 import evidence_pb2
from verifier.collateral.cache import CollateralStore
from verifier.config import VerifierConfig
from verifier.init_data import InitDataRegister
from verifier.verdict import Appraisal, PolicyRef

_C = TypeVar("_C")


class Claims(Protocol):
    """Typed claims of verified evidence, of any platform."""

    @property
    def report_data(self) -> bytes: ...

    @property
    def insecure_root(self) -> bool: ...

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims; ``platform`` names the platform."""
        ...


@dataclass(frozen=True)
class TcbEarlyWarning:
    """The next TCB floor a policy announces (reported as TCB debt; never changes a decision):
    a component floor (SEV-SNP) and/or a TCB date (Intel)."""

    snp_min_tcb: Mapping[str, int] | None = None
    min_tcb_date: datetime | None = None


@dataclass(frozen=True)
class Tee:
    """One platform: how its policy section compiles, how its claims are appraised, mapped
    and sampled, and where it binds init-data."""

    platform: str  # "sev-snp" | "tdx" | "sgx" | ...
    section: str  # the appraisal policy's section key: "snp" | "tdx" | "sgx"
    evidence_kind: str  # the Evidence oneof arm: "snp" | "tdx" | "sgx"
    display_name: str  # for operators: "SEV-SNP"
    claims_type: type[Claims]
    # Claims whose reference binding may stand in for the section's launch-identity rule.
    identity_claims: frozenset[str]
    # Claims that pin the runtime (a binding of one lifts "approved boot" to "approved").
    runtime_claims: frozenset[str]
    # (section reader, identity covered by a reference binding) -> the compiled section.
    compile_section: Callable[[DocumentReader, bool], object]
    # (claims, policy, at, allow_insecure_root) -> the typed platform appraisal.
    appraise: Callable[[Claims, PolicyRef, datetime, bool], Appraisal]
    claims_from_dict: Callable[[Mapping[str, object]], Claims]
    sample_claims: Callable[[], Claims]
    # The register that binds init-data (None: the platform cannot bind it) and its value.
    init_data_register: InitDataRegister | None
    init_data_value: Callable[[Claims], bytes]
    # The register a replayed runtime log extended and the images it measured.
    measured_images: Callable[[Claims], tuple[str | None, tuple[str, ...]]]
    # The tcb_early_warning keys this platform accepts, how they compile, the debt they show.
    early_warning_keys: frozenset[str]
    compile_early_warning: Callable[[DocumentReader], TcbEarlyWarning]
    tcb_debt: Callable[[Claims, TcbEarlyWarning], tuple[str, ...]]
    # A stable platform identity from the claims' as_dict (chip id, FMSPC, ...).
    platform_identity: Callable[[Mapping[str, object]], str]


class EvidenceVerifier(Protocol):
    """Verifies one family's evidence: signatures and chain to typed claims."""

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        """Typed claims of ``evidence`` (an arm of this family), or a typed error; a family
        that does more work after the report data is known checks the binding first."""
        ...


@runtime_checkable
class EchoesRequest(Protocol):
    """Claims of evidence that carries parts of the request besides the binding (Nitro's
    nonce and public_key): the service has them checked against the request."""

    def check_request(self, *, nonce: bytes, public_key: bytes) -> None:
        """A typed error unless the evidence carries exactly this nonce and public key."""
        ...


@runtime_checkable
class Enrolling(Protocol):
    """A family verifier that enrols attestation keys first (TPM credential activation); the
    service answers the enrolment RPCs through it."""

    def enrol(self, request: evidence_pb2.EnrolTpmRequest) -> evidence_pb2.EnrolTpmChallenge:
        """Step 1: the credential for the TPM to activate, or a typed error."""
        ...

    def activate(self, request: evidence_pb2.ActivateTpmRequest) -> evidence_pb2.TpmEnrolment:
        """Step 2: the enrolled AK, or a typed error."""
        ...


@dataclass(frozen=True)
class VerifierSetup:
    """What a family's verifier is built from at start-up. ``peers`` are the verifiers of the
    families opened before this one, by evidence kind: a family whose evidence embeds another
    family's (Azure's HCL report holds an SEV-SNP report or a TDREPORT) verifies that part
    through them, with the neutral ``Evidence`` message, never by importing the family."""

    config: VerifierConfig
    collateral: CollateralStore
    peers: Mapping[str, EvidenceVerifier] = field(default_factory=dict)


@dataclass(frozen=True)
class EvidenceFamily:
    """One folder of the verifier: its platforms and how its verifier is opened."""

    name: str  # "snp" | "dcap" | ...
    tees: tuple[Tee, ...]
    open_verifier: Callable[[VerifierSetup], EvidenceVerifier]


def own_claims(claims: Claims, kind: type[_C], platform: str) -> _C:
    """``claims`` as ``kind``; ``Malformed`` naming both platforms for claims of another."""
    if not isinstance(claims, kind):
        actual = claims.as_dict().get("platform")
        raise Malformed(f"{platform} rules were given claims of another platform",
                        rule="claims.platform", expected=platform, actual=str(actual))
    return claims


def no_runtime_log(claims: Claims) -> tuple[str | None, tuple[str, ...]]:
    """``Tee.measured_images`` of a platform whose evidence carries no runtime log."""
    del claims
    return None, ()


def no_early_warning(warning: DocumentReader) -> TcbEarlyWarning:
    """``Tee.compile_early_warning`` of a platform without TCB collateral of ours."""
    del warning
    return TcbEarlyWarning()


def no_tcb_debt(claims: Claims, warning: TcbEarlyWarning) -> tuple[str, ...]:
    """``Tee.tcb_debt`` of a platform without a TCB to fall behind on."""
    del claims, warning
    return ()


def no_init_data(claims: Claims) -> bytes:
    """``Tee.init_data_value`` of a platform that cannot bind init-data."""
    del claims
    return b""


def check_binding(report_data: bytes, expected: bytes) -> None:
    """``BindingMismatch`` unless the evidence's report data is the challenge binding."""
    if report_data != expected:
        raise BindingMismatch("report_data does not match the challenge binding",
                              rule="binding.report_data", expected=expected.hex(),
                              actual=report_data.hex())
