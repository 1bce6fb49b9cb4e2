"""The verifier's gRPC service: Appraise evidence, return a signed EAR token or a typed denial.

Invariants:
- Fail closed: a request is answered with a token only when the evidence verified, carried the
  expected report_data, and passed every requested appraisal policy. Every typed error is
  returned via ``keybroker.rpc_errors.abort`` with its category and detail (the broker is the
  only client); any unexpected exception is logged and answered UNAVAILABLE.
- A request must name at least one policy and every named policy must be loaded; an empty or
  unknown policy list is MALFORMED, never a vacuous pass.
- Requests are size-bounded (transport limit and explicit field checks).
- The evidence kind (the ``Evidence`` oneof arm) finds its platform and its family's verifier
  through the registry (``verifier.registry``); the claims are judged by the decision engine
  (``verifier.policy.decision``: typed platform checks, workload identity, reference values, CEL
  conditions, TCB early warning); every requested policy must be for the evidence's platform
  (else MALFORMED naming both, before any verification).
- One request is judged against one state: the policies in force and the reference-value
  snapshot are read once (an attribute read, no I/O) and every token names each policy as
  name@version with its digest, so a policy applied mid-request cannot mix versions. Denials
  name the policy version in their reason.
- Every appraised request (claims, workload claims, init-data, each policy's decision) is
  recorded for dry runs through a background writer that never blocks the RPC; nothing is
  recorded when ``record_days`` is 0.
- Each family's verifier (trust stores, caches) is opened at start-up and again, swapped in
  whole, when the collateral store changes (``use_collateral``). Policies and reference values
  come from the state database (config files seed it) and are reloaded whole when ``keybroker
  admin`` changes them (``keybroker.reload``).
- With ``clients`` set (mutual TLS), a call whose channel has no verified client certificate,
  or one whose names are not among ``clients`` (when non-empty), is refused before any work
  (PERMISSION_DENIED, no detail to the caller).
- Logs carry the request id and the SHA-256 of the evidence, never the evidence itself.
- Started with the insecure switch, every token says ``keybroker.insecure = true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from keybroker.errors import Category, KeybrokerError, Malformed, Unavailable, error_for
from keybroker.health import HealthMonitor
from keybroker.logs import REQUEST_ID_METADATA, request_scope
from keybroker.reload import Watched
from keybroker.rpc_errors import abort, metadata_value
from keybroker.tls import require_peer
from keybroker.tracing import Tracing
from keybroker.v1 import evidence_pb2, verifier_pb2, verifier_pb2_grpc
from verifier import registry
from verifier.collateral.cache import CollateralStore
from verifier.policy.decision import appraise_claims, evidence_workload
from verifier.policy.model import AppraisalPolicy
from verifier.policy.state import PolicyState, read_policy_files
from verifier.records import AppraisalRecord, RecordWriter
from verifier.result import ResultSigner
from verifier.tee import Claims, EchoesRequest, Enrolling, EvidenceVerifier, Tee, check_binding
from verifier.verdict import Appraisal
from verifier.workers import AppraisalWorkers
from verifier.workload import WorkloadClaims

logger = logging.getLogger(__name__)

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
REPORT_DATA_SIZE = 64
MAX_NONCE_BYTES = 256
MAX_REQUEST_ID_CHARS = 128
MAX_POLICIES = 32
MAX_INIT_DATA_BYTES = 0xFFFF

Clock = Callable[[], datetime]
_R = TypeVar("_R")


def utc_now() -> datetime:
    """The real clock (timezone-aware UTC)."""
    return datetime.now(UTC)


def load_policies(paths: Sequence[Path]) -> dict[str, AppraisalPolicy]:
    """Compile policy files keyed by name (duplicate names refused; ``verifier.policy.state``)."""
    return read_policy_files(paths)


def _check_request(request: verifier_pb2.AppraiseRequest, max_bytes: int) -> list[str]:
    """Field bounds; returns the requested policy names (de-duplicated, in order)."""
    size = request.ByteSize()
    if size > max_bytes:
        raise Malformed("request too large", rule="request.size", expected=f"<= {max_bytes}",
                        actual=str(size))
    if len(request.expected_report_data) != REPORT_DATA_SIZE:
        raise Malformed("expected_report_data must be 64 bytes", rule="request.report_data",
                        expected=str(REPORT_DATA_SIZE),
                        actual=str(len(request.expected_report_data)))
    if not 0 < len(request.nonce) <= MAX_NONCE_BYTES:
        raise Malformed("nonce missing or too long", rule="request.nonce",
                        expected=f"1..{MAX_NONCE_BYTES} bytes", actual=str(len(request.nonce)))
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        raise Malformed("request_id too long", rule="request.request_id",
                        expected=f"<= {MAX_REQUEST_ID_CHARS}", actual=str(len(request.request_id)))
    if len(request.init_data) > MAX_INIT_DATA_BYTES:
        raise Malformed("init_data too long", rule="request.init_data",
                        expected=f"<= {MAX_INIT_DATA_BYTES}", actual=str(len(request.init_data)))
    names = list(dict.fromkeys(request.policy_ids))
    if not names:
        raise Malformed("no appraisal policy requested", rule="request.policy_ids",
                        expected=">= 1 policy id", actual="none")
    if len(names) > MAX_POLICIES:
        raise Malformed("too many policies requested", rule="request.policy_ids",
                        expected=f"<= {MAX_POLICIES}", actual=str(len(names)))
    return names


class Recorder(Protocol):
    """Where appraisal records go: the background writer, or a worker's capture."""

    def submit(self, record: AppraisalRecord) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Verdict:
    """What one request's evidence proved and how each requested policy judged it."""

    report_data: bytes
    appraisals: list[Appraisal]
    annotated: Mapping[str, object]
    workload: Mapping[str, object]


