"""Broker gRPC service on loopback with an in-test Verifier: release, replays, expiry,
verifier faults, relayed denials, binding, audit on every path and no key on any denial."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.broker import Stack, snp_evidence, start_stack

from keybroker.audit_log import AuditLog
from keybroker.binding import init_data_digest, report_data
from keybroker.errors import Category, KeybrokerError, MeasurementMismatch
from keybroker.rpc_errors import denial_from_rpc, error_from_rpc
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import AgentKeyPair, Suite, release_info

SECRET = b"database-password-42"
SNP = evidence_pb2.TEE_TYPE_SEV_SNP


def run(tmp_path: Path, scenario: Callable[[Stack, broker_pb2_grpc.KeyBrokerAsyncStub],
                                           Awaitable[None]], **kw: object) -> None:
    """Start broker + fake verifier, run ``scenario`` against a real client, stop both."""
    async def main() -> None:
        stack = await start_stack(tmp_path, **kw)  # type: ignore[arg-type]
        await asyncio.to_thread(stack.broker.secrets.put, "demo/a", SECRET)
        await asyncio.to_thread(stack.broker.secrets.put, "other/key", b"no rule for me")
        try:
            async with grpc.aio.insecure_channel(stack.running.address) as channel:
                await scenario(stack, broker_pb2_grpc.KeyBrokerStub(channel))
        finally:
            await stack.close()

    asyncio.run(main())


async def _request(
    stub: broker_pb2_grpc.KeyBrokerAsyncStub,
    *,
    key_ids: tuple[str, ...] = ("demo/a",),
    announce: tuple[str, ...] | None = None,
    tee: int = SNP,
    suite: Suite = Suite.X25519_HKDFSHA256_AES256GCM,
    init_data: bytes = b"",
    bind_to: AgentKeyPair | None = None,
) -> tuple[AgentKeyPair, broker_pb2.Challenge, broker_pb2.ReleaseKeyRequest]:
    """What an agent does: challenge, fresh key pair, binding, evidence, request."""
    challenge = await stub.GetChallenge(broker_pb2.GetChallengeRequest(
        tee=tee, key_ids=list(announce or key_ids)))
    agent = AgentKeyPair.generate(suite)
    bound = bind_to or agent
    rd = report_data(challenge.nonce, suite.value, bound.public_bytes, init_data_digest(init_data))
    request = broker_pb2.ReleaseKeyRequest(
        challenge_id=challenge.challenge_id, evidence=snp_evidence(rd),
        public_key=agent.public_bytes, suite=suite.wire,
        keys=[broker_pb2.KeyRef(key_id=k) for k in key_ids], init_data=init_data)
    return agent, challenge, request


async def _denied(
    stub: broker_pb2_grpc.KeyBrokerAsyncStub, request: broker_pb2.ReleaseKeyRequest
) -> tuple[KeybrokerError, grpc.aio.AioRpcError]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ReleaseKey(request)
    return error_from_rpc(exc.value, "broker"), exc.value


def _audit(stack: Stack) -> list[tuple[str, str, str]]:
    return [(r.entry.kind, r.entry.category, r.entry.request_id)
            for r in stack.broker.audit.records()]


def _assert_denied_and_audited(stack: Stack, err: KeybrokerError, rpc: grpc.aio.AioRpcError,
                               category: Category) -> None:
    assert err.category is category
    denial = denial_from_rpc(rpc)
    assert denial is not None
    # The agent gets category and safe message only, never rule/expected/actual.
    assert (denial.rule, denial.expected, denial.actual) == ("", "", "")
    records = stack.broker.audit.records(request_id=denial.request_id)
    assert [r.entry.kind for r in records] == ["denied"]
    assert records[0].entry.category == category.value
    assert stack.broker.audit.verify_chain() == len(stack.broker.audit.records())


def test_release_succeeds_and_opens(tmp_path: Path) -> None:
    """A bound, affirmed request gets the secret, sealed so only the agent's key opens it."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        for suite in Suite:
            agent, challenge, request = await _request(stub, suite=suite, init_data=b"idoc")
            assert list(challenge.suites) == [s.wire for s in Suite]
            assert len(challenge.nonce) == 32 and challenge.ttl_seconds == 60
            response = await stub.ReleaseKey(request)
            (wrapped,) = response.keys
            assert (wrapped.key_id, wrapped.version) == ("demo/a", 1)
            info = release_info("demo/a", 1, challenge.challenge_id)
            assert agent.open(wrapped.sealed, info) == SECRET
            assert response.result_token.count(".") == 2
            sent = stack.verifier.requests[-1]
            assert sent.policy_ids == ["snp-demo"] and sent.nonce == challenge.nonce
            assert sent.init_data == b"idoc"
            records = stack.broker.audit.records(request_id=response.request_id)
            assert [r.entry.kind for r in records] == ["intent", "released"]
            assert records[0].entry.keys == ("demo/a@1",)
            assert records[0].entry.policy_ids == ("snp-demo@1", "release-rules@1")
            assert records[0].entry.challenge_id == challenge.challenge_id
            assert len(records[0].entry.agent_key_fingerprint) == 64
            another = AgentKeyPair.generate(suite)
            with pytest.raises(KeybrokerError) as exc:
                another.open(wrapped.sealed, info)
            assert exc.value.category is Category.BINDING
        assert stack.broker.audit.verify_chain() == 6

    run(tmp_path, scenario)


