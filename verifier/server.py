"""The verifier process: start-up wiring (trust anchors, collateral, each family's verifier,
policies, the result key), the gRPC server with health and reflection, and graceful shutdown.

Invariants:
- Start-up is fail closed: simulator anchors without the insecure switch, an unreadable
  anchor or collateral file, an unusable result key or a policy that does not compile refuse
  the start with a typed error naming the file; nothing is loaded lazily per request.
- Every family of the registry is opened once (``open_verifiers``), so the service can verify
  every evidence kind the registry lists; the verifiers live as long as the servicer.
- Started with the insecure switch, a loud warning is logged (and every token says so).
- The listening socket is mutual TLS (``keybroker.tls``); plaintext only with
  ``--insecure-plaintext``, on loopback, logged as INSECURE. SIGHUP re-reads the certificate
  files (they are also re-read when they change).
- Appraisals run in ``workers`` processes (``verifier.workers``; 0: one thread of this
  process); this process keeps the port, health, admin API and metrics responsive.
- Shutdown reports NOT_SERVING first, then lets in-flight RPCs finish within a grace period,
  then stops the policy watcher and the workers and flushes the recorded appraisals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from keybroker.admin_auth import Authenticator
from keybroker.admin_gate import AdminGate, admin_enabled, start_admin_server
from keybroker.audit_log import AuditLog
from keybroker.errors import Malformed, Unavailable
from keybroker.health import HealthMonitor, Probe, blocking
from keybroker.metrics import serve_metrics
from keybroker.policy_store import PolicyStore
from keybroker.reload import Watched
from keybroker.server_limits import MAX_CONCURRENT_RPCS, server_options
from keybroker.tls import ServerTls, TlsFiles, check_plaintext
from keybroker.tracing import start_tracing
from keybroker.v1 import admin_pb2_grpc, verifier_pb2_grpc
from verifier import registry
from verifier.admin import VerifierAdminServicer
from verifier.collateral.cache import CollateralStore
from verifier.collateral.freshness import freshness
from verifier.collateral.item import item_blobs
from verifier.collateral.item_store import CollateralItemStore
from verifier.collateral.refresher import Refresher
from verifier.config import VerifierConfig, ensure_secure
from verifier.fetch_on_miss import FetchOnMiss
from verifier.metrics import VerifierMetrics
from verifier.policy.model import AppraisalPolicy
from verifier.policy.state import PolicyState, load_state, seed_policies
from verifier.records import RecordStore, RecordWriter
from verifier.reference.store import ReferenceStore
from verifier.result import ResultSigner
from verifier.service import SERVICE_NAME, Clock, Recorder, VerifierServicer, utc_now
from verifier.tee import EvidenceVerifier, VerifierSetup
from verifier.vendors import VendorSources
from verifier.workers import AppraisalWorkers

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


def open_verifiers(setup: VerifierSetup) -> dict[str, EvidenceVerifier]:
    """Every family's verifier, keyed by the evidence kinds it verifies."""
    verifiers: dict[str, EvidenceVerifier] = {}
    for family in registry.FAMILIES:  # in registry order: a family sees those before it
        verifier = family.open_verifier(dataclasses.replace(setup, peers=dict(verifiers)))
        for tee in family.tees:
            verifiers[tee.evidence_kind] = verifier
    return verifiers


