"""The broker's server lifecycle: start-up, the health monitor, housekeeping, shutdown.

Invariants:
- The KeyBroker service, gRPC health and reflection share one port; health is SERVING only
  while every dependency probe passes (``broker.dependencies``) and NOT_SERVING from the
  first moment of shutdown. SIGTERM/SIGINT stop gracefully, letting in-flight requests finish
  within the grace period; SIGHUP re-reads every certificate file.
- Expired challenges are purged, and secret versions past their destruction grace period
  destroyed, every ``challenge_purge_seconds`` while serving.
- The admin API runs on its own port, only when enabled (``keybroker.admin_gate``); so does
  the metrics endpoint (``broker.metrics``, ``keybroker.metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from broker.admin import BrokerAdminServicer
from broker.challenges import Clock
from broker.config import BrokerConfig
from broker.dependencies import broker_monitor
from broker.metrics import BrokerMetrics
from broker.release import Broker
from broker.service import SERVICE_NAME, KeyBrokerServicer, agent_tls, build_broker
from broker.verifier_client import GrpcAppraiser
from keybroker.admin_auth import Authenticator
from keybroker.admin_gate import AdminGate, admin_enabled, start_admin_server
from keybroker.errors import KeybrokerError, Unavailable
from keybroker.health import HealthMonitor
from keybroker.metrics import serve_metrics
from keybroker.policy_store import PolicyStore
from keybroker.server_limits import MAX_CONCURRENT_RPCS, server_options
from keybroker.tls import ServerTls, TlsFiles, check_plaintext
from keybroker.tracing import start_tracing
from keybroker.v1 import admin_pb2_grpc, broker_pb2_grpc

_log = logging.getLogger(__name__)

GRACE_SECONDS = 5.0


@dataclass
class RunningServer:
    """A started broker server."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float | None = GRACE_SECONDS) -> None:
        """Mark NOT_SERVING and stop, letting in-flight calls finish within ``grace``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def split_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 hosts in brackets)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    return host, int(port)


async def start_server(
    broker: Broker, listen: str, *, tls: ServerTls | None,
    max_request_bytes: int = 1024 * 1024, monitor: HealthMonitor | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
) -> RunningServer:
    """Start the KeyBroker gRPC server (plus health and reflection) on ``listen``; ``tls``
    None is plaintext (loopback only). With ``monitor`` the health status follows its probes
    (checked once before this returns); without, it is SERVING while the server runs.

    ``listen`` may use port 0; the bound port is in the result.
    """
    host, _ = split_listen(listen)
    server = grpc.aio.server(interceptors=list(interceptors),
                             options=server_options(max_request_bytes, 4 * max_request_bytes),
                             maximum_concurrent_rpcs=max_concurrent_rpcs)
    broker_pb2_grpc.add_KeyBrokerServicer_to_server(KeyBrokerServicer(broker), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    try:
        if tls is None:
            check_plaintext(listen, flag="--insecure-plaintext")
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {listen}", actual=str(exc)) from exc
    if port == 0:
        raise Unavailable(f"cannot listen on {listen}")
    await server.start()
    if monitor is None:
        await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
    else:
        monitor.attach(health)
        await monitor.check_once()
    return RunningServer(server, health, host, port)


async def start_broker_admin(config: BrokerConfig, broker: Broker, plaintext: bool
                             ) -> tuple[grpc.aio.Server, ServerTls] | None:
    """The BrokerAdmin API on ``admin_listen`` (when enabled: principals configured, TLS)."""
    if not admin_enabled("broker", config.admin.listen, config.admins, plaintext=plaintext):
        return None
    assert config.tls is not None  # TLS is required unless plaintext (checked at start)
    tls = ServerTls(TlsFiles(config.tls.cert, config.tls.key, config.admin.client_ca),
                    what="broker admin")
    gate = AdminGate("broker", Authenticator(config.admins, config.admin.jwt), broker.audit)
    servicer = BrokerAdminServicer(gate, broker, PolicyStore(config.database))
    server, _ = await start_admin_server(
        lambda s: admin_pb2_grpc.add_BrokerAdminServicer_to_server(servicer, s),
        config.admin.listen, tls)
    return server, tls


async def purge_challenges(broker: Broker, every_seconds: float,
                           intent_grace_seconds: float) -> None:
    """Every ``every_seconds`` until cancelled: delete expired challenges, destroy secret
    versions whose destruction grace period has passed, and mark release intents older than
    ``intent_grace_seconds`` without outcome (a replica that stopped) ``unknown``."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            purged = await asyncio.to_thread(broker.challenges.purge_expired)
            destroyed = await asyncio.to_thread(broker.secrets.destroy_due)
            orphaned = await asyncio.to_thread(
                lambda: broker.audit.reconcile(older_than=time.time() - intent_grace_seconds))
        except KeybrokerError as exc:
            _log.warning("housekeeping failed: %s", exc.detail)
            continue
        if purged:
            _log.debug("purged %d expired challenges", purged)
        for name in destroyed:
            _log.warning("secret version %s destroyed (grace period over)", name)
        if orphaned:
            _log.warning("audit: %d release intents of a stopped replica marked unknown",
                         orphaned)