def test_explicit_version_released(tmp_path: Path) -> None:
    """A KeyRef naming an older version releases exactly that version."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        await asyncio.to_thread(stack.broker.secrets.put, "demo/a", b"rotated")
        agent, challenge, request = await _request(stub)
        request.keys[0].version = 1
        response = await stub.ReleaseKey(request)
        assert agent.open(response.keys[0].sealed,
                          release_info("demo/a", 1, challenge.challenge_id)) == SECRET

    run(tmp_path, scenario)


def test_replayed_challenge_is_freshness(tmp_path: Path) -> None:
    """Resubmitting an accepted request (same challenge) is FRESHNESS, audited, no key."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        await stub.ReleaseKey(request)
        err, rpc = await _denied(stub, request)
        assert rpc.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert len(stack.verifier.requests) == 1  # the replay never reached the verifier
        _assert_denied_and_audited(stack, err, rpc, Category.FRESHNESS)
        assert [k for k, _, _ in _audit(stack)] == ["intent", "released", "denied"]

    run(tmp_path, scenario)


def test_concurrent_replay_only_one_release(tmp_path: Path) -> None:
    """Eight simultaneous ReleaseKey calls on one challenge: exactly one release."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        copies = []
        for n in range(8):
            r = broker_pb2.ReleaseKeyRequest()
            r.CopyFrom(request)
            r.request_id = f"race-{n}"
            copies.append(r)
        results = await asyncio.gather(*(stub.ReleaseKey(r) for r in copies),
                                       return_exceptions=True)
        ok = [r for r in results if isinstance(r, broker_pb2.ReleaseKeyResponse)]
        errors = [error_from_rpc(r, "broker").category for r in results
                  if isinstance(r, grpc.aio.AioRpcError)]
        assert len(ok) == 1 and errors == [Category.FRESHNESS] * 7
        kinds = [k for k, _, _ in _audit(stack)]
        assert kinds.count("released") == 1 and kinds.count("denied") == 7

    run(tmp_path, scenario)


def test_expired_challenge_is_freshness(tmp_path: Path) -> None:
    """A challenge used after its TTL (injected clock) is FRESHNESS."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        stack.clock.now += 11
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.FRESHNESS)
        assert stack.verifier.requests == []

    run(tmp_path, scenario, ttl=10)


def test_unknown_challenge_is_freshness(tmp_path: Path) -> None:
    """A never-issued challenge id is FRESHNESS."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        request.challenge_id = "00000000-0000-4000-8000-000000000000"
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.FRESHNESS)

    run(tmp_path, scenario)


def test_keys_outside_challenge_and_tee_mismatch(tmp_path: Path) -> None:
    """Requesting keys not announced, or evidence of another TEE, spends the challenge:
    FRESHNESS."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub, key_ids=("demo/a",), announce=("demo/b",))
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.FRESHNESS)
        _, _, request = await _request(stub, tee=evidence_pb2.TEE_TYPE_TDX)
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.FRESHNESS)
        assert stack.verifier.requests == []

    run(tmp_path, scenario)


