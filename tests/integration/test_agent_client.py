"""The agent's release flow against a real grpc.aio KeyBroker servicer on loopback.

The servicer is written here: it hands out challenges, checks the binding of the evidence to
the nonce, suite, public key and init-data, and seals secrets with keybroker.wrapping. It does
not verify signatures (that is the verifier's job, tested elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.paths import VECTORS

from attester_agent.cli import main
from attester_agent.client import get_secrets
from attester_agent.simulator.snp import SnpTestCa
from keybroker import binding
from keybroker.errors import (
    BindingMismatch,
    Category,
    FreshnessError,
    KeybrokerError,
    MeasurementMismatch,
)
from keybroker.evidence.snp_report import build_report, parse_report
from keybroker.rpc_errors import abort
from keybroker.tls import certificate_digest, peer_certificate
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import Suite, load_public_key, release_info, seal

BASE_REPORT = VECTORS / "sev-snp/teekit-gcp-milan-v5/sev-gcp.bin"
SECRETS = {"demo/disk": os.urandom(32), "demo/api": b"api-token\x00\xff"}
KEY_VERSION = 4


class ReportCollector:
    """A collector returning an (unsigned) SNP report that carries the given report_data."""

    name = "test-report"
    tee = evidence_pb2.TEE_TYPE_SEV_SNP

    def __init__(self, *, tamper: bool = False) -> None:
        self.tamper = tamper
        self.seen: list[bytes] = []

    def available(self) -> bool:
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        self.seen.append(report_data)
        data = bytes(64) if self.tamper else report_data
        report = build_report(parse_report(BASE_REPORT.read_bytes()).with_changes(
            report_data=data))
        return evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(report=report))


@dataclass
class TestBroker(broker_pb2_grpc.KeyBrokerServicer):
    """A minimal broker: single-use challenges, binding check, HPKE sealing."""

    __test__ = False

    suites: list[int] = field(default_factory=lambda: [1, 2, 3])
    deny: KeybrokerError | None = None
    mode: str = "ok"  # "ok" | "drop-key" | "wrong-info"
    challenges: dict[str, tuple[bytes, list[str]]] = field(default_factory=dict)
    requests: list[broker_pb2.ReleaseKeyRequest] = field(default_factory=list)
    challenge_requests: list[broker_pb2.GetChallengeRequest] = field(default_factory=list)

    async def GetChallenge(
        self, request: broker_pb2.GetChallengeRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.Challenge:
        self.challenge_requests.append(request)
        cid = uuid.uuid4().hex
        nonce = os.urandom(32)
        self.challenges[cid] = (nonce, list(request.key_ids))
        return broker_pb2.Challenge(challenge_id=cid, nonce=nonce, ttl_seconds=60,
                                    suites=self.suites)

    async def ReleaseKey(
        self, request: broker_pb2.ReleaseKeyRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.ReleaseKeyResponse:
        self.requests.append(request)
        if self.deny is not None:
            await abort(context, self.deny, request.request_id)
        if request.challenge_id not in self.challenges:
            await abort(context, FreshnessError("challenge unknown or consumed"),
                        request.request_id)
        nonce, key_ids = self.challenges.pop(request.challenge_id)
        suite = Suite.from_wire(request.suite)
        peer = peer_certificate(context)
        expected = binding.report_data(nonce, suite.value, request.public_key,
                                       binding.init_data_digest(request.init_data),
                                       certificate_digest(peer) if peer else b"")
        if parse_report(request.evidence.snp.report).report_data != expected:
            await abort(context, BindingMismatch("report_data does not match"),
                        request.request_id)
        public_key = load_public_key(suite, request.public_key)
        wrapped = []
        for ref in request.keys:
            assert ref.key_id in key_ids
            cid = request.challenge_id if self.mode != "wrong-info" else "other-challenge"
            sealed = seal(suite, public_key, SECRETS[ref.key_id],
                          release_info(ref.key_id, KEY_VERSION, cid))
            wrapped.append(broker_pb2.WrappedKey(key_id=ref.key_id, version=KEY_VERSION,
                                                 sealed=sealed))
        if self.mode == "drop-key":
            wrapped = wrapped[:-1]
        return broker_pb2.ReleaseKeyResponse(keys=wrapped, request_id=request.request_id,
                                             result_token="test-token")


@dataclass
class RunningBroker:
    """A TestBroker served on loopback."""

    addr: str
    servicer: TestBroker


@contextlib.contextmanager
def serve(
    servicer: TestBroker, credentials: grpc.ServerCredentials | None = None
) -> Iterator[int]:
    """Serve ``servicer`` with grpc.aio on 127.0.0.1 (free port) in a background loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        broker_pb2_grpc.add_KeyBrokerServicer_to_server(servicer, server)
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    """A TestBroker on loopback without TLS."""
    servicer = TestBroker()
    with serve(servicer) as port:
        yield RunningBroker(f"127.0.0.1:{port}", servicer)


