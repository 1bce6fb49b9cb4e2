"""The broker's gRPC service (keybroker.v1.KeyBroker) and its assembly from configuration
(the server lifecycle is ``broker.server``).

Invariants:
- Errors reach the agent only through ``keybroker.rpc_errors.abort`` with
  ``with_detail=False``: status code, category and safe message. Rule, expected and actual
  values go to the operator log and the audit record (written by ``broker.release``).
- Any exception the decision code did not type is UNAVAILABLE, never a release.
- The broker is assembled from configuration once at start-up (``build_broker``); a KEK file
  with wrong permissions, an unreadable JWKS or rules file stops start-up.
- Transport: agents reach the broker over TLS (mutual when ``agent_client_ca`` is set) and the
  broker reaches the verifier over mutual TLS; plaintext for both only with the insecure
  plaintext flag, on loopback, logged as INSECURE.
  The caller's identity for a challenge (address, client certificate digest) is read from the
  channel in this module, never from the request.
- TPM AK enrolment (EnrolTpm, ActivateTpm) is forwarded to the verifier, which keeps the
  enrolments; its denials reach the agent as category and safe message only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import grpc

from broker.challenges import ChallengeStore, Clock, Peer, challenge_schema
from broker.config import BrokerConfig
from broker.kek import KekBackend
from broker.keystore import kek_schema, open_backend, open_ring
from broker.release import Broker, effective_request_id
from broker.rules import KIND as RULES_KIND
from broker.rules import ReleaseRules, load_rules, parse_rules
from broker.secrets import SecretStore, secret_schema
from broker.token import TokenVerifier, load_jwks
from broker.verifier_client import Appraiser, GrpcAppraiser, TpmEnroller
from keybroker.audit_log import AuditLog
from keybroker.database import Database, open_database
from keybroker.errors import KeybrokerError, Malformed, Unavailable
from keybroker.logs import REQUEST_ID_METADATA, request_scope
from keybroker.migrations import Migration
from keybroker.policy_store import PolicyStore
from keybroker.reload import Watched
from keybroker.rpc_errors import abort, metadata_value
from keybroker.store_session import Session
from keybroker.tls import (
    ServerTls,
    certificate_digest,
    check_plaintext,
    client_credentials,
    peer_certificate,
)
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2

_log = logging.getLogger(__name__)

SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["KeyBroker"].full_name

Context = grpc.aio.ServicerContext[object, object]
_R = TypeVar("_R")


def broker_schema(db: Session) -> None:
    """Schema of the main broker database: challenges, KEK versions and secrets."""
    challenge_schema(db)
    kek_schema(db)
    secret_schema(db)


BROKER_MIGRATIONS = (Migration(1, "challenges, KEK versions and secrets", broker_schema),)


def open_main_database(config: BrokerConfig) -> Database:
    """Open (creating if needed) the broker's main SQLite database."""
    return open_database(config.database, component="broker", migrations=BROKER_MIGRATIONS)


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
    dangling = audit.reconcile(replica=config.replica_id,
                               older_than=clock() - config.intent_grace_seconds)
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
    built.replica = config.replica_id
    return built


def verifier_client(config: BrokerConfig, plaintext: bool) -> GrpcAppraiser:
    """The verifier channel: mutual TLS from the config, or plaintext to a loopback verifier
    with the insecure flag; a config without verifier TLS refuses to start otherwise."""
    if plaintext:
        for target in config.verifiers:
            check_plaintext(target, flag="--insecure-plaintext")
        return GrpcAppraiser(config.verifiers, timeout_seconds=config.verifier_timeout_seconds)
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
    return GrpcAppraiser(config.verifiers, timeout_seconds=config.verifier_timeout_seconds,
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
        """Issue a single-use challenge (logged under the agent's ``x-request-id``, if any)."""
        request_id = effective_request_id(metadata_value(context, REQUEST_ID_METADATA))
        with request_scope(request_id):
            try:
                challenge = await self._broker.get_challenge(
                    int(request.tee), list(request.key_ids), _peer(context))
            except KeybrokerError as err:
                _log.warning("GetChallenge denied: %s", err)
                await abort(context, err, request_id, with_detail=False)
            except Exception as exc:
                _log.exception("GetChallenge: unexpected failure")
                await abort(context, Unavailable("internal error", actual=type(exc).__name__),
                            request_id)
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
        with request_scope(request_id), self._broker.tracing.span(
                "keybroker.v1.KeyBroker/ReleaseKey", kind="server",
                attributes={"keybroker.request_id": request_id}) as span:
            try:
                return await self._broker.release(request, request_id=request_id,
                                                  peer=_peer(context))
            except KeybrokerError as err:
                span.set("keybroker.category", err.category.value)
                await abort(context, err, request_id, with_detail=False)
            except Exception as exc:  # release() types everything; this is a last resort
                _log.exception("ReleaseKey: unexpected failure")
                await abort(context, Unavailable("internal error", actual=type(exc).__name__),
                            request_id)

    def _enroller(self) -> TpmEnroller:
        appraiser = self._broker.appraiser
        if not isinstance(appraiser, TpmEnroller):
            raise Unavailable("this broker's verifier client does not forward TPM enrolment",
                              rule="broker.enrolment")
        return appraiser

    async def _enrolment(self, request_id: str, context: Context, what: str,
                         step: Callable[[TpmEnroller], Awaitable[_R]]) -> _R:
        """One enrolment step forwarded to the verifier (denials: category only)."""
        request_id = effective_request_id(request_id)
        with request_scope(request_id):
            try:
                answer = await step(self._enroller())
            except KeybrokerError as err:
                _log.warning("%s denied: %s", what, err)
                await abort(context, err, request_id, with_detail=False)
            _log.info("%s forwarded to the verifier", what)
            return answer

    async def EnrolTpm(self, request: evidence_pb2.EnrolTpmRequest,
                       context: Context) -> evidence_pb2.EnrolTpmChallenge:
        """TPM AK enrolment step 1: the EK certificate and AK, answered with a credential."""
        request.request_id = effective_request_id(request.request_id)
        return await self._enrolment(request.request_id, context, "EnrolTpm",
                                     lambda enroller: enroller.enrol_tpm(request))

    async def ActivateTpm(self, request: evidence_pb2.ActivateTpmRequest,
                          context: Context) -> evidence_pb2.TpmEnrolment:
        """TPM AK enrolment step 2: the activated credential, answered with the enrolment."""
        request.request_id = effective_request_id(request.request_id)
        return await self._enrolment(request.request_id, context, "ActivateTpm",
                                     lambda enroller: enroller.activate_tpm(request))