async def close_broker(broker: Broker) -> None:
    """Release the broker's resources (verifier channel, database connections)."""
    if isinstance(broker.appraiser, GrpcAppraiser):
        await broker.appraiser.close()
    try:
        broker.audit.checkpoint()  # cover the records written since the last checkpoint
    except KeybrokerError as exc:
        _log.error("audit checkpoint at shutdown not written: %s", exc.detail)
    broker.audit.close()
    broker.challenges.close()


async def serve(
    config: BrokerConfig,
    *,
    ready: Callable[[str], None],
    clock: Clock = time.time,
    plaintext: bool = False,
) -> None:
    """Run the broker until SIGTERM/SIGINT; call ``ready(address)`` once serving; SIGHUP
    re-reads the certificate files."""
    broker = build_broker(config, clock=clock, plaintext=plaintext)
    tls = agent_tls(config, plaintext)
    if broker.watched_rules is not None:
        broker.watched_rules.start(config.policy_poll_seconds)
    broker.tracing = start_tracing("keybroker-broker", config.tracing)
    if isinstance(broker.appraiser, GrpcAppraiser):
        broker.appraiser.tracing = broker.tracing
    monitor = broker_monitor(broker, interval=config.health_check_seconds)
    broker.monitor = monitor
    metrics = BrokerMetrics()
    metrics.attach(broker, monitor)
    running = await start_server(broker, config.listen, tls=tls,
                                 max_request_bytes=config.max_request_bytes, monitor=monitor,
                                 interceptors=[metrics.interceptor()])
    scrape = serve_metrics(config.metrics, metrics.registry, None if plaintext else config.tls)
    if scrape is not None:
        _log.info("broker metrics on %s://%s/metrics", scrape.scheme, scrape.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    admin = await start_broker_admin(config, broker, plaintext)

    def reload() -> None:
        for server_tls in (tls, admin[1] if admin else None):
            if server_tls is not None:
                server_tls.reload()
        if scrape is not None:
            scrape.restart()
        if isinstance(broker.appraiser, GrpcAppraiser):
            broker.appraiser.reconnect()

    loop.add_signal_handler(signal.SIGHUP, reload)
    purger = asyncio.create_task(purge_challenges(broker, config.challenge_purge_seconds,
                                                  config.intent_grace_seconds))
    checker = asyncio.create_task(monitor.run())
    _log.info("broker serving on %s (verifiers %s)", running.address,
              ", ".join(config.verifiers))
    ready(running.address)
    try:
        await stop.wait()
        _log.info("broker shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        purger.cancel()
        checker.cancel()
        await monitor.shutdown()
        if scrape is not None:
            scrape.stop()
        broker.tracing.shutdown()
        if admin is not None:
            await admin[0].stop(GRACE_SECONDS)
        await running.stop()
        if broker.watched_rules is not None:
            await broker.watched_rules.stop()
        await close_broker(broker)