def test_get_secrets_returns_every_key(broker: RunningBroker) -> None:
    """Two keys come back opened, with the exact secret bytes."""
    collector = ReportCollector()
    got = get_secrets(broker.addr, ["demo/disk", "demo/api"], collector, timeout=10)
    assert got == SECRETS
    (challenge_req,) = broker.servicer.challenge_requests
    assert challenge_req.tee == evidence_pb2.TEE_TYPE_SEV_SNP
    assert list(challenge_req.key_ids) == ["demo/disk", "demo/api"]
    (req,) = broker.servicer.requests
    assert req.suite == Suite.X25519_HKDFSHA256_AES256GCM.wire  # the broker's first
    assert [(k.key_id, k.version) for k in req.keys] == [("demo/disk", 0), ("demo/api", 0)]
    assert uuid.UUID(req.request_id).version == 4
    assert collector.seen == [parse_report(req.evidence.snp.report).report_data]


@pytest.mark.parametrize("suite", list(Suite))
def test_requested_suite_is_used(broker: RunningBroker, suite: Suite) -> None:
    """Every suite works end to end when requested explicitly."""
    got = get_secrets(broker.addr, ["demo/disk"], ReportCollector(), suite=suite, timeout=10)
    assert got == {"demo/disk": SECRETS["demo/disk"]}
    assert broker.servicer.requests[0].suite == suite.wire


def test_first_supported_offered_suite_is_chosen(broker: RunningBroker) -> None:
    """Without --suite the agent takes the broker's first suite it supports."""
    broker.servicer.suites = [99, Suite.P384_HKDFSHA384_AES256GCM.wire]
    get_secrets(broker.addr, ["demo/disk"], ReportCollector(), timeout=10)
    assert broker.servicer.requests[0].suite == Suite.P384_HKDFSHA384_AES256GCM.wire


def test_unoffered_suite_is_refused_before_release(broker: RunningBroker) -> None:
    """A requested suite the broker does not offer is MALFORMED and nothing is sent."""
    broker.servicer.suites = [Suite.X25519_HKDFSHA256_AES256GCM.wire]
    with pytest.raises(KeybrokerError) as exc:
        get_secrets(broker.addr, ["demo/disk"], ReportCollector(),
                    suite=Suite.P384_HKDFSHA384_AES256GCM, timeout=10)
    assert exc.value.category is Category.MALFORMED
    assert broker.servicer.requests == []


def test_init_data_is_bound_and_sent(broker: RunningBroker) -> None:
    """The init-data travels with the request and its digest is in the binding."""
    init_data = b'{"image": "sha256:abc"}'
    got = get_secrets(broker.addr, ["demo/api"], ReportCollector(), init_data=init_data,
                      timeout=10)
    assert got == {"demo/api": SECRETS["demo/api"]}
    assert broker.servicer.requests[0].init_data == init_data


def test_denial_surfaces_as_typed_error(broker: RunningBroker) -> None:
    """A Denial in trailing metadata becomes the typed error with its category."""
    broker.servicer.deny = MeasurementMismatch("launch digest not approved")
    with pytest.raises(KeybrokerError) as exc:
        get_secrets(broker.addr, ["demo/disk"], ReportCollector(), timeout=10)
    assert exc.value.category is Category.MEASUREMENT
    assert isinstance(exc.value, MeasurementMismatch)
    assert exc.value.reason == "launch digest not approved"
    assert isinstance(exc.value.__cause__, grpc.RpcError)


def test_wrong_binding_is_denied(broker: RunningBroker) -> None:
    """Evidence that does not carry the binding is refused by the broker (BINDING)."""
    with pytest.raises(KeybrokerError) as exc:
        get_secrets(broker.addr, ["demo/disk"], ReportCollector(tamper=True), timeout=10)
    assert exc.value.category is Category.BINDING


def test_missing_key_in_response_is_malformed(broker: RunningBroker) -> None:
    """A response lacking a requested key is not a partial success."""
    broker.servicer.mode = "drop-key"
    with pytest.raises(KeybrokerError) as exc:
        get_secrets(broker.addr, ["demo/disk", "demo/api"], ReportCollector(), timeout=10)
    assert exc.value.category is Category.MALFORMED


def test_secret_sealed_under_other_info_does_not_open(broker: RunningBroker) -> None:
    """A secret sealed for another challenge fails to open (BINDING)."""
    broker.servicer.mode = "wrong-info"
    with pytest.raises(KeybrokerError) as exc:
        get_secrets(broker.addr, ["demo/disk"], ReportCollector(), timeout=10)
    assert exc.value.category is Category.BINDING


def test_unreachable_broker_is_unavailable() -> None:
    """No broker listening: UNAVAILABLE, nothing collected."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    collector = ReportCollector()
    with pytest.raises(KeybrokerError) as exc:
        get_secrets(f"127.0.0.1:{port}", ["demo/disk"], collector, timeout=2)
    assert exc.value.category is Category.UNAVAILABLE
    assert collector.seen == []


# --- the attester-agent command against the same broker, with the INSECURE simulator -------


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulator test CA on disk."""
    directory = tmp_path_factory.mktemp("sim-ca")
    SnpTestCa.generate("Milan").save(directory)
    return directory


