"""The agent side of the release flow (architecture section 2), over a synchronous gRPC channel.

Invariants:
- Every request uses a fresh ephemeral HPKE key pair; its private key lives only inside
  ``get_secrets`` and the reference is dropped right after the wrapped keys are opened.
- The evidence is collected for exactly ``binding.report_data(nonce, suite id, public key,
  init-data digest[, channel])`` of this challenge; ``channel`` is the SHA-256 of the client
  certificate this agent presents over mutual TLS (empty without one), so evidence relayed
  through another TLS client fails the broker's binding check.
- A suite is used only if the broker offers it (when it lists any).
- Every requested key must come back exactly once and open under
  ``release_info(key_id, version, challenge_id)``; anything else is an error, never a partial
  success.
- A failed RPC becomes the typed error from the broker's Denial (``error_from_rpc``), raised
  ``from`` the ``grpc.RpcError``; without a Denial it is UNAVAILABLE.
- Secrets are returned to the caller and never logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Final

import grpc

from attester_agent.collectors.base import Collector, collect_evidence
from keybroker import binding
from keybroker.errors import Malformed, Unavailable
from keybroker.logs import REQUEST_ID_METADATA
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import AgentKeyPair, Suite, release_info

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_SUITE: Final = Suite.X25519_HKDFSHA256_AES256GCM


def choose_suite(offered: Sequence[int], requested: Suite | None) -> Suite:
    """The requested suite if the broker offers it, else the broker's first supported one."""
    supported = {s.wire: s for s in Suite}
    if requested is not None:
        if offered and requested.wire not in offered:
            raise Malformed("the broker does not offer the requested HPKE suite",
                            rule="suite negotiation",
                            expected=" | ".join(_suite_name(n) for n in offered),
                            actual=requested.value)
        return requested
    if not offered:
        return DEFAULT_SUITE
    for number in offered:
        if number in supported:
            return supported[number]
    raise Malformed("the broker offers no HPKE suite this agent supports",
                    rule="suite negotiation", expected=" | ".join(s.value for s in Suite),
                    actual=", ".join(str(n) for n in offered))


def _suite_name(number: int) -> str:
    try:
        return Suite.from_wire(number).value
    except Malformed:
        return str(number)


def get_secrets(
    broker_addr: str,
    key_ids: Sequence[str],
    collector: Collector,
    *,
    suite: Suite | None = None,
    init_data: bytes = b"",
    timeout: float = DEFAULT_TIMEOUT,
    credentials: grpc.ChannelCredentials | None = None,
    channel_binding: bytes = b"",
    request_id: str | None = None,
) -> dict[str, bytes]:
    """Attest with ``collector`` and return key id -> secret for every key in ``key_ids``;
    ``credentials`` None is plaintext (the caller's insecure flag); ``request_id`` names the
    request in the broker's audit and logs (default: a fresh UUID)."""
    wanted = list(dict.fromkeys(key_ids))
    if not wanted:
        raise ValueError("at least one key id is required")
    request_id = request_id or str(uuid.uuid4())
    metadata = ((REQUEST_ID_METADATA, request_id),)
    if not collector.available():
        raise Unavailable(f"{collector.name} is not usable on this guest",
                          rule="collector available", expected="available", actual="absent")
    if credentials is None:
        channel = grpc.insecure_channel(broker_addr)
    else:
        channel = grpc.secure_channel(broker_addr, credentials)
    with channel:
        stub = broker_pb2_grpc.KeyBrokerStub(channel)
        try:
            challenge = stub.GetChallenge(
                broker_pb2.GetChallengeRequest(
                    tee=evidence_pb2.TeeType.ValueType(collector.tee), key_ids=wanted
                ),
                timeout=timeout, metadata=metadata,
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, broker_addr) from exc
        chosen = choose_suite(list(challenge.suites), suite)
        keypair = AgentKeyPair.generate(chosen)
        try:
            report_data = binding.report_data(
                challenge.nonce, chosen.value, keypair.public_bytes,
                binding.init_data_digest(init_data), channel_binding,
            )
            evidence = collect_evidence(collector, report_data, nonce=challenge.nonce,
                                        public_key=keypair.public_bytes)
            logger.info("requesting %d key(s) from %s (challenge %s, suite %s, request %s)",
                        len(wanted), broker_addr, challenge.challenge_id, chosen.value,
                        request_id)
            try:
                response = stub.ReleaseKey(
                    broker_pb2.ReleaseKeyRequest(
                        challenge_id=challenge.challenge_id,
                        evidence=evidence,
                        public_key=keypair.public_bytes,
                        suite=evidence_pb2.HpkeSuite.ValueType(chosen.wire),
                        keys=[broker_pb2.KeyRef(key_id=k, version=0) for k in wanted],
                        init_data=init_data,
                        request_id=request_id,
                    ),
                    timeout=timeout, metadata=metadata,
                )
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, broker_addr) from exc
            return _open_all(keypair, response, wanted, challenge.challenge_id)
        finally:
            del keypair  # drop the only reference to the private key


def _open_all(
    keypair: AgentKeyPair,
    response: broker_pb2.ReleaseKeyResponse,
    wanted: Sequence[str],
    challenge_id: str,
) -> dict[str, bytes]:
    secrets: dict[str, bytes] = {}
    for wrapped in response.keys:
        if wrapped.key_id not in wanted:
            raise Malformed("the broker released a key that was not requested",
                            rule="release response keys", expected=", ".join(wanted),
                            actual=wrapped.key_id)
        if wrapped.key_id in secrets:
            raise Malformed("the broker released a key twice", rule="release response keys",
                            expected="each key once", actual=wrapped.key_id)
        info = release_info(wrapped.key_id, wrapped.version, challenge_id)
        secrets[wrapped.key_id] = keypair.open(wrapped.sealed, info)
    missing = [k for k in wanted if k not in secrets]
    if missing:
        raise Malformed("the broker did not release every requested key",
                        rule="release response keys", expected=", ".join(wanted),
                        actual=", ".join(sorted(secrets)) or "none")
    logger.info("opened %d released key(s)", len(secrets))
    return secrets
