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
  appraised by ``appraise_snp`` / ``appraise_tdx`` / ``appraise_sgx``; every requested policy
  must be for the evidence's platform (else MALFORMED naming both, before any verification).
  TDX evidence with a CCEL or runtime log is only appraised after both replayed to the quoted
  RTMRs (``td_event_claims``; EVENT_LOG otherwise). DCAP quotes are verified with missing CRLs
  reported as claims; each policy's ``allow_missing_crl`` decides (COLLATERAL_STALE otherwise).
- Trust stores, collateral, policies and the result key are loaded once at start-up; the
  ``SnpVerifier`` and ``DcapVerifier`` (and their caches) live as long as the servicer.
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
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from keybroker.errors import BindingMismatch, KeybrokerError, Malformed, Unavailable
from keybroker.rpc_errors import abort
from keybroker.v1 import verifier_pb2, verifier_pb2_grpc
from verifier.appraisal import Appraisal, appraise_snp
from verifier.collateral import CollateralStore
from verifier.config import VerifierConfig, ensure_secure, load_intel_roots
from verifier.dcap.appraisal import appraise_sgx, appraise_tdx
from verifier.dcap.verify import DcapVerifier
from verifier.eventlog.measured import CcelCache, td_event_claims
from verifier.policy import (
    PLATFORM_SGX,
    PLATFORM_SNP,
    PLATFORM_TDX,
    AppraisalPolicy,
    load_policy,
)
from verifier.result import ResultSigner
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

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
    """Load every policy file, keyed by policy name; a duplicate name is refused."""
    out: dict[str, AppraisalPolicy] = {}
    for path in paths:
        policy = load_policy(path)
        if policy.name in out:
            raise Malformed(f"{path}: duplicate appraisal policy name", rule="config.policies",
                            expected="unique policy names",
                            actual=f"{policy.name} also in {out[policy.name].source}")
        out[policy.name] = policy
    return out


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


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    """Appraise: verify, bind, appraise each requested policy, sign one EAR token."""

    def __init__(
        self,
        *,
        snp: SnpVerifier,
        policies: Mapping[str, AppraisalPolicy],
        signer: ResultSigner,
        insecure: bool,
        dcap: DcapVerifier | None = None,
        max_request_bytes: int = 1 << 20,
        clock: Clock = utc_now,
    ) -> None:
        self._snp = snp
        self._dcap = dcap
        self._ccel_cache = CcelCache()
        self._policies = dict(policies)
        self._signer = signer
        self._insecure = insecure
        self._max_request_bytes = max_request_bytes
        self._clock = clock

    def _policy(self, name: str) -> AppraisalPolicy:
        policy = self._policies.get(name)
        if policy is None:
            raise Malformed("unknown policy", rule="request.policy_ids",
                            expected="one of " + ", ".join(sorted(self._policies)), actual=name)
        return policy

    def _dcap_verifier(self, kind: str) -> DcapVerifier:
        if self._dcap is None:
            raise Malformed(f"{kind.upper()} evidence is not configured on this verifier",
                            rule="request.evidence", expected="snp", actual=kind)
        return self._dcap

    def _snp_verdict(self, request: verifier_pb2.AppraiseRequest,
                     policies: Sequence[AppraisalPolicy], now: datetime) -> _Verdict:
        evidence = request.evidence.snp
        claims = self._snp.verify(evidence.report, evidence.cert_table, at=now)
        _check_binding(claims.report_data, request.expected_report_data)
        return _Verdict(claims.report_data, [
            appraise_snp(claims, policy, init_data=request.init_data,
                         allow_insecure_root=self._insecure)
            for policy in policies
        ], claims.as_dict())

    def _tdx_verdict(self, request: verifier_pb2.AppraiseRequest,
                     policies: Sequence[AppraisalPolicy], now: datetime) -> _Verdict:
        evidence = request.evidence.tdx
        # Missing CRLs are reported as claims; each policy's allow_missing_crl decides.
        claims = self._dcap_verifier("tdx").verify_tdx(evidence.quote, at=now,
                                                       allow_missing_crl=True)
        _check_binding(claims.report_data, request.expected_report_data)
        if evidence.ccel_data or evidence.ccel_table or evidence.runtime_log:
            events = td_event_claims(claims.rtmrs, ccel_table=evidence.ccel_table or None,
                                     ccel_data=evidence.ccel_data or None,
                                     runtime_log=evidence.runtime_log or None,
                                     cache=self._ccel_cache)
            claims = dataclasses.replace(claims, events=events)
        return _Verdict(claims.report_data, [
            appraise_tdx(claims, policy, at=now, init_data=request.init_data,
                         allow_insecure_root=self._insecure)
            for policy in policies
        ], claims.as_dict())

    def _sgx_verdict(self, request: verifier_pb2.AppraiseRequest,
                     policies: Sequence[AppraisalPolicy], now: datetime) -> _Verdict:
        claims = self._dcap_verifier("sgx").verify_sgx(request.evidence.sgx.quote, at=now,
                                                       allow_missing_crl=True)
        _check_binding(claims.report_data, request.expected_report_data)
        return _Verdict(claims.report_data, [
            appraise_sgx(claims, policy, at=now, init_data=request.init_data,
                         allow_insecure_root=self._insecure)
            for policy in policies
        ], claims.as_dict())

    def appraise(self, request: verifier_pb2.AppraiseRequest, evidence_digest: str) -> str:
        """The whole appraisal; returns the token or raises a typed error."""
        names = _check_request(request, self._max_request_bytes)
        policies = [self._policy(name) for name in names]
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
        if kind == "tdx":
            verdict = self._tdx_verdict(request, policies, now)
        elif kind == "sgx":
            verdict = self._sgx_verdict(request, policies, now)
        else:
            verdict = self._snp_verdict(request, policies, now)
        return self._signer.issue(
            now=now, nonce=request.nonce, request_id=request.request_id,
            evidence_digest=evidence_digest, report_data=verdict.report_data,
            insecure=self._insecure, appraisals=verdict.appraisals,
            annotated_evidence=verdict.annotated,
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
    policies = load_policies(config.policies)
    signer = ResultSigner.load(config.result_key, audience=config.audience,
                               ttl_seconds=config.result_ttl_seconds)
    logger.info("verifier loaded policies=%s result_alg=%s kid=%s",
                ",".join(f"{p.policy_id}" for p in policies.values()), signer.alg, signer.kid)
    return VerifierServicer(snp=SnpVerifier(trust, collateral),
                            dcap=DcapVerifier(collateral, simulator_roots=intel_roots),
                            policies=policies, signer=signer, insecure=insecure,
                            max_request_bytes=config.max_request_bytes, clock=clock)


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
    logger.info("verifier serving on %s", server.address)
    on_ready(server.address)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        logger.info("verifier shutting down")
        await server.stop()
