"""Shared helpers for the broker tests (no tests here): an EAR signer in the contract's format,
an in-test keybroker.v1.Verifier gRPC servicer, fake SNP evidence and a broker on tmp files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from broker.config import BrokerConfig, load_config
from broker.kek import FileBackend, FileKek
from broker.release import Broker
from broker.server import RunningServer, close_broker, start_server
from broker.service import build_broker
from keybroker.errors import BindingMismatch, KeybrokerError
from keybroker.rpc_errors import abort
from keybroker.server_limits import MAX_CONCURRENT_RPCS
from keybroker.v1 import evidence_pb2, verifier_pb2, verifier_pb2_grpc

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
AUDIENCE = "keybroker-broker"
POLICY = "snp-demo"
T0 = 1_750_000_000.0
REPORT_DATA_OFFSET = 0x50


class FakeClock:
    """A settable wall clock (seconds since the epoch)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class EarSigner:
    """Signs EAR JWTs like the verifier: ES256/ES384, header {alg, typ, kid=RFC 7638}."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        curve = ec.SECP256R1() if alg == "ES256" else ec.SECP384R1()
        self.size = 32 if alg == "ES256" else 48
        self.crv = "P-256" if alg == "ES256" else "P-384"
        self.key = ec.generate_private_key(curve)
        self.kid = self.thumbprint()

    def members(self) -> dict[str, str]:
        nums = self.key.public_key().public_numbers()
        return {"crv": self.crv, "kty": "EC", "x": b64url(nums.x.to_bytes(self.size, "big")),
                "y": b64url(nums.y.to_bytes(self.size, "big"))}

    def thumbprint(self) -> str:
        canonical = json.dumps(self.members(), sort_keys=True, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def jwk(self) -> dict[str, str]:
        return {**self.members(), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps({"keys": [self.jwk()]}))
        return path

    def claims(self, *, now: float, nonce: bytes, request_id: str, evidence_digest: str,
               report_data: bytes, statuses: dict[str, str] | None = None,
               insecure: bool = False, ttl: int = 60) -> dict[str, object]:
        iat = int(now)
        statuses = statuses if statuses is not None else {POLICY: "affirming"}
        return {
            "eat_profile": EAR_PROFILE,
            "iat": iat, "nbf": iat, "exp": iat + ttl,
            "jti": "00" * 16,
            "aud": AUDIENCE,
            "ear.verifier-id": {"developer": "keybroker", "build": "test"},
            "eat_nonce": b64url(nonce),
            "keybroker.request-id": request_id,
            "keybroker.evidence-digest": evidence_digest,
            "keybroker.report-data": report_data.hex(),
            "keybroker.insecure": insecure,
            "submods": {
                name: {
                    "ear.status": status,
                    "ear.trustworthiness-vector": {"instance-identity": 2, "hardware": 2},
                    "ear.appraisal-policy-id": f"{name}@1",
                    "keybroker.policy-digest": "ab" * 32,
                    "ear.veraison.annotated-evidence": {"platform": "sev-snp"},
                }
                for name, status in statuses.items()
            },
        }

    def sign(self, claims: dict[str, object], *, headers: dict[str, object] | None = None,
             alg: str | None = None, key: object = None) -> str:
        hdr: dict[str, object] = {"kid": self.kid, "typ": "JWT"}
        if headers:
            hdr.update(headers)
        return jwt.encode(claims, key if key is not None else self.key,  # type: ignore[arg-type]
                          algorithm=alg or self.alg, headers=hdr)


def snp_evidence(report_data: bytes, *, measurement: bytes = b"\x11" * 48
                 ) -> evidence_pb2.Evidence:
    """Stand-in SNP evidence carrying ``report_data`` at the SNP REPORT_DATA offset."""
    report = bytearray(1184)
    report[REPORT_DATA_OFFSET:REPORT_DATA_OFFSET + 64] = report_data
    report[0x90:0x90 + 48] = measurement
    return evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(report=bytes(report)))


Mutator = Callable[[dict[str, object], verifier_pb2.AppraiseRequest], str | None]


@dataclass
class FakeVerifier(verifier_pb2_grpc.VerifierServicer):
    """An in-test Verifier: checks the binding like the real one and signs an EAR token.

    ``deny`` makes it reject with that typed error; ``mutate`` may edit the claims (or return a
    complete token string to send instead); ``delay`` sleeps before answering.
    """

    signer: EarSigner
    clock: FakeClock
    deny: KeybrokerError | None = None
    mutate: Mutator | None = None
    delay: float = 0.0
    statuses: dict[str, str] | None = None
    insecure: bool = False
    requests: list[verifier_pb2.AppraiseRequest] = field(default_factory=list)

    async def Appraise(self, request: verifier_pb2.AppraiseRequest, context: object
                       ) -> verifier_pb2.AppraiseResponse:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.deny is not None:
            await abort(context, self.deny, request.request_id, with_detail=True)  # type: ignore[arg-type]
        carried = request.evidence.snp.report[REPORT_DATA_OFFSET:REPORT_DATA_OFFSET + 64]
        if carried != request.expected_report_data:
            await abort(context, BindingMismatch(  # type: ignore[arg-type]
                "report_data mismatch", rule="snp.report_data",
                expected=request.expected_report_data.hex(), actual=carried.hex()),
                request.request_id, with_detail=True)
        digest = hashlib.sha256(request.evidence.SerializeToString(deterministic=True)).hexdigest()
        statuses = self.statuses or {name: "affirming" for name in request.policy_ids}
        claims = self.signer.claims(now=self.clock(), nonce=request.nonce,
                                    request_id=request.request_id, evidence_digest=digest,
                                    report_data=carried, statuses=statuses,
                                    insecure=self.insecure)
        token = None
        if self.mutate is not None:
            token = self.mutate(claims, request)
        return verifier_pb2.AppraiseResponse(result_token=token or self.signer.sign(claims))


async def start_fake_verifier(servicer: FakeVerifier) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


RULES = (
    "kind: ReleaseRules\n"
    "name: release-rules\n"
    "rules:\n"
    "  - name: demo-keys\n"
    '    keys: "demo/*"\n'
    f"    policy: {POLICY}\n"
    "    accept_warning: false\n"
)


def write_config(tmp: Path, *, verifier: str, signer: EarSigner, rules: str = RULES,
                 ttl: int = 60, timeout: float = 2.0, insecure: bool = False,
                 init_kek: bool = True) -> BrokerConfig:
    """Write a broker config, rules, pinned JWKS (and KEK) under ``tmp``; return it loaded."""
    tmp.mkdir(parents=True, exist_ok=True)
    signer.write_jwks(tmp / "verifier-jwks.json")
    (tmp / "release-rules.yaml").write_text(rules)
    (tmp / "broker.toml").write_text(
        "[broker]\n"
        'listen = "127.0.0.1:0"\n'
        f'verifier = "{verifier}"\n'
        'release_rules = "release-rules.yaml"\n'
        f'verifier_alg = "{signer.alg}"\n'
        f"verifier_timeout_seconds = {timeout}\n"
        f"challenge_ttl_seconds = {ttl}\n"
        f"accept_insecure_results = {'true' if insecure else 'false'}\n"
    )
    if init_kek and not (tmp / "kek.bin").exists():
        FileKek.create(tmp / "kek.bin")
        FileBackend(tmp / "kek.bin").ensure_audit_key()
    return load_config(tmp / "broker.toml")


@dataclass
class Stack:
    """A broker server wired to a fake verifier, both on loopback."""

    broker: Broker
    running: RunningServer
    verifier: FakeVerifier
    verifier_server: grpc.aio.Server | None
    clock: FakeClock
    config: BrokerConfig

    async def close(self) -> None:
        await self.running.stop(None)
        if self.verifier_server is not None:
            await self.verifier_server.stop(None)
        await close_broker(self.broker)


async def start_stack(tmp: Path, *, verifier_up: bool = True, ttl: int = 60,
                      timeout: float = 2.0, rules: str = RULES,
                      max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS) -> Stack:
    clock = FakeClock()
    signer = EarSigner()
    fake = FakeVerifier(signer=signer, clock=clock)
    vserver: grpc.aio.Server | None = None
    if verifier_up:
        vserver, vaddr = await start_fake_verifier(fake)
    else:
        vaddr = "127.0.0.1:1"  # nothing listens there: connection refused
    config = write_config(tmp, verifier=vaddr, signer=signer, ttl=ttl, timeout=timeout,
                          rules=rules)
    # The release logic under test here runs on loopback in plaintext (the explicit insecure
    # mode); transport security has its own tests through real processes (test_tls_*).
    broker = build_broker(config, clock=clock, plaintext=True)
    running = await start_server(broker, config.listen, tls=None,
                                 max_concurrent_rpcs=max_concurrent_rpcs)
    return Stack(broker, running, fake, vserver, clock, config)
