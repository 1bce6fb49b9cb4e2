"""The verifier's gRPC service: Appraise evidence, return a signed EAR token or a typed denial.

Invariants:
- Fail closed: a request is answered with a token only when the evidence verified, carried the
  expected report_data, and passed every requested appraisal policy. Every typed error is
  returned via ``keybroker.rpc_errors.abort`` with its category and detail (the broker is the
  only client); any unexpected exception is logged and answered UNAVAILABLE.
- A request must name at least one policy and every named policy must be loaded; an empty or
  unknown policy list is MALFORMED, never a vacuous pass.
- Requests are size-bounded (transport limit and explicit field checks).
- Evidence kinds snp, tdx and sgx are dispatched to ``SnpVerifier`` / ``DcapVerifier`` and
  judged by the decision engine (``verifier.decision.appraise``: typed platform checks,
  workload identity, reference values, CEL conditions, TCB early warning); every requested
  policy must be for the evidence's platform (else MALFORMED naming both, before any
  verification).
- One request is judged against one state: the policies in force and the reference-value
  snapshot are read once (an attribute read, no I/O) and every token names each policy as
  name@version with its digest, so a policy applied mid-request cannot mix versions. Denials
  name the policy version in their reason.
- Every appraised request (claims, workload claims, init-data, each policy's decision) is
  recorded for dry runs through a background writer that never blocks the RPC; nothing is
  recorded when ``record_days`` is 0.
  TDX evidence with a CCEL or runtime log is only appraised after both replayed to the quoted
  RTMRs (``td_event_claims``; EVENT_LOG otherwise). DCAP quotes are verified with missing CRLs
  reported as claims; each policy's ``allow_missing_crl`` decides (COLLATERAL_STALE otherwise).
- Trust stores, collateral and the result key are loaded once at start-up; the
  ``SnpVerifier`` and ``DcapVerifier`` (and their caches) live as long as the servicer.
  Policies and reference values come from the state database (config files seed it) and are
  reloaded whole when ``keybroker admin`` changes them (``keybroker.reload``).
- Logs carry the request id and the SHA-256 of the evidence, never the evidence itself.
- Started with the insecure switch, a loud warning is logged and every token says
  ``keybroker.insecure = true``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from keybroker.errors import BindingMismatch, KeybrokerError, Malformed, Unavailable, error_for
from keybroker.policy_store import PolicyStore
from keybroker.reload import Watched
from keybroker.rpc_errors import abort
from keybroker.v1 import verifier_pb2, verifier_pb2_grpc
from verifier.claims_view import PlatformClaims
from verifier.collateral.cache import CollateralStore
from verifier.config import VerifierConfig, ensure_secure, load_intel_roots
from verifier.dcap.verify import DcapVerifier
from verifier.decision import appraise_claims, evidence_workload
from verifier.eventlog.measured import CcelCache, td_event_claims
from verifier.policy.compile import PLATFORM_SGX, PLATFORM_SNP, PLATFORM_TDX, AppraisalPolicy
from verifier.policy.state import PolicyState, load_state, read_policy_files, seed_policies
from verifier.records import AppraisalRecord, RecordStore, RecordWriter
from verifier.reference.store import ReferenceStore
from verifier.result import ResultSigner
from verifier.snp.appraisal import Appraisal
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier
from verifier.workload import WorkloadClaims

logger = logging.getLogger(__name__)

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
REPORT_DATA_SIZE = 64
MAX_NONCE_BYTES = 256
MAX_REQUEST_ID_CHARS = 128
MAX_POLICIES = 32
MAX_INIT_DATA_BYTES = 0xFFFF
SHUTDOWN_GRACE_SECONDS = 5.0

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (timezone-aware UTC)."""
    return datetime.now(UTC)


def load_policies(paths: Sequence[Path]) -> dict[str, AppraisalPolicy]:
    """Compile policy files keyed by name (duplicate names refused); see ``policy_state``."""
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


def _check_binding(report_data: bytes, expected: bytes) -> None:
    if report_data != expected:
        raise BindingMismatch("report_data does not match the challenge binding",
                              rule="binding.report_data", expected=expected.hex(),
                              actual=report_data.hex())