def build_servicer(
    config: VerifierConfig, *, insecure: bool, clock: Clock = utc_now,
    plaintext: bool = False, seed: bool = True, recorder: Recorder | None = None,
) -> VerifierServicer:
    """Load trust anchors, collateral, policies and the result key once (start-up). ``seed``
    applies the configured policy files to the state database (the front process only);
    ``recorder`` replaces the record writer (an appraisal worker's capture)."""
    ensure_secure(config, insecure=insecure)
    if insecure:
        logger.warning(
            "INSECURE: verifier started with --insecure-simulator; simulator test roots are "
            "trusted and every result token carries keybroker.insecure=true. NEVER USE IN "
            "PRODUCTION.")
    items = CollateralItemStore(config.state_db)
    collateral, verifiers = _collateral_state(config, items)
    miss = (FetchOnMiss(items, VendorSources.from_settings(config.fetch))
            if config.fetch.fetch_on_miss else None)
    signer = ResultSigner.load(config.result_key, audience=config.audience,
                               ttl_seconds=config.result_ttl_seconds)
    policy_store = PolicyStore(config.state_db)
    reference_store = ReferenceStore(config.state_db)
    if seed:
        seed_policies(policy_store, config.policies, clock())
    compiled: dict[tuple[str, int, str], AppraisalPolicy] = {}
    applied = [items.generation()]
    holder: list[VerifierServicer] = []

    def swap() -> Mapping[str, EvidenceVerifier]:
        """Serve with verifiers built on the collateral store as it is now."""
        applied[0] = items.generation()
        fresh_collateral, fresh = _collateral_state(config, items)
        holder[0].use_collateral(fresh_collateral, miss.wrap(fresh) if miss else fresh)
        return fresh

    def load() -> PolicyState:
        state = load_state(policy_store, reference_store, compiled)
        if holder and items.generation() != applied[0]:  # the collateral store changed
            swap()
        return state

    watched = Watched("verifier policies, reference values and collateral",
                      lambda: (policy_store.generation(), reference_store.generation(),
                               items.generation()), load)
    records = recorder or (RecordWriter(RecordStore(
        config.state_db, retention=timedelta(days=config.record_days)))
        if config.record_days > 0 else None)
    logger.info("verifier policies in force=%s result_alg=%s kid=%s record_days=%d",
                ",".join(p.policy_id for p in watched.current.policies.values()),
                signer.alg, signer.kid, config.record_days)
    servicer = VerifierServicer(verifiers=miss.wrap(verifiers) if miss else verifiers,
                                state=lambda: watched.current, records=records, signer=signer,
                                insecure=insecure, max_request_bytes=config.max_request_bytes,
                                clock=clock,
                                clients=None if plaintext else config.allowed_clients)
    servicer.watched = watched
    servicer.collateral = collateral
    holder.append(servicer)
    if miss is not None:
        logger.warning("fetch_on_miss is on: appraisals denied for missing collateral fetch it "
                       "from KDS %s / PCS %s", config.fetch.kds_url, config.fetch.pcs_url)
        miss.rebuild = swap
    return servicer


def collateral_refresher(config: VerifierConfig) -> Refresher | None:
    """The background refresher of the collateral store, or None when it is off."""
    fetch = config.fetch
    if fetch.refresh_seconds <= 0:
        return None
    logger.info("collateral refresh every %.0f s, %.0f h ahead of next updates (KDS %s, PCS %s)",
                fetch.refresh_seconds, fetch.refresh_ahead_hours, fetch.kds_url, fetch.pcs_url)
    return Refresher(CollateralItemStore(config.state_db),
                     VendorSources.from_settings(fetch).for_key,
                     ahead=timedelta(hours=fetch.refresh_ahead_hours))


def _collateral_state(config: VerifierConfig, items: CollateralItemStore
                      ) -> tuple[CollateralStore, dict[str, EvidenceVerifier]]:
    """The collateral cache (config files + the collateral store's items) and each family's
    verifier built on it."""
    try:
        collateral = CollateralStore.load(list(config.collateral), item_blobs(items.items()))
        for skipped in collateral.skipped:
            logger.warning("collateral file ignored: %s", skipped)
        return collateral, open_verifiers(VerifierSetup(config=config, collateral=collateral))
    except OSError as exc:
        raise Malformed(f"{config.source}: cannot read trust anchors or collateral",
                        rule="config.collateral", expected="readable files and directories",
                        actual=str(exc)) from None


async def start_verifier_admin(config: VerifierConfig, servicer: VerifierServicer,
                               plaintext: bool
                               ) -> tuple[grpc.aio.Server, ServerTls, AuditLog] | None:
    """The VerifierAdmin API on ``admin_listen`` (when enabled: principals configured, TLS);
    its calls are recorded in the verifier's own audit log (``audit_database``)."""
    if not admin_enabled("verifier", config.admin.listen, config.admins, plaintext=plaintext):
        return None
    assert config.tls is not None  # TLS is required unless plaintext (checked at start)
    tls = ServerTls(TlsFiles(config.tls.cert, config.tls.key, config.admin.client_ca),
                    what="verifier admin")
    audit = AuditLog(config.audit_database, clock=time.time)
    gate = AdminGate("verifier", Authenticator(config.admins, config.admin.jwt), audit)

    def in_force() -> Mapping[str, AppraisalPolicy]:
        return servicer.watched.current.policies if servicer.watched is not None else {}

    def live() -> dict[str, object]:
        now = datetime.now(UTC)
        monitor = servicer.monitor
        return {**(monitor.status_json() if monitor else {"serving": True}),
                "collateral": [f.as_dict(now) for f in freshness(servicer.collateral)]}

    admin = VerifierAdminServicer(gate, config, in_force, live)
    server, _ = await start_admin_server(
        lambda s: admin_pb2_grpc.add_VerifierAdminServicer_to_server(admin, s),
        config.admin.listen, tls)
    return server, tls, audit


