"""The broker's gRPC service (keybroker.v1.KeyBroker) and its server lifecycle.

Invariants:
- Errors reach the agent only through ``keybroker.rpc_errors.abort`` with
  ``with_detail=False``: status code, category and safe message. Rule, expected and actual
  values go to the operator log and the audit record (written by ``broker.release``).
- Any exception the decision code did not type is UNAVAILABLE, never a release.
- Requests are bounded (``max_receive_message_length``); the server exposes gRPC health
  checking and reflection; SIGTERM/SIGINT mark the service NOT_SERVING and stop gracefully,
  letting in-flight requests finish within the grace period.
- The broker is assembled from configuration once at start-up (``build_broker``); a KEK file
  with wrong permissions, an unreadable JWKS or rules file stops start-up.
- Transport: agents reach the broker over TLS (mutual when ``agent_client_ca`` is set) and the
  broker reaches the verifier over mutual TLS; plaintext for both only with the insecure
  plaintext flag, on loopback, logged as INSECURE. SIGHUP re-reads every certificate file.
  The caller's identity for a challenge (address, client certificate digest) is read from the
  channel in this module, never from the request.
- Expired challenges are purged every ``challenge_purge_seconds`` while serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import sqlite_utils
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from broker.admin import BrokerAdminServicer
from broker.challenges import ChallengeStore, Clock, Peer, challenge_schema
from broker.config import BrokerConfig
from broker.kek import KekBackend
from broker.keystore import kek_schema, open_backend, open_ring
from broker.release import Appraiser, Broker, GrpcAppraiser, effective_request_id
from broker.rules import KIND as RULES_KIND
from broker.rules import ReleaseRules, load_rules, parse_rules
from broker.secrets import SecretStore, secret_schema
from broker.token import TokenVerifier, load_jwks
from keybroker.admin_auth import Authenticator
from keybroker.admin_gate import AdminGate, admin_enabled, start_admin_server
from keybroker.audit_log import AuditLog
from keybroker.database import Database
from keybroker.errors import KeybrokerError, Malformed, Unavailable
from keybroker.policy_store import PolicyStore
from keybroker.reload import Watched
from keybroker.rpc_errors import abort
from keybroker.tls import (
    ServerTls,
    TlsFiles,
    certificate_digest,
    check_plaintext,
    client_credentials,
    peer_certificate,
)
from keybroker.v1 import admin_pb2_grpc, broker_pb2, broker_pb2_grpc, evidence_pb2

_log = logging.getLogger(__name__)

SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["KeyBroker"].full_name
GRACE_SECONDS = 5.0

Context = grpc.aio.ServicerContext[object, object]


def broker_schema(db: sqlite_utils.Database) -> None:
    """Schema of the main broker database: challenges, KEK versions and secrets."""
    challenge_schema(db)
    kek_schema(db)
    secret_schema(db)


def open_main_database(config: BrokerConfig) -> Database:
    """Open (creating if needed) the broker's main SQLite database."""
    return Database(config.database, schema=broker_schema)


def build_broker(
    config: BrokerConfig,
    *,
    clock: Clock = time.time,
    appraiser: Appraiser | None = None,
    kek: KekBackend | None = None,
    plaintext: bool = False,
) -> Broker:
    """Assemble a Broker from ``config`` (stores, KEK, rules, pinned JWKS, verifier client);
    ``plaintext`` is the insecure flag (a plaintext channel to a loopback verifier)."""
    backend = kek if kek is not None else open_backend(config)
    rules = watch_rules(config, clock)
    tokens = TokenVerifier(load_jwks(config.verifier_jwks, config.verifier_alg),
                           alg=config.verifier_alg, audience=config.audience,
                           leeway_seconds=config.token_leeway_seconds,
                           accept_insecure=config.accept_insecure_results)
    db = open_main_database(config)
    backend.audit_mac(b"keybroker start-up probe")  # the audit key must exist: refuse otherwise
    audit = AuditLog(config.audit_database, clock=clock, mac=backend.audit_mac,
                     checkpoint_every=config.audit_checkpoint_every)
    dangling = audit.reconcile()
    if dangling:
        _log.warning("audit: %d release intents without outcome marked unknown", dangling)
    challenges = ChallengeStore(db, ttl_seconds=config.challenge_ttl_seconds, clock=clock,
                                max_outstanding=config.max_challenges,
                                max_per_peer=config.max_challenges_per_peer)
    challenges.purge_expired()
    built = Broker(
        challenges=challenges,
        secrets=SecretStore(db, open_ring(config, db, backend, clock=clock), clock=clock),
        rules=lambda: rules.current,
        tokens=tokens,
        audit=audit,
        appraiser=appraiser if appraiser is not None else verifier_client(config, plaintext),
        clock=clock,
    )
    built.watched_rules = rules
    return built