def test_unknown_key_id_refused_at_challenge(tmp_path: Path) -> None:
    """A key id no release rule covers is its own MALFORMED denial naming the key, given at
    GetChallenge, before the agent gathers evidence; nothing reaches the verifier."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await _request(stub, key_ids=("demo/a", "other/key"))
        err = error_from_rpc(exc.value, "broker")
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.category is Category.MALFORMED
        assert "unknown key id 'other/key'" in err.reason
        assert stack.verifier.requests == []

    run(tmp_path, scenario)


def test_verifier_down_is_unavailable(tmp_path: Path) -> None:
    """No verifier at the configured address: UNAVAILABLE, audited, no key."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        err, rpc = await _denied(stub, request)
        assert rpc.code() == grpc.StatusCode.UNAVAILABLE
        _assert_denied_and_audited(stack, err, rpc, Category.UNAVAILABLE)

    run(tmp_path, scenario, verifier_up=False)


def test_verifier_slow_is_unavailable(tmp_path: Path) -> None:
    """A verifier slower than the deadline is UNAVAILABLE; its late answer is not applied."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        stack.verifier.delay = 1.5
        _, _, request = await _request(stub)
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.UNAVAILABLE)
        await asyncio.sleep(1.2)
        kinds = [k for k, _, _ in _audit(stack)]
        assert "released" not in kinds and "intent" not in kinds

    run(tmp_path, scenario, timeout=0.3)


def test_fault_overload_is_resource_exhausted_not_queued(tmp_path: Path) -> None:
    """With every call slot busy (a slow verifier), the next call is refused
    RESOURCE_EXHAUSTED at once instead of waiting in a queue; the busy calls finish and
    the freed slots serve again."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        requests = [(await _request(stub))[2] for _ in range(4)]
        stack.verifier.delay = 1.0
        busy = [asyncio.ensure_future(stub.ReleaseKey(r)) for r in requests[:2]]
        await asyncio.sleep(0.3)
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.ReleaseKey(requests[2])
        assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - began < 0.5
        assert all(r.keys for r in await asyncio.gather(*busy))
        stack.verifier.delay = 0.0
        assert (await stub.ReleaseKey(requests[3])).keys

    run(tmp_path, scenario, max_concurrent_rpcs=2, timeout=5.0)


def test_verifier_denial_relayed_without_detail(tmp_path: Path) -> None:
    """A verifier Denial keeps its category for the agent; the detail goes to the audit only."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        stack.verifier.deny = MeasurementMismatch(
            "launch digest not allowed", rule="snp.measurement", expected="aa" * 48,
            actual="bb" * 48)
        _, _, request = await _request(stub)
        err, rpc = await _denied(stub, request)
        assert rpc.code() == grpc.StatusCode.PERMISSION_DENIED
        _assert_denied_and_audited(stack, err, rpc, Category.MEASUREMENT)
        assert "bb" * 48 not in (rpc.details() or "")
        reason = stack.broker.audit.records()[-1].entry.reason
        assert "rule=snp.measurement" in reason and "actual=" + "bb" * 48 in reason

    run(tmp_path, scenario)


def test_key_swap_is_binding(tmp_path: Path) -> None:
    """Row 27: evidence bound to agent A's key submitted with agent B's key is BINDING."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        victim = AgentKeyPair.generate(Suite.X25519_HKDFSHA256_AES256GCM)
        _, _, request = await _request(stub, bind_to=victim)
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.BINDING)

    run(tmp_path, scenario)


def test_init_data_swap_is_binding(tmp_path: Path) -> None:
    """Evidence bound to one init-data document, request presenting another: BINDING."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub, init_data=b"policy A")
        request.init_data = b"policy B"
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.BINDING)

    run(tmp_path, scenario)


@pytest.mark.parametrize(("claim", "value", "category"), [
    ("eat_nonce", "AAAA", Category.TOKEN_INVALID),
    ("keybroker.evidence-digest", "00" * 32, Category.TOKEN_INVALID),
    ("keybroker.report-data", "22" * 64, Category.BINDING),
    ("keybroker.insecure", True, Category.TOKEN_INVALID),
    ("aud", "someone-else", Category.TOKEN_INVALID),
])
def test_bad_token_from_verifier_denied(tmp_path: Path, claim: str, value: object,
                                        category: Category) -> None:
    """A verifier answer about another request (or insecure) is denied by token checks."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        def mutate(claims: dict[str, object], _req: object) -> None:
            claims[claim] = value

        stack.verifier.mutate = mutate
        _, _, request = await _request(stub)
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, category)

    run(tmp_path, scenario)


