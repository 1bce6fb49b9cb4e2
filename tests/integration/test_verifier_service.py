"""The Verifier gRPC service on loopback, appraising simulator SNP reports end to end."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.paths import ROOT
from support.policy_docs import snp_policy_yaml

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import evidence_pb2, verifier_pb2, verifier_pb2_grpc
from keybroker_cli.verifier_cmd import JWKS_FILE, KEY_FILE
from verifier.collateral.cache import CollateralStore
from verifier.config import load_config
from verifier.policy.compile import parse_policy
from verifier.result import ResultSigner
from verifier.server import VerifierServer, build_servicer
from verifier.service import SERVICE_NAME, VerifierServicer, load_policies
from verifier.snp.tee import SnpEvidence
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

pytestmark = pytest.mark.integration

MEASUREMENT = bytes.fromhex("3c" * 48)
NONCE = os.urandom(32)
REPORT_DATA = hashlib.sha512(b"binding" + NONCE).digest()
MAX_BYTES = 64 * 1024


def _policy_text(name: str, **snp: object) -> bytes:
    values: dict[str, object] = {"measurements": [MEASUREMENT.hex()], "min_tcb": {},
                                 "allow_smt": True}
    values.update(snp)
    return snp_policy_yaml(name, **values)


@dataclass
class Env:
    ca_dir: Path
    sim: SnpSimulator
    signer: ResultSigner
    trust: AmdTrustStore


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    ca_dir = tmp_path_factory.mktemp("simca")
    ca = SnpTestCa.generate("Milan")
    ca.save(ca_dir)
    ca.write_collateral(ca_dir / "collateral", now=datetime.now(UTC))
    sim = SnpSimulator(ca, measurement=MEASUREMENT)
    trust = AmdTrustStore.pinned().with_simulator_roots([ca_dir / "ark.pem"])
    return Env(ca_dir=ca_dir, sim=sim, signer=ResultSigner.generate("ES384"), trust=trust)


def _servicer(env: Env, *, insecure: bool = True,
              clock: Callable[[], datetime] | None = None) -> VerifierServicer:
    policies = {p.name: p for p in (
        parse_policy(_policy_text("snp-demo"), "demo.yaml", 1),
        parse_policy(_policy_text("snp-other", allowed_vmpls=[0, 1]), "other.yaml", 1),
    )}
    trust = env.trust if insecure else AmdTrustStore.pinned()
    snp = SnpEvidence(SnpVerifier(trust, CollateralStore.load([env.ca_dir / "collateral"])))
    return VerifierServicer(verifiers={"snp": snp}, policies=policies, signer=env.signer,
                            insecure=insecure, max_request_bytes=MAX_BYTES,
                            clock=clock or (lambda: datetime.now(UTC)))


@asynccontextmanager
async def serving(servicer: VerifierServicer) -> AsyncIterator[tuple[str, grpc.aio.Channel]]:
    server = await VerifierServer.start(servicer, "127.0.0.1:0", tls=None,
                                        max_request_bytes=MAX_BYTES)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield server.address, channel
    finally:
        await server.stop(0)


def _request(report: bytes, table: bytes, *, policies: tuple[str, ...] = ("snp-demo",),
             expected: bytes = REPORT_DATA) -> verifier_pb2.AppraiseRequest:
    return verifier_pb2.AppraiseRequest(
        evidence=evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(report=report,
                                                                    cert_table=table)),
        expected_report_data=expected, nonce=NONCE, policy_ids=list(policies),
        request_id="req-42")


async def _appraise(channel: grpc.aio.Channel,
                    request: verifier_pb2.AppraiseRequest) -> verifier_pb2.AppraiseResponse:
    stub = verifier_pb2_grpc.VerifierStub(channel)
    response: verifier_pb2.AppraiseResponse = await stub.Appraise(request, timeout=10)
    return response


async def _denied(channel: grpc.aio.Channel,
                  request: verifier_pb2.AppraiseRequest) -> tuple[grpc.StatusCode, KeybrokerError]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _appraise(channel, request)
    return exc.value.code(), error_from_rpc(exc.value, "verifier")


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_appraise_returns_signed_token(env: Env, tmp_path: Path) -> None:
    """A genuine simulator report with the right binding yields an EAR token per contract."""
    report, table = env.sim.attest(REPORT_DATA)
    request = _request(report, table, policies=("snp-demo", "snp-other", "snp-demo"))

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            token = (await _appraise(channel, request)).result_token
            second = (await _appraise(channel, request)).result_token  # warm chain cache
        env.signer.write_jwks(tmp_path / "jwks.json")
        key = jwt.PyJWKSet.from_json((tmp_path / "jwks.json").read_text()).keys[0]
        claims = jwt.decode(token, key.key, algorithms=["ES384"], audience="keybroker-broker")
        assert jwt.get_unverified_header(token) == {"alg": "ES384", "typ": "JWT",
                                                    "kid": env.signer.kid}
        digest = hashlib.sha256(request.evidence.SerializeToString(deterministic=True))
        assert claims["keybroker.evidence-digest"] == digest.hexdigest()
        assert claims["keybroker.report-data"] == REPORT_DATA.hex()
        assert claims["keybroker.request-id"] == "req-42"
        assert claims["keybroker.insecure"] is True
        assert set(claims["submods"]) == {"snp-demo", "snp-other"}
        demo = claims["submods"]["snp-demo"]
        assert demo["ear.status"] == "affirming"
        assert demo["ear.appraisal-policy-id"] == "snp-demo@1"
        assert demo["ear.veraison.annotated-evidence"]["measurement"] == MEASUREMENT.hex()
        assert demo["ear.veraison.annotated-evidence"]["insecure_root"] is True
        assert jwt.decode(second, key.key, algorithms=["ES384"],
                          audience="keybroker-broker")["jti"] != claims["jti"]

    run(go())


def test_wrong_report_data_is_binding(env: Env) -> None:
    """Evidence whose report_data differs from the expected binding is BINDING, with detail."""
    other = hashlib.sha512(b"another challenge").digest()
    report, table = env.sim.attest(other)

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            code, err = await _denied(channel, _request(report, table))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert err.category is Category.BINDING
        assert (err.expected, err.actual) == (REPORT_DATA.hex(), other.hex())

    run(go())


@pytest.mark.parametrize("policies", [("no-such-policy",), ("snp-demo", "no-such-policy"), ()])
def test_unknown_or_missing_policy_rejected(env: Env, policies: tuple[str, ...]) -> None:
    """An unknown policy id, or none at all, is MALFORMED: never a vacuous pass."""
    report, table = env.sim.attest(REPORT_DATA)

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            code, err = await _denied(channel, _request(report, table, policies=policies))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert err.category is Category.MALFORMED
        if policies:
            assert err.reason == "unknown policy" and err.actual == "no-such-policy"

    run(go())


def test_policy_violation_carries_category_and_rule(env: Env, tmp_path: Path) -> None:
    """A report failing one policy (VMPL 1 vs snp-demo) is PLATFORM_POLICY with its rule."""
    vmpl1 = SnpSimulator(SnpTestCa.load(env.ca_dir), measurement=MEASUREMENT, vmpl=1)
    report, table = vmpl1.attest(REPORT_DATA)

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            assert (await _appraise(channel, _request(report, table,
                                                      policies=("snp-other",)))).result_token
            code, err = await _denied(channel, _request(report, table,
                                                        policies=("snp-other", "snp-demo")))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert err.category is Category.PLATFORM_POLICY
        assert err.rule == "snp.allowed_vmpls" and err.actual == "VMPL=1"

    run(go())


def test_simulator_report_untrusted_in_secure_mode(env: Env) -> None:
    """Without the insecure switch the simulator root is not trusted: CHAIN_UNTRUSTED."""
    report, table = env.sim.attest(REPORT_DATA)

    async def go() -> None:
        async with serving(_servicer(env, insecure=False)) as (_, channel):
            code, err = await _denied(channel, _request(report, table))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert err.category is Category.CHAIN_UNTRUSTED

    run(go())


@pytest.mark.parametrize("kind", ["tdx", "sgx", "none"])
def test_evidence_kind_must_match_the_policy_platform(env: Env, kind: str) -> None:
    """TDX or SGX evidence under an SNP policy, or no evidence, is MALFORMED naming both."""
    request = _request(b"", b"")
    request.evidence.Clear()
    if kind == "tdx":
        request.evidence.tdx.quote = b"\x04\x00"
    elif kind == "sgx":
        request.evidence.sgx.quote = b"\x03\x00"

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            code, err = await _denied(channel, request)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert err.category is Category.MALFORMED
        if kind == "none":
            assert err.rule == "request.evidence" and err.actual == "none"
        else:
            assert err.rule == "request.policy_ids"
            assert "sev-snp" in err.reason and kind in err.reason

    run(go())


def test_bad_request_fields_are_malformed(env: Env) -> None:
    """A short expected_report_data or an empty nonce is MALFORMED before any verification."""
    report, table = env.sim.attest(REPORT_DATA)
    short = _request(report, table, expected=REPORT_DATA[:32])
    no_nonce = _request(report, table)
    no_nonce.nonce = b""

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            for request in (short, no_nonce):
                code, err = await _denied(channel, request)
                assert code is grpc.StatusCode.INVALID_ARGUMENT
                assert err.category is Category.MALFORMED

    run(go())


def test_oversized_request_rejected_without_token(env: Env) -> None:
    """A request above the size bound is refused by the transport (no token, no appraisal)."""
    report, _ = env.sim.attest(REPORT_DATA)
    request = _request(report, b"\0" * (MAX_BYTES + 1))

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await _appraise(channel, request)
        assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_from_rpc(exc.value, "verifier").category is Category.UNAVAILABLE

    run(go())


def test_unexpected_exception_fails_closed(env: Env) -> None:
    """An unexpected internal error (here: a broken clock) is answered UNAVAILABLE."""
    report, table = env.sim.attest(REPORT_DATA)

    def broken_clock() -> datetime:
        raise RuntimeError("clock exploded")

    async def go() -> None:
        async with serving(_servicer(env, clock=broken_clock)) as (_, channel):
            code, err = await _denied(channel, _request(report, table))
        assert code is grpc.StatusCode.UNAVAILABLE
        assert err.category is Category.UNAVAILABLE
        assert "clock exploded" not in err.reason

    run(go())


def test_health_serving_and_reflection(env: Env) -> None:
    """Health reports SERVING for the server and the Verifier; reflection lists the services."""

    async def go() -> None:
        async with serving(_servicer(env)) as (_, channel):
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                           timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([
                reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = set()
            async for answer in call:
                names |= {s.name for s in answer.list_services_response.service}
            assert SERVICE_NAME in names and "grpc.health.v1.Health" in names

    run(go())


def test_build_servicer_from_example_config(env: Env, tmp_path: Path) -> None:
    """The example config (with a fresh key) builds a servicer; insecure mode needs the flag."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    example = ROOT / "config"
    (config_dir / "verifier.toml").write_text((example / "verifier.toml").read_text())
    (config_dir / "policies").mkdir()
    for policy in (example / "policies").glob("*.yaml"):
        (config_dir / "policies" / policy.name).write_bytes(policy.read_bytes())
    (config_dir / "collateral").mkdir()
    signer = ResultSigner.generate()
    signer.write_private_key(config_dir / KEY_FILE)
    signer.write_jwks(config_dir / JWKS_FILE)
    config = load_config(config_dir / "verifier.toml")
    assert isinstance(build_servicer(config, insecure=False), VerifierServicer)
    assert set(load_policies(config.policies)) == {"snp-demo", "snp-strict", "tdx-demo",
                                                   "sgx-demo", "tpm-demo", "maa-demo",
                                                   "azsnp-demo", "aztdx-demo", "nitro-demo"}
    text = (config_dir / "verifier.toml").read_text()
    (config_dir / "verifier.toml").write_text(text.replace(
        "simulator_roots = []", f'simulator_roots = ["{env.ca_dir / "ark.pem"}"]'))
    insecure_config = load_config(config_dir / "verifier.toml")
    with pytest.raises(Malformed) as exc:
        build_servicer(insecure_config, insecure=False)
    assert exc.value.rule == "startup.insecure_guard"
    assert isinstance(build_servicer(insecure_config, insecure=True), VerifierServicer)


def test_duplicate_policy_names_refused(tmp_path: Path) -> None:
    """Two policy files with the same name are refused at start-up (MALFORMED)."""
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_bytes(_policy_text("same"))
    with pytest.raises(Malformed) as exc:
        load_policies([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert exc.value.category is Category.MALFORMED and "duplicate" in exc.value.reason