def server_tls(config: VerifierConfig, *, plaintext: bool) -> ServerTls | None:
    """The verifier's mutual-TLS credentials, or None with the insecure plaintext flag
    (loopback only, logged loudly); a config without TLS files refuses to start otherwise."""
    if plaintext:
        check_plaintext(config.listen, flag="--insecure-plaintext")
        logger.warning("INSECURE: verifier listening WITHOUT TLS on %s (--insecure-plaintext); "
                       "no client is authenticated. NEVER USE IN PRODUCTION.", config.listen)
        return None
    if config.tls is None:
        raise Malformed(f"{config.source}: no TLS configured", rule="config.tls",
                        expected="tls_cert, tls_key and tls_client_ca (see `keybroker tls "
                                 "init`), or the --insecure-plaintext flag on loopback",
                        actual="absent")
    return ServerTls(config.tls, what="verifier")


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
        cls, servicer: VerifierServicer, listen: str, *, tls: ServerTls | None,
        max_request_bytes: int = 1 << 20, monitor: HealthMonitor | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> VerifierServer:
        """Bind ``listen`` (port 0 picks a free port), register services, start serving;
        ``tls`` None is plaintext (loopback only). With ``monitor`` the health status follows
        its probes (checked once before this returns); without, SERVING while running."""
        host, port = _split_listen(listen)
        server = grpc.aio.server(interceptors=list(interceptors),
                                 options=server_options(max_request_bytes, 1 << 20),
                                 maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
        verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if tls is None:
            check_plaintext(listen, flag="--insecure-plaintext")
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            bound = server.add_secure_port(f"{host}:{port}", tls.credentials())
        if bound == 0:
            raise Unavailable("cannot bind listen address", rule="config.listen",
                              expected="a free address", actual=listen)
        await server.start()
        if monitor is None:
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        else:
            monitor.attach(health_servicer)
            await monitor.check_once()
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
    plaintext: bool = False,
) -> None:
    """Run the verifier until SIGTERM/SIGINT, then shut down gracefully; SIGHUP re-reads the
    TLS certificate files."""
    servicer = build_servicer(config, insecure=insecure, clock=clock, plaintext=plaintext)
    if config.workers > 0:
        servicer.workers = AppraisalWorkers(config.source, config.workers, insecure=insecure,
                                            plaintext=plaintext, build=build_servicer,
                                            submit_record=servicer.submit_record)
        servicer.workers.warm()
    tls = server_tls(config, plaintext=plaintext)
    admin = await start_verifier_admin(config, servicer, plaintext)
    probes: dict[str, Probe] = {"database": blocking(PolicyStore(config.state_db).probe)}
    if admin is not None:
        probes["audit"] = blocking(admin[2].probe)
    monitor = HealthMonitor(SERVICE_NAME, probes, interval=config.health_check_seconds)
    servicer.monitor = monitor
    servicer.tracing = start_tracing("keybroker-verifier", config.tracing)
    metrics = VerifierMetrics()
    metrics.attach(servicer, monitor)
    if admin is not None:
        admin[2].observer = metrics.audit_write
    server = await VerifierServer.start(servicer, config.listen, tls=tls,
                                        max_request_bytes=config.max_request_bytes,
                                        monitor=monitor, interceptors=[metrics.interceptor()])
    scrape = serve_metrics(config.metrics, metrics.registry, None if plaintext else config.tls)
    if scrape is not None:
        logger.info("verifier metrics on %s://%s/metrics", scrape.scheme, scrape.address)
    checker = asyncio.create_task(monitor.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        for server_tls in (tls, admin[1] if admin else None):
            if server_tls is not None:
                server_tls.reload()
        if scrape is not None:
            scrape.restart()

    loop.add_signal_handler(signal.SIGHUP, reload)
    servicer.start_background(config.policy_poll_seconds)
    refresher = collateral_refresher(config)
    if refresher is not None:
        refresher.start(config.fetch.refresh_seconds)
    logger.info("verifier serving on %s", server.address)
    on_ready(server.address)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        logger.info("verifier shutting down")
        checker.cancel()
        if refresher is not None:
            await refresher.stop()
        await monitor.shutdown()
        if scrape is not None:
            scrape.stop()
        servicer.tracing.shutdown()
        if admin is not None:
            await admin[0].stop(SHUTDOWN_GRACE_SECONDS)
            admin[2].close()
        await server.stop()
        await servicer.close()