def _denied(policy: AppraisalPolicy, err: KeybrokerError) -> KeybrokerError:
    """``err`` with the policy id (name@version) in force named in its reason."""
    return error_for(err.category, f"policy {policy.policy_id}: {err.reason}", rule=err.rule,
                     expected=err.expected, actual=err.actual)


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    """Appraise: verify, bind, appraise each requested policy, record, sign one EAR token."""

    def __init__(
        self,
        *,
        verifiers: Mapping[str, EvidenceVerifier],
        signer: ResultSigner,
        insecure: bool,
        policies: Mapping[str, AppraisalPolicy] | None = None,
        state: Callable[[], PolicyState] | None = None,
        records: Recorder | None = None,
        max_request_bytes: int = 1 << 20,
        clock: Clock = utc_now,
        clients: frozenset[str] | None = None,
    ) -> None:
        fixed = PolicyState.static(policies or {})
        self._state: Callable[[], PolicyState] = state if state is not None else fixed.itself
        self._records = records
        self.record_writer = records if isinstance(records, RecordWriter) else None
        self._verifiers = dict(verifiers)
        self._signer = signer
        self._insecure = insecure
        self._max_request_bytes = max_request_bytes
        self._clock = clock
        self._clients = clients
        self.watched: Watched[PolicyState] | None = None
        self.monitor: HealthMonitor | None = None  # set by the server (status replies)
        self.collateral: CollateralStore = CollateralStore.empty()  # for status and metrics
        # (tee, seconds, category or "" when affirmed) after every appraisal (metrics).
        self.observer: Callable[[str, float, str], None] | None = None
        self.tracing = Tracing()  # spans (off unless configured; set by the server)
        self.workers: AppraisalWorkers | None = None  # None: one appraisal thread
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="appraise")

    def use_collateral(self, collateral: CollateralStore,
                       verifiers: Mapping[str, EvidenceVerifier]) -> None:
        """Serve with ``verifiers`` built on ``collateral`` (one attribute swap)."""
        self._verifiers, self.collateral = dict(verifiers), collateral

    def start_background(self, poll_seconds: float) -> None:
        """Start watching the state database for applied policies and reference values."""
        if self.watched is not None:
            self.watched.start(poll_seconds)

    async def close(self) -> None:
        """Stop watching and flush the recorded appraisals."""
        if self.watched is not None:
            await self.watched.stop()
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self.workers is not None:
            await asyncio.to_thread(self.workers.close)
        if self._records is not None:
            await asyncio.to_thread(self._records.close)

    def submit_record(self, record: object) -> None:
        """Queue an appraisal record made elsewhere (a worker process) for writing."""
        if self._records is not None and isinstance(record, AppraisalRecord):
            self._records.submit(record)

    @staticmethod
    def _policy(state: PolicyState, name: str) -> AppraisalPolicy:
        policy = state.policies.get(name)
        if policy is None:
            raise Malformed("unknown policy", rule="request.policy_ids",
                            expected="one of " + ", ".join(sorted(state.policies)), actual=name)
        return policy

    def _tee(self, request: verifier_pb2.AppraiseRequest) -> Tee:
        """The platform of the request's evidence kind (one this verifier has opened)."""
        kind = request.evidence.WhichOneof("kind")
        tee = registry.by_kind(kind) if kind else None
        if tee is None:
            raise Malformed("evidence type missing or not supported", rule="request.evidence",
                            expected=" | ".join(registry.evidence_kinds()),
                            actual=kind or "none")
        return tee

    def _claims(self, request: verifier_pb2.AppraiseRequest, tee: Tee, now: datetime) -> Claims:
        """Verify the evidence (signatures, chain, collateral; event logs replayed) and its
        binding to the challenge."""
        verifier = self._verifiers.get(tee.evidence_kind)
        if verifier is None:
            raise Malformed(f"{tee.evidence_kind.upper()} evidence is not configured on this "
                            "verifier", rule="request.evidence",
                            expected=" | ".join(self._verifiers), actual=tee.evidence_kind)
        claims = verifier.verify(request.evidence, at=now,
                                 expected_report_data=request.expected_report_data)
        check_binding(claims.report_data, request.expected_report_data)
        if isinstance(claims, EchoesRequest):
            claims.check_request(nonce=request.nonce, public_key=request.public_key)
        return claims

    def _judge(self, request: verifier_pb2.AppraiseRequest, *, state: PolicyState,
               policies: Sequence[AppraisalPolicy], claims: Claims, platform: str,
               evidence_digest: str, now: datetime) -> _Verdict:
        """Every requested policy judges the claims; each decision is recorded; the first
        denial (in request order) is raised, with the policy id in its reason."""
        appraisals: list[Appraisal] = []
        decisions: dict[str, dict[str, str]] = {}
        denial: KeybrokerError | None = None
        workload: WorkloadClaims | None = None
        unbound: KeybrokerError | None = None
        try:
            # Policy-independent: bind and parse the init-data once for every policy.
            workload = evidence_workload(claims, request.init_data)
        except KeybrokerError as err:
            unbound = err
        for policy in policies:
            try:
                if unbound is not None:
                    raise unbound
                assert workload is not None
                appraisal = appraise_claims(
                    policy, claims, workload, at=now, references=state.references,
                    allow_insecure_root=self._insecure)
            except KeybrokerError as err:
                decisions[policy.name] = {
                    "policy_id": policy.policy_id, "status": "deny",
                    "category": err.category.value, "rule": err.rule, "reason": err.detail}
                denial = denial or _denied(policy, err)
                continue
            appraisals.append(appraisal)
            decisions[policy.name] = {"policy_id": policy.policy_id, "status": appraisal.status}
        annotated = claims.as_dict()
        workload_doc = workload.as_dict() if workload is not None else {}
        if self._records is not None:
            self._records.submit(AppraisalRecord(
                at=now, request_id=request.request_id, platform=platform,
                evidence_digest=evidence_digest, evidence=annotated,
                workload=workload.as_dict() if workload is not None else None,
                init_data=bytes(request.init_data), insecure=self._insecure,
                decisions=decisions))
        if denial is not None:
            raise denial
        return _Verdict(claims.report_data, appraisals, annotated, workload_doc)

    def appraise(self, request: verifier_pb2.AppraiseRequest, evidence_digest: str) -> str:
        """The whole appraisal; returns the token or raises a typed error."""
        names = _check_request(request, self._max_request_bytes)
        state = self._state()
        policies = [self._policy(state, name) for name in names]
        tee = self._tee(request)
        platform = tee.platform
        for policy in policies:
            if policy.platform != platform:
                raise Malformed(f"policy {policy.policy_id} is for platform {policy.platform}, "
                                f"but the evidence is {platform}", rule="request.policy_ids",
                                expected=f"a {platform} policy",
                                actual=f"{policy.name}: {policy.platform}")
        now = self._clock()
        claims = self._claims(request, tee, now)
        verdict = self._judge(request, state=state, policies=policies, claims=claims,
                              platform=platform, evidence_digest=evidence_digest, now=now)
        return self._signer.issue(
            now=now, nonce=request.nonce, request_id=request.request_id,
            evidence_digest=evidence_digest, report_data=verdict.report_data,
            insecure=self._insecure, appraisals=verdict.appraisals,
            annotated_evidence=verdict.annotated, workload=verdict.workload,
        )

    async def Appraise(
        self,
        request: verifier_pb2.AppraiseRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> verifier_pb2.AppraiseResponse:
        """gRPC entry point: token or typed denial (fail closed)."""
        request_id = (request.request_id
                      or metadata_value(context, REQUEST_ID_METADATA))[:MAX_REQUEST_ID_CHARS]
        with request_scope(request_id), self.tracing.span(
                "keybroker.v1.Verifier/Appraise", kind="server",
                parent=tuple(context.invocation_metadata() or ()),
                attributes={"keybroker.request_id": request_id,
                            "keybroker.tee": request.evidence.WhichOneof("kind") or "none"}):
            token = await self._appraise_scoped(request, context, request_id)
        return verifier_pb2.AppraiseResponse(result_token=token)

    def _observe(self, tee: str, start: float, category: str) -> None:
        if self.observer is not None:
            self.observer(tee, time.perf_counter() - start, category)

    def _enrolling(self) -> Enrolling:
        found = next((v for v in self._verifiers.values() if isinstance(v, Enrolling)), None)
        if found is None:
            raise Malformed("no evidence family of this verifier enrols attestation keys",
                            rule="request.enrolment", expected="TPM evidence configured",
                            actual=" | ".join(self._verifiers) or "none")
        return found

    async def _enrolment(self, context: grpc.aio.ServicerContext[object, object],
                         request_id: str, step: Callable[[Enrolling], _R]) -> _R:
        """One enrolment step for an authorised peer, off the event loop; typed errors sent."""
        with request_scope(request_id[:MAX_REQUEST_ID_CHARS]):
            try:
                if self._clients is not None:
                    require_peer(context, self._clients, service="the verifier")
                answer = await asyncio.to_thread(step, self._enrolling())
            except KeybrokerError as err:
                logger.info("tpm enrolment refused: %s", err)
                await abort(context, err, request_id, with_detail=True)
            except Exception:
                logger.exception("tpm enrolment failed unexpectedly")
                await abort(context, Unavailable("internal verifier error"), request_id,
                            with_detail=True)
            logger.info("tpm enrolment step done")
            return answer

    async def EnrolTpm(self, request: evidence_pb2.EnrolTpmRequest,
                       context: grpc.aio.ServicerContext[object, object]
                       ) -> evidence_pb2.EnrolTpmChallenge:
        """gRPC entry point: TPM AK enrolment, step 1 (the credential to activate)."""
        return await self._enrolment(context, request.request_id,
                                     lambda family: family.enrol(request))

    async def ActivateTpm(self, request: evidence_pb2.ActivateTpmRequest,
                          context: grpc.aio.ServicerContext[object, object]
                          ) -> evidence_pb2.TpmEnrolment:
        """gRPC entry point: TPM AK enrolment, step 2 (the activated credential)."""
        return await self._enrolment(context, request.request_id,
                                     lambda family: family.activate(request))

    async def _appraise_scoped(self, request: verifier_pb2.AppraiseRequest,
                               context: grpc.aio.ServicerContext[object, object],
                               request_id: str) -> str:
        """Appraise inside the request's log scope: the token, or the typed denial sent."""
        if self._clients is not None:
            try:
                require_peer(context, self._clients, service="the verifier")
            except KeybrokerError as err:
                logger.warning("appraisal refused peer=%s: %s", context.peer(), err)
                await abort(context, err, request_id, with_detail=False)
        digest = hashlib.sha256(request.evidence.SerializeToString(deterministic=True)).hexdigest()
        tee, start = request.evidence.WhichOneof("kind") or "none", time.perf_counter()
        try:
            if self.workers is not None:
                token = await self.workers.appraise(request, digest)
            else:  # one thread: the event loop (health, other RPCs) stays responsive
                token = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self.appraise, request, digest)
        except KeybrokerError as err:
            self._observe(tee, start, err.category.value)
            logger.info("appraisal denied evidence_sha256=%s %s", digest, err)
            await abort(context, err, request_id, with_detail=True)
        except Exception:
            self._observe(tee, start, Category.UNAVAILABLE.value)
            logger.exception("appraisal failed unexpectedly evidence_sha256=%s", digest)
            await abort(context, Unavailable("internal verifier error"), request_id,
                        with_detail=True)
        self._observe(tee, start, "")
        logger.info("appraisal affirmed evidence_sha256=%s policies=%s", digest,
                    ",".join(dict.fromkeys(request.policy_ids)))
        return token

