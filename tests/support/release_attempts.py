"""Release attempts against demo services for integration tests: an attempt built from a
collector's evidence for a fresh challenge, sent over the demo agent's mutual TLS, and the
checks that a denial left no key and an audit record with its category."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from attester_agent.collectors.base import Collector, collect_evidence
from keybroker import binding
from keybroker.errors import Category, KeybrokerError
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import AgentKeyPair, Suite, release_info
from keybroker_cli.demo_setup import DEMO_INIT_DATA, DEMO_KEY_ID, DemoLayout
from keybroker_cli.launcher import ServiceProcess, keybroker_command
from support.agent_tls import channel_binding


@dataclass
class Env:
    layout: DemoLayout
    secret: bytes
    verifier: ServiceProcess
    broker: ServiceProcess
    channel: grpc.Channel
    stub: broker_pb2_grpc.KeyBrokerStub


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "attester_agent.cli", *args],
                          capture_output=True, text=True, check=False, timeout=120)


def records_for(env: Env, request_id: str) -> list[dict[str, object]]:
    done = subprocess.run(
        keybroker_command("broker", "audit", "list", "--config", str(env.layout.broker_config),
                          "--json"),
        capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [r for r in records if r.get("request_id") == request_id]


@dataclass
class Attempt:
    request: broker_pb2.ReleaseKeyRequest
    keypair: AgentKeyPair
    challenge: broker_pb2.Challenge


def build_attempt(env: Env, collector: Collector, *, key_id: str = DEMO_KEY_ID,
                  init_data: bytes = DEMO_INIT_DATA,
                  mutate: Callable[[evidence_pb2.Evidence], None] | None = None) -> Attempt:
    """GetChallenge, then the collector's evidence bound to (nonce, key, init-data)."""
    challenge = env.stub.GetChallenge(broker_pb2.GetChallengeRequest(
        tee=collector.tee, key_ids=[key_id]))  # type: ignore[arg-type]
    suite = Suite.X25519_HKDFSHA256_AES256GCM
    keypair = AgentKeyPair.generate(suite)
    digest = binding.init_data_digest(init_data) if init_data else b""
    report_data = binding.report_data(challenge.nonce, suite.value, keypair.public_bytes, digest,
                                      channel_binding(env.layout))
    evidence = collect_evidence(collector, report_data, nonce=challenge.nonce,
                                public_key=keypair.public_bytes)
    if mutate is not None:
        mutate(evidence)
    request = broker_pb2.ReleaseKeyRequest(
        challenge_id=challenge.challenge_id, evidence=evidence,
        public_key=keypair.public_bytes, suite=evidence_pb2.HpkeSuite.ValueType(suite.wire),
        keys=[broker_pb2.KeyRef(key_id=key_id)], init_data=init_data,
        request_id=str(uuid.uuid4()))
    return Attempt(request, keypair, challenge)


def send(env: Env, request: broker_pb2.ReleaseKeyRequest) -> broker_pb2.ReleaseKeyResponse:
    try:
        response: broker_pb2.ReleaseKeyResponse = env.stub.ReleaseKey(request, timeout=20)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, "broker") from exc
    return response


def open_released(attempt: Attempt, response: broker_pb2.ReleaseKeyResponse) -> bytes:
    (wrapped,) = response.keys
    info = release_info(wrapped.key_id, wrapped.version, attempt.challenge.challenge_id)
    return attempt.keypair.open(wrapped.sealed, info)


def assert_denied(env: Env, attempt: Attempt, category: Category) -> KeybrokerError:
    """Refused with ``category``, nothing released, and the audit log says so."""
    with pytest.raises(KeybrokerError) as exc:
        send(env, attempt.request)
    assert exc.value.category is category, str(exc.value)
    records = records_for(env, attempt.request.request_id)
    assert any(r.get("kind") == "denied" and r.get("category") == category.value
               for r in records), records
    assert not any(r.get("kind") == "released" for r in records)
    return exc.value


def recovers(attempt: Callable[[], bytes], secret: bytes, *, timeout: float) -> bool:
    """Whether ``attempt`` returns ``secret`` within ``timeout`` seconds, retrying while it
    is refused UNAVAILABLE (a service coming back); any other refusal fails the caller."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return attempt() == secret
        except KeybrokerError as err:
            assert err.category is Category.UNAVAILABLE, err
            time.sleep(0.5)
    return False