def _cli(broker: RunningBroker, sim_dir: Path, *extra: str) -> list[str]:
    transport = [] if "--ca" in extra else ["--insecure-plaintext"]
    return ["get-secret", "--broker", broker.addr, *transport, "--insecure-simulator",
            "--simulator-dir", str(sim_dir), "--timeout", "10", *extra]


def test_cli_writes_secret_file_0600(broker: RunningBroker, sim_dir: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """get-secret --out writes exactly the released bytes with mode 0600, nothing on stdout,
    and says on stderr where it wrote which key (never the secret)."""
    out = tmp_path / "disk.key"
    assert main(_cli(broker, sim_dir, "--key-id", "demo/disk", "--out", str(out))) == 0
    assert out.read_bytes() == SECRETS["demo/disk"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"wrote demo/disk ({len(SECRETS['demo/disk'])} bytes) to {out} (mode 0600)" in (
        captured.err)
    assert SECRETS["demo/disk"].hex() not in captured.err


def test_cli_writes_raw_secret_to_stdout(broker: RunningBroker, sim_dir: Path,
                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Without --out the raw secret bytes go to stdout."""
    code = main(_cli(broker, sim_dir, "--key-id", "demo/api", "--collector", "simulator"))
    assert code == 0
    assert capsysbinary.readouterr().out == SECRETS["demo/api"]


def test_cli_several_keys_one_out_each(broker: RunningBroker, sim_dir: Path,
                                       tmp_path: Path) -> None:
    """Each --key-id goes to its own --out, in order; init-data and suite are honoured."""
    init = tmp_path / "init.json"
    init.write_bytes(b'{"image": "demo"}')
    a, b = tmp_path / "a", tmp_path / "b"
    code = main(_cli(broker, sim_dir, "--key-id", "demo/disk", "--out", str(a),
                     "--key-id", "demo/api", "--out", str(b), "--init-data", str(init),
                     "--suite", "p384-hkdfsha384-aes256gcm", "--sim-version", "5",
                     "--sim-measurement", "ab" * 48, "--sim-policy", "0x30000",
                     "--sim-vmpl", "1"))
    assert code == 0
    assert a.read_bytes() == SECRETS["demo/disk"]
    assert b.read_bytes() == SECRETS["demo/api"]
    (req,) = broker.servicer.requests
    assert req.init_data == init.read_bytes()
    assert req.suite == Suite.P384_HKDFSHA384_AES256GCM.wire
    report = parse_report(req.evidence.snp.report)
    assert (report.version, report.vmpl, report.measurement) == (5, 1, bytes([0xAB]) * 48)
    assert report.host_data == hashlib.sha256(init.read_bytes()).digest()


def test_cli_denial_prints_category_and_exits_1(
    broker: RunningBroker, sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A denial prints 'denied: CATEGORY: message', exits 1 and writes no file."""
    broker.servicer.deny = MeasurementMismatch("launch digest not approved")
    out = tmp_path / "disk.key"
    assert main(_cli(broker, sim_dir, "--key-id", "demo/disk", "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert "denied: MEASUREMENT: launch digest not approved" in err
    assert not out.exists()


def test_cli_refuses_symlinked_out(broker: RunningBroker, sim_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--out pointing at a symlink is refused (exit 1); the link target stays untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "disk.key"
    link.symlink_to(victim)
    assert main(_cli(broker, sim_dir, "--key-id", "demo/disk", "--out", str(link))) == 1
    assert victim.read_bytes() == b"keep"
    assert "symbolic link" in capsys.readouterr().err
    assert broker.servicer.challenge_requests == []  # refused before attesting


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_cli_mutual_tls(sim_dir: Path, tmp_path: Path) -> None:
    """--ca/--cert/--key give a mutual-TLS channel; without a client cert the call fails."""
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("test ca", ca_key, None, ca_key)
    server_cert = _cert("broker", server_key, ca, ca_key, server=True)
    client_cert = _cert("agent", client_key, ca, ca_key)
    files = {"ca.pem": _pem(ca), "client.pem": _pem(client_cert), "client-key.pem":
             _pem(client_key)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    creds = grpc.ssl_server_credentials([(_pem(server_key), _pem(server_cert))],
                                        root_certificates=_pem(ca), require_client_auth=True)
    servicer = TestBroker()
    with serve(servicer, creds) as port:
        running = RunningBroker(f"127.0.0.1:{port}", servicer)
        out = tmp_path / "secret"
        code = main(_cli(running, sim_dir, "--key-id", "demo/disk", "--out", str(out),
                         "--ca", str(tmp_path / "ca.pem"), "--cert",
                         str(tmp_path / "client.pem"), "--key", str(tmp_path / "client-key.pem")))
        assert code == 0
        assert out.read_bytes() == SECRETS["demo/disk"]
        code = main(_cli(running, sim_dir, "--key-id", "demo/disk", "--out",
                         str(tmp_path / "other"), "--ca", str(tmp_path / "ca.pem"),
                         "--timeout", "3"))
        assert code == 1
        assert not (tmp_path / "other").exists()