def test_warning_status_denied_by_default(tmp_path: Path) -> None:
    """A 'warning' appraisal is PLATFORM_POLICY unless the rule accepts warnings."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        stack.verifier.statuses = {"snp-demo": "warning"}
        _, _, request = await _request(stub)
        err, rpc = await _denied(stub, request)
        _assert_denied_and_audited(stack, err, rpc, Category.PLATFORM_POLICY)

    run(tmp_path, scenario)


@pytest.mark.parametrize("edit", ["suite", "short_key", "no_keys", "no_evidence", "version",
                                  "request_id"])
def test_malformed_requests(tmp_path: Path, edit: str) -> None:
    """Unknown suite, wrong key length, no keys, no evidence, bad version or request id:
    MALFORMED (INVALID_ARGUMENT), audited."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        if edit == "suite":
            request.suite = 0
        elif edit == "short_key":
            request.public_key = request.public_key[:31]
        elif edit == "no_keys":
            del request.keys[:]
        elif edit == "no_evidence":
            request.ClearField("evidence")
        elif edit == "version":
            request.keys[0].version = 7
        else:
            request.request_id = "x" * 200
        err, rpc = await _denied(stub, request)
        assert rpc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.category is Category.MALFORMED
        assert _audit(stack)[-1][:2] == ("denied", "MALFORMED")

    run(tmp_path, scenario)


def test_get_challenge_validation(tmp_path: Path) -> None:
    """GetChallenge refuses unknown TEE types and empty key lists (MALFORMED)."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        for req in (broker_pb2.GetChallengeRequest(tee=0, key_ids=["demo/a"]),
                    broker_pb2.GetChallengeRequest(tee=SNP, key_ids=[])):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.GetChallenge(req)
            assert error_from_rpc(exc.value, "broker").category is Category.MALFORMED

    run(tmp_path, scenario)


def test_audit_sink_down_means_no_release(tmp_path: Path) -> None:
    """With the audit database locked, a valid request is UNAVAILABLE and nothing is sealed."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        stack.broker.audit.close()
        stack.broker.audit = AuditLog(stack.config.audit_database, clock=stack.clock,
                                      busy_timeout_seconds=0.05)
        _, _, request = await _request(stub)
        blocker = sqlite3.connect(str(stack.config.audit_database), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            err, rpc = await _denied(stub, request)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert err.category is Category.UNAVAILABLE
        assert rpc.code() == grpc.StatusCode.UNAVAILABLE
        assert all(kind != "intent" for kind, _, _ in _audit(stack))

    run(tmp_path, scenario)


def test_oversized_request_refused(tmp_path: Path) -> None:
    """Requests beyond the 1 MiB receive limit are refused by gRPC before any work."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        _, _, request = await _request(stub)
        request.evidence.snp.cert_table = b"\x00" * (1024 * 1024 + 1)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.ReleaseKey(request)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _audit(stack) == []

    run(tmp_path, scenario)


def test_health_serving(tmp_path: Path) -> None:
    """The gRPC health service reports the KeyBroker service as SERVING."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        async with grpc.aio.insecure_channel(stack.running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(
                service="keybroker.v1.KeyBroker"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    run(tmp_path, scenario)


def test_too_many_outstanding_challenges_is_resource_exhausted(tmp_path: Path) -> None:
    """Past the per-peer bound GetChallenge fails with RESOURCE_EXHAUSTED (category
    UNAVAILABLE); once a challenge is spent the peer may ask again."""
    async def scenario(stack: Stack, stub: broker_pb2_grpc.KeyBrokerAsyncStub) -> None:
        stack.broker.challenges.max_per_peer = 2
        _, _, first = await _request(stub)
        await _request(stub)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await _request(stub)
        assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_from_rpc(exc.value, "broker").category is Category.UNAVAILABLE
        await stub.ReleaseKey(first)
        await _request(stub)

    run(tmp_path, scenario)