_PLATFORM_FOR_KIND = {"snp": PLATFORM_SNP, "tdx": PLATFORM_TDX, "sgx": PLATFORM_SGX}


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
        snp: SnpVerifier,
        signer: ResultSigner,
        insecure: bool,
        policies: Mapping[str, AppraisalPolicy] | None = None,
        state: Callable[[], PolicyState] | None = None,
        records: RecordWriter | None = None,
        dcap: DcapVerifier | None = None,
        max_request_bytes: int = 1 << 20,
        clock: Clock = utc_now,
    ) -> None:
        fixed = PolicyState.static(policies or {})
        self._state: Callable[[], PolicyState] = state if state is not None else fixed.itself
        self._records = records
        self._snp = snp
        self._dcap = dcap
        self._ccel_cache = CcelCache()
        self._signer = signer
        self._insecure = insecure
        self._max_request_bytes = max_request_bytes
        self._clock = clock
        self.watched: Watched[PolicyState] | None = None

    def start_background(self, poll_seconds: float) -> None:
        """Start watching the state database for applied policies and reference values."""
        if self.watched is not None:
            self.watched.start(poll_seconds)

    async def close(self) -> None:
        """Stop watching and flush the recorded appraisals."""
        if self.watched is not None:
            await self.watched.stop()
        if self._records is not None:
            await asyncio.to_thread(self._records.close)

    @staticmethod
    def _policy(state: PolicyState, name: str) -> AppraisalPolicy:
        policy = state.policies.get(name)
        if policy is None:
            raise Malformed("unknown policy", rule="request.policy_ids",
                            expected="one of " + ", ".join(sorted(state.policies)), actual=name)
        return policy

    def _dcap_verifier(self, kind: str) -> DcapVerifier:
        if self._dcap is None:
            raise Malformed(f"{kind.upper()} evidence is not configured on this verifier",
                            rule="request.evidence", expected="snp", actual=kind)
        return self._dcap

    def _claims(self, request: verifier_pb2.AppraiseRequest, kind: str,
                now: datetime) -> PlatformClaims:
        """Verify the evidence (signatures, chain, collateral; TDX logs replayed)."""
        claims: PlatformClaims
        if kind == "tdx":
            evidence = request.evidence.tdx
            # Missing CRLs are reported as claims; each policy's allow_missing_crl decides.
            tdx = self._dcap_verifier("tdx").verify_tdx(evidence.quote, at=now,
                                                        allow_missing_crl=True)
            _check_binding(tdx.report_data, request.expected_report_data)
            if evidence.ccel_data or evidence.ccel_table or evidence.runtime_log:
                events = td_event_claims(tdx.rtmrs, ccel_table=evidence.ccel_table or None,
                                         ccel_data=evidence.ccel_data or None,
                                         runtime_log=evidence.runtime_log or None,
                                         cache=self._ccel_cache)
                tdx = dataclasses.replace(tdx, events=events)
            claims = tdx
        elif kind == "sgx":
            claims = self._dcap_verifier("sgx").verify_sgx(request.evidence.sgx.quote, at=now,
                                                           allow_missing_crl=True)
        else:
            evidence_snp = request.evidence.snp
            claims = self._snp.verify(evidence_snp.report, evidence_snp.cert_table, at=now)
        _check_binding(claims.report_data, request.expected_report_data)
        return claims

    def _judge(self, request: verifier_pb2.AppraiseRequest, *, state: PolicyState,
               policies: Sequence[AppraisalPolicy], claims: PlatformClaims, platform: str,
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
        kind = request.evidence.WhichOneof("kind")
        if kind not in _PLATFORM_FOR_KIND:
            raise Malformed("evidence type missing or not supported", rule="request.evidence",
                            expected=" | ".join(_PLATFORM_FOR_KIND), actual=kind or "none")
        platform = _PLATFORM_FOR_KIND[kind]
        for policy in policies:
            if policy.platform != platform:
                raise Malformed(f"policy {policy.policy_id} is for platform {policy.platform}, "
                                f"but the evidence is {platform}", rule="request.policy_ids",
                                expected=f"a {platform} policy",
                                actual=f"{policy.name}: {policy.platform}")
        now = self._clock()
        claims = self._claims(request, kind, now)
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
        request_id = request.request_id[:MAX_REQUEST_ID_CHARS]
        digest = hashlib.sha256(request.evidence.SerializeToString(deterministic=True)).hexdigest()
        try:
            token = self.appraise(request, digest)
        except KeybrokerError as err:
            logger.info("appraisal denied request_id=%s evidence_sha256=%s %s", request_id,
                        digest, err)
            await abort(context, err, request_id, with_detail=True)
        except Exception:
            logger.exception("appraisal failed unexpectedly request_id=%s evidence_sha256=%s",
                             request_id, digest)
            await abort(context, Unavailable("internal verifier error"), request_id,
                        with_detail=True)
        logger.info("appraisal affirmed request_id=%s evidence_sha256=%s policies=%s",
                    request_id, digest, ",".join(dict.fromkeys(request.policy_ids)))
        return verifier_pb2.AppraiseResponse(result_token=token)


def build_servicer(
    config: VerifierConfig, *, insecure: bool, clock: Clock = utc_now
) -> VerifierServicer:
    """Load trust anchors, collateral, policies and the result key once (start-up)."""
    ensure_secure(config, insecure=insecure)
    if insecure:
        logger.warning(
            "INSECURE: verifier started with --insecure-simulator; simulator test roots are "
            "trusted and every result token carries keybroker.insecure=true. NEVER USE IN "
            "PRODUCTION.")
    try:
        trust = AmdTrustStore.pinned()
        if config.simulator_roots:
            trust = trust.with_simulator_roots(list(config.simulator_roots))
        intel_roots = load_intel_roots(config)
        collateral = CollateralStore.load(list(config.collateral))
    except OSError as exc:
        raise Malformed(f"{config.source}: cannot read trust anchors or collateral",
                        rule="config.collateral", expected="readable files and directories",
                        actual=str(exc)) from None
    signer = ResultSigner.load(config.result_key, audience=config.audience,
                               ttl_seconds=config.result_ttl_seconds)
    policy_store = PolicyStore(config.state_db)
    reference_store = ReferenceStore(config.state_db)
    seed_policies(policy_store, config.policies, clock())
    compiled: dict[tuple[str, int, str], AppraisalPolicy] = {}
    watched = Watched("verifier policies and reference values",
                      lambda: (policy_store.generation(), reference_store.generation()),
                      lambda: load_state(policy_store, reference_store, compiled))
    records = (RecordWriter(RecordStore(config.state_db,
                                        retention=timedelta(days=config.record_days)))
               if config.record_days > 0 else None)
    logger.info("verifier policies in force=%s result_alg=%s kid=%s record_days=%d",
                ",".join(p.policy_id for p in watched.current.policies.values()),
                signer.alg, signer.kid, config.record_days)
    servicer = VerifierServicer(snp=SnpVerifier(trust, collateral),
                                dcap=DcapVerifier(collateral, simulator_roots=intel_roots),
                                state=lambda: watched.current, records=records, signer=signer,
                                insecure=insecure, max_request_bytes=config.max_request_bytes,
                                clock=clock)
    servicer.watched = watched
    return servicer


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise Malformed("invalid listen address", rule="config.listen", expected="HOST:PORT",
                        actual=listen)
    return host, int(port)


class VerifierServer:
    """A started grpc.aio server with the Verifier, health and reflection services."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                 host: str, port: int) -> None:
        self._server = server
        self._health = health_servicer
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``HOST:PORT`` with the real port (also when listening on port 0)."""
        return f"{self.host}:{self.port}"

    @classmethod
    async def start(
        cls, servicer: VerifierServicer, listen: str, *, max_request_bytes: int = 1 << 20
    ) -> VerifierServer:
        """Bind ``listen`` (port 0 picks a free port), register services, start serving."""
        host, port = _split_listen(listen)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 1 << 20),
        ])
        verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise Unavailable("cannot bind listen address", rule="config.listen",
                              expected="a free address", actual=listen)
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return cls(server, health_servicer, host, bound)

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_SECONDS) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish within ``grace`` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def wait_for_termination(self) -> None:
        """Block until the server has stopped."""
        await self._server.wait_for_termination()


async def serve(
    config: VerifierConfig,
    *,
    insecure: bool,
    on_ready: Callable[[str], None],
    clock: Clock = utc_now,
) -> None:
    """Run the verifier until SIGTERM/SIGINT, then shut down gracefully."""
    servicer = build_servicer(config, insecure=insecure, clock=clock)
    server = await VerifierServer.start(servicer, config.listen,
                                        max_request_bytes=config.max_request_bytes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servicer.start_background(config.policy_poll_seconds)
    logger.info("verifier serving on %s", server.address)
    on_ready(server.address)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        logger.info("verifier shutting down")
        await server.stop()
        await servicer.close()