def verifier_client(config: BrokerConfig, plaintext: bool) -> GrpcAppraiser:
    """The verifier channel: mutual TLS from the config, or plaintext to a loopback verifier
    with the insecure flag; a config without verifier TLS refuses to start otherwise."""
    if plaintext:
        check_plaintext(config.verifier, flag="--insecure-plaintext")
        return GrpcAppraiser(config.verifier, timeout_seconds=config.verifier_timeout_seconds)
    files = config.verifier_tls
    if files is None or files.ca is None:
        raise Malformed("no mutual TLS to the verifier configured", rule="broker.verifier_ca",
                        expected="verifier_ca, verifier_client_cert and verifier_client_key "
                                 "(see `keybroker tls init`), or --insecure-plaintext",
                        actual="absent")
    ca = files.ca

    def credentials() -> grpc.ChannelCredentials:
        return client_credentials(ca, files.cert, files.key)

    credentials()  # check the files now: a bad one stops start-up, naming the file
    return GrpcAppraiser(config.verifier, timeout_seconds=config.verifier_timeout_seconds,
                         credentials=credentials, server_name=config.verifier_server_name)


def agent_tls(config: BrokerConfig, plaintext: bool) -> ServerTls | None:
    """The agents' TLS credentials, or None with the insecure flag (loopback only)."""
    if plaintext:
        check_plaintext(config.listen, flag="--insecure-plaintext")
        _log.warning("INSECURE: broker listening WITHOUT TLS on %s and calling the verifier "
                     "in plaintext (--insecure-plaintext). NEVER USE IN PRODUCTION.",
                     config.listen)
        return None
    if config.tls is None:
        raise Malformed("no TLS configured for agents", rule="broker.tls_cert",
                        expected="tls_cert and tls_key (see `keybroker tls init`), or "
                                 "--insecure-plaintext on loopback", actual="absent")
    return ServerTls(config.tls, what="broker")


def _peer(context: Context) -> Peer:
    cert = peer_certificate(context)
    return Peer.from_grpc(context.peer(), certificate_digest(cert) if cert else b"")


def watch_rules(config: BrokerConfig, clock: Clock) -> Watched[ReleaseRules]:
    """The release rules in force, from the policy store in the broker database.

    The configured rules file only seeds an empty store (version 1); afterwards the store is
    the source of truth (``keybroker admin policy apply``) and a differing file is reported.
    A broken file or stored version stops start-up (nothing is in force without rules).
    """
    seed = load_rules(config.release_rules)
    store = PolicyStore(config.database)
    now = datetime.fromtimestamp(clock(), UTC)
    if store.seed(RULES_KIND, seed.name, seed.document, source=str(config.release_rules),
                  now=now) is None:
        current = store.in_force(RULES_KIND).get(seed.name)
        if current is not None and current.digest != seed.digest:
            _log.warning("release rules file %s differs from %s in force; the file is only a "
                         "seed, apply it with `keybroker admin policy apply`",
                         config.release_rules, current.label)

    def load() -> ReleaseRules:
        versions = store.in_force(RULES_KIND)
        if len(versions) != 1:
            raise Unavailable("release rules in force are ambiguous",
                              rule="release.rules", expected="exactly one ReleaseRules document",
                              actual=", ".join(sorted(versions)) or "none")
        (version,) = versions.values()
        return parse_rules(version.document, f"{version.label} (broker db)",
                           version=version.version)

    return Watched("release rules", store.generation, load)


