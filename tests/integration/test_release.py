"""Integration: real verifier and broker processes on loopback, releases through the agent.

Each denial is checked three ways: the typed category reaches the caller, no key left the
broker (the call failed, nothing sealed), and the broker's audit log holds a denial record
with that category for that request id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support.agent_tls import channel_binding, secure_channel, tls_kwargs
from support.demo_stack import demo_services

from attester_agent.client import get_secrets
from attester_agent.collectors.simulator import SimulatorCollector
from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker import binding
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_report import POLICY_DEBUG, SnpReport
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import AgentKeyPair, Suite, release_info
from keybroker_cli.demo_setup import (
    DEMO_INIT_DATA,
    DEMO_KEY_ID,
    DEMO_MEASUREMENT,
    DemoLayout,
    PolicySpec,
    agent_tls_args,
    prepare,
    put_secret,
)
from keybroker_cli.launcher import ServiceProcess, keybroker_command

pytestmark = pytest.mark.integration

STRICT_KEY = "strict/api-token"
CHALLENGE_TTL = 3


@dataclass
class Env:
    layout: DemoLayout
    secret: bytes
    strict_secret: bytes
    verifier: ServiceProcess
    broker: ServiceProcess
    ca: SnpTestCa
    channel: grpc.Channel
    stub: broker_pb2_grpc.KeyBrokerStub


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    layout = DemoLayout(tmp_path_factory.mktemp("release"))
    strict = PolicySpec("snp-strict", "strict/*", DEMO_MEASUREMENT,
                        min_tcb=(("bootloader", 0), ("tee", 0), ("snp", 0), ("microcode", 200)))
    secret = prepare(layout, challenge_ttl=CHALLENGE_TTL, extra_policies=[strict])
    strict_secret = b"strict-secret-value"
    put_secret(layout, STRICT_KEY, strict_secret)
    with demo_services(layout, challenge_ttl=CHALLENGE_TTL) as (verifier, broker):
        channel = secure_channel(layout, broker.address)
        try:
            yield Env(layout, secret, strict_secret, verifier, broker,
                      SnpTestCa.load(layout.sim), channel, broker_pb2_grpc.KeyBrokerStub(channel))
        finally:
            channel.close()


def audit_records(env: Env) -> list[dict[str, object]]:
    done = subprocess.run(
        keybroker_command("broker", "audit", "list", "--config", str(env.layout.broker_config),
                          "--json"),
        capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def records_for(env: Env, request_id: str) -> list[dict[str, object]]:
    return [r for r in audit_records(env) if r.get("request_id") == request_id]


@dataclass
class Attempt:
    request: broker_pb2.ReleaseKeyRequest
    keypair: AgentKeyPair
    challenge: broker_pb2.Challenge


def build_attempt(
    env: Env,
    *,
    key_id: str = DEMO_KEY_ID,
    simulator: SnpSimulator | None = None,
    mutate: Callable[[SnpReport, SnpSimulator], bytes] | None = None,
    bind_key: AgentKeyPair | None = None,
) -> Attempt:
    """GetChallenge, then evidence bound to (nonce, key) with an optional report mutation."""
    challenge = env.stub.GetChallenge(broker_pb2.GetChallengeRequest(
        tee=evidence_pb2.TEE_TYPE_SEV_SNP, key_ids=[key_id]))
    suite = Suite.X25519_HKDFSHA256_AES256GCM
    keypair = AgentKeyPair.generate(suite)
    bound = bind_key or keypair
    report_data = binding.report_data(challenge.nonce, suite.value, bound.public_bytes,
                                      binding.init_data_digest(DEMO_INIT_DATA),
                                      channel_binding(env.layout))
    sim = simulator or SnpSimulator(env.ca, measurement=DEMO_MEASUREMENT,
                                    host_data=hashlib.sha256(DEMO_INIT_DATA).digest())
    report = sim.report(report_data)
    raw = mutate(report, sim) if mutate else sim.sign(report)
    request = broker_pb2.ReleaseKeyRequest(
        challenge_id=challenge.challenge_id,
        evidence=evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(
            report=raw, cert_table=sim.cert_table())),
        public_key=keypair.public_bytes,
        suite=evidence_pb2.HpkeSuite.ValueType(suite.wire),
        keys=[broker_pb2.KeyRef(key_id=key_id)],
        init_data=DEMO_INIT_DATA,
        request_id=str(uuid.uuid4()),
    )
    return Attempt(request, keypair, challenge)


def send(env: Env, request: broker_pb2.ReleaseKeyRequest) -> broker_pb2.ReleaseKeyResponse:
    try:
        response: broker_pb2.ReleaseKeyResponse = env.stub.ReleaseKey(request, timeout=20)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, "broker") from exc
    return response


def assert_denied(env: Env, attempt: Attempt, category: Category) -> None:
    """The call is refused with ``category``, nothing is released, and the audit says so."""
    with pytest.raises(KeybrokerError) as exc:
        send(env, attempt.request)
    assert exc.value.category is category, str(exc.value)
    records = records_for(env, attempt.request.request_id)
    assert records, "no audit record for the denied request"
    assert any(r.get("kind") == "denied" and r.get("category") == category.value
               for r in records), records
    assert not any(r.get("kind") == "released" for r in records)


def test_release_through_agent_process(env: Env) -> None:
    """The attester-agent CLI (simulator) receives the secret, written with mode 0600."""
    out = env.layout.root / "agent-secret"
    done = subprocess.run(
        [sys.executable, "-m", "attester_agent.cli", "get-secret", "--broker", env.broker.address,
         *agent_tls_args(env.layout),
         "--key-id", DEMO_KEY_ID, "--out", str(out), "--init-data", str(env.layout.init_data),
         "--insecure-simulator", "--simulator-dir", str(env.layout.sim),
         "--sim-measurement", DEMO_MEASUREMENT.hex()],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == env.secret
    assert out.stat().st_mode & 0o777 == 0o600
    assert env.secret.decode() not in done.stderr + done.stdout


def test_release_all_suites_and_audit(env: Env) -> None:
    """Every HPKE suite releases the secret, and the release leaves intent + outcome records."""
    collector = SimulatorCollector(env.layout.sim, insecure=True, measurement=DEMO_MEASUREMENT,
                                   init_data=DEMO_INIT_DATA)
    for suite in Suite:
        got = get_secrets(env.broker.address, [DEMO_KEY_ID], collector, suite=suite,
                          init_data=DEMO_INIT_DATA, **tls_kwargs(env.layout))  # type: ignore[arg-type]
        assert got == {DEMO_KEY_ID: env.secret}
    attempt = build_attempt(env)
    response = send(env, attempt.request)
    (wrapped,) = response.keys
    info = release_info(wrapped.key_id, wrapped.version, attempt.challenge.challenge_id)
    opened = attempt.keypair.open(wrapped.sealed, info)
    assert opened == env.secret
    kinds = [r.get("kind") for r in records_for(env, attempt.request.request_id)]
    assert kinds == ["intent", "released"]
    assert all(env.secret.hex() not in json.dumps(r) for r in audit_records(env))


def test_wrong_measurement_denied(env: Env) -> None:
    """A guest with another launch digest is denied with MEASUREMENT."""
    sim = SnpSimulator(env.ca, measurement=bytes(48),
                       host_data=hashlib.sha256(DEMO_INIT_DATA).digest())
    assert_denied(env, build_attempt(env, simulator=sim), Category.MEASUREMENT)


def test_replayed_challenge_denied(env: Env) -> None:
    """Resubmitting an accepted request is refused as FRESHNESS and releases nothing."""
    attempt = build_attempt(env)
    send(env, attempt.request)
    replay = broker_pb2.ReleaseKeyRequest()
    replay.CopyFrom(attempt.request)
    replay.request_id = str(uuid.uuid4())
    assert_denied(env, Attempt(replay, attempt.keypair, attempt.challenge), Category.FRESHNESS)


def test_expired_challenge_denied(env: Env) -> None:
    """A challenge used after its TTL is refused as FRESHNESS."""
    attempt = build_attempt(env)
    time.sleep(CHALLENGE_TTL + 0.5)
    assert_denied(env, attempt, Category.FRESHNESS)


def test_tampered_signature_denied(env: Env) -> None:
    """A report changed after signing is refused as SIG_INVALID."""
    def flip(report: SnpReport, sim: SnpSimulator) -> bytes:
        raw = bytearray(sim.sign(report))
        raw[0x90] ^= 0x01
        return bytes(raw)
    assert_denied(env, build_attempt(env, mutate=flip), Category.SIG_INVALID)


def test_swapped_agent_key_denied(env: Env) -> None:
    """Evidence bound to agent A's key, submitted with agent B's key, is refused as BINDING."""
    other = AgentKeyPair.generate(Suite.X25519_HKDFSHA256_AES256GCM)
    assert_denied(env, build_attempt(env, bind_key=other), Category.BINDING)


def test_debug_policy_bit_denied(env: Env) -> None:
    """A correctly signed report of a debuggable guest is refused as PLATFORM_POLICY."""
    def debug(report: SnpReport, sim: SnpSimulator) -> bytes:
        return sim.sign(report.with_changes(policy=report.policy | POLICY_DEBUG))
    assert_denied(env, build_attempt(env, mutate=debug), Category.PLATFORM_POLICY)


def test_tcb_below_floor_denied(env: Env) -> None:
    """A key whose policy needs microcode >= 200 is refused to a platform at 115 (TCB_POLICY)."""
    assert_denied(env, build_attempt(env, key_id=STRICT_KEY), Category.TCB_POLICY)


def test_verifier_down_denied(env: Env) -> None:
    """With the verifier process killed, the broker denies with UNAVAILABLE (never releases)."""
    env.verifier.kill()
    assert_denied(env, build_attempt(env), Category.UNAVAILABLE)


def test_audit_chain_intact(env: Env) -> None:
    """After all the above, the broker's hash-chained audit log verifies."""
    done = subprocess.run(
        keybroker_command("broker", "audit", "verify", "--config", str(env.layout.broker_config)),
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_demo_command(tmp_path: Path) -> None:
    """`keybroker demo --workdir`: numbered steps, one release and one MEASUREMENT denial,
    the audit rows of exactly those two requests under a header, the services' metrics, the
    timings after the steps, and the working directory kept (it was given)."""
    workdir = tmp_path / "demo"
    done = subprocess.run(
        keybroker_command("demo", "--workdir", str(workdir), "--releases", "3"),
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    numbered = [line for line in lines if re.match(r"^ ?\d+\. ", line)]
    assert [int(line.split(".")[0]) for line in numbered] == list(range(1, len(numbered) + 1))
    assert any("RELEASED demo/db-password" in line for line in numbered)
    assert any("DENIED demo/db-password" in line for line in numbered)
    assert "    MEASUREMENT: policy snp-demo@1" in done.stdout
    assert re.search(r"agent: wrote demo/db-password \(\d+ bytes\) to .*released-secret "
                     r"\(mode 0600\); request demo-release-", done.stdout)
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["seq", "outcome",
                                                                            "category"])
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [(r[1], r[2]) for r in rows] == [("intent", "-"), ("released", "-"),
                                            ("denied", "MEASUREMENT")]
    assert lines[header + 4].lstrip().startswith(f"{len(numbered) - 1}. metrics (Prometheus)")
    assert "keybroker_releases_total 4" in done.stdout  # the agent's release + 3 timed ones
    assert numbered[-1].lstrip().startswith(f"{len(numbered)}. verifier and broker stopped")
    timings = lines.index("timings (apart from the steps; this machine, this run):")
    assert timings > lines.index(numbered[-1])
    assert "3 more releases in-process" in done.stdout
    assert lines[-1] == "demo: OK (1 release, 1 denial)"
    assert "kept (--workdir" in done.stdout and (workdir / "released-secret").exists()


def test_demo_deletes_its_temporary_workdir(tmp_path: Path) -> None:
    """Without --workdir the demo says where its keys are and deletes them at exit."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(keybroker_command("demo", "--releases", "0"), capture_output=True,
                          text=True, check=False, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"working directory {tmp_path}/keybroker-demo-" in done.stdout
    assert "holds generated keys" in done.stdout and "deleted at exit" in done.stdout
    assert list(tmp_path.iterdir()) == []