class KeyBrokerServicer(broker_pb2_grpc.KeyBrokerServicer):
    """gRPC front of a ``Broker``."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def GetChallenge(
        self, request: broker_pb2.GetChallengeRequest, context: Context
    ) -> broker_pb2.Challenge:
        """Issue a single-use challenge."""
        try:
            challenge = await self._broker.get_challenge(int(request.tee), list(request.key_ids),
                                                         _peer(context))
        except KeybrokerError as err:
            _log.warning("GetChallenge denied: %s", err)
            await abort(context, err, "", with_detail=False)
        except Exception as exc:
            _log.exception("GetChallenge: unexpected failure")
            await abort(context, Unavailable("internal error", actual=type(exc).__name__), "")
        return broker_pb2.Challenge(
            challenge_id=challenge.challenge_id,
            nonce=challenge.nonce,
            ttl_seconds=self._broker.challenges.ttl_seconds,
            suites=[evidence_pb2.HpkeSuite.ValueType(s.wire) for s in self._broker.suites],
            expires_at_unix=int(challenge.expires_at),
        )

    async def ReleaseKey(
        self, request: broker_pb2.ReleaseKeyRequest, context: Context
    ) -> broker_pb2.ReleaseKeyResponse:
        """Run the release decision; denials carry only category and safe message."""
        request_id = effective_request_id(request.request_id)
        try:
            return await self._broker.release(request, request_id=request_id,
                                              peer=_peer(context))
        except KeybrokerError as err:
            await abort(context, err, request_id, with_detail=False)
        except Exception as exc:  # release() types everything; this is a last resort
            _log.exception("ReleaseKey %s: unexpected failure", request_id)
            await abort(context, Unavailable("internal error", actual=type(exc).__name__),
                        request_id)


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
    max_request_bytes: int = 1024 * 1024
) -> RunningServer:
    """Start the KeyBroker gRPC server (plus health and reflection) on ``listen``; ``tls``
    None is plaintext (loopback only).

    ``listen`` may use port 0; the bound port is in the result.
    """
    host, _ = split_listen(listen)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", 4 * max_request_bytes),
        ("grpc.so_reuseport", 0),
    ])
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
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
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


async def purge_challenges(broker: Broker, every_seconds: float) -> None:
    """Every ``every_seconds`` until cancelled: delete expired challenges and destroy secret
    versions whose destruction grace period has passed."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            purged = await asyncio.to_thread(broker.challenges.purge_expired)
            destroyed = await asyncio.to_thread(broker.secrets.destroy_due)
        except KeybrokerError as exc:
            _log.warning("housekeeping failed: %s", exc.detail)
            continue
        if purged:
            _log.debug("purged %d expired challenges", purged)
        for name in destroyed:
            _log.warning("secret version %s destroyed (grace period over)", name)


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
    running = await start_server(broker, config.listen, tls=tls,
                                 max_request_bytes=config.max_request_bytes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    admin = await start_broker_admin(config, broker, plaintext)

    def reload() -> None:
        for server_tls in (tls, admin[1] if admin else None):
            if server_tls is not None:
                server_tls.reload()
        if isinstance(broker.appraiser, GrpcAppraiser):
            broker.appraiser.reconnect()

    loop.add_signal_handler(signal.SIGHUP, reload)
    purger = asyncio.create_task(purge_challenges(broker, config.challenge_purge_seconds))
    _log.info("broker serving on %s (verifier %s)", running.address, config.verifier)
    ready(running.address)
    try:
        await stop.wait()
        _log.info("broker shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        purger.cancel()
        if admin is not None:
            await admin[0].stop(GRACE_SECONDS)
        await running.stop()
        if broker.watched_rules is not None:
            await broker.watched_rules.stop()
        await close_broker(broker)
