"""Transport security through real verifier and broker processes started from the demo's
configs: plaintext and foreign CAs refused, the verifier's client-certificate rules, the agent's
pin, certificate reload without restart, and the agent identity / channel rows of
hostile-evidence.md (26: cross-session nonce, 30: relay)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from support.agent_tls import channel_binding, tls_kwargs
from support.demo_stack import demo_services

from attester_agent.client import get_secrets
from keybroker import binding
from keybroker.errors import Category, KeybrokerError
from keybroker.rpc_errors import error_from_rpc
from keybroker.tls import check_pin, client_credentials
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2, verifier_pb2, verifier_pb2_grpc
from keybroker.wrapping import AgentKeyPair, Suite
from keybroker_cli.demo import demo_collector
from keybroker_cli.demo_setup import (
    DEMO_AGENT,
    DEMO_INIT_DATA,
    DEMO_KEY_ID,
    DemoLayout,
    agent_tls_args,
    prepare,
)
from keybroker_cli.launcher import ServiceProcess, keybroker_command
from keybroker_cli.tls_cmd import TlsAuthority, TlsDir, init_tls

OTHER_AGENT = "other-agent"
_DER = Encoding.DER


@dataclass
class Env:
    layout: DemoLayout
    secret: bytes
    verifier: ServiceProcess
    broker: ServiceProcess
    foreign: TlsDir  # a second, unrelated CA with the same certificate names


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tls")
    layout = DemoLayout(root / "demo")
    secret = prepare(layout)
    TlsAuthority.load(layout.tls.root).issue(OTHER_AGENT, client=True)
    foreign = init_tls(root / "foreign", clients=("broker-client", DEMO_AGENT)).dir
    with demo_services(layout) as (verifier, broker):
        yield Env(layout, secret, verifier, broker, foreign)


def _category(call: Callable[[], object]) -> Category:
    with pytest.raises(KeybrokerError) as exc:
        call()
    return exc.value.category


def _release(env: Env, **kwargs: object) -> dict[str, bytes]:
    return get_secrets(env.broker.address, [DEMO_KEY_ID], demo_collector(env.layout, "snp"),
                       init_data=DEMO_INIT_DATA, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_tls_release_over_mutual_tls(env: Env) -> None:
    """The demo agent (its client certificate bound into the evidence) gets the secret."""
    assert _release(env, **tls_kwargs(env.layout)) == {DEMO_KEY_ID: env.secret}


def test_tls_broker_refuses_plaintext_clients(env: Env) -> None:
    """A client without TLS gets nothing from the broker started from the demo's config."""
    assert _category(lambda: _release(env)) is Category.UNAVAILABLE


def test_tls_broker_refuses_a_client_trusting_another_ca(env: Env) -> None:
    """An agent that trusts another CA does not accept the broker's certificate."""
    tls = env.foreign
    credentials = client_credentials(tls.ca, tls.cert(DEMO_AGENT), tls.key(DEMO_AGENT))
    assert _category(lambda: _release(env, credentials=credentials)) is Category.UNAVAILABLE


def test_tls_broker_requires_an_agent_certificate_of_its_ca(env: Env) -> None:
    """The demo broker requires agent certificates: none, or one of another CA, is refused."""
    tls = env.layout.tls
    anonymous = client_credentials(tls.ca)
    assert _category(lambda: _release(env, credentials=anonymous)) is Category.UNAVAILABLE
    # Trusts the right CA, but presents a certificate the broker's CA did not issue.
    key_pem = env.foreign.key(DEMO_AGENT).read_bytes()
    cert_pem = env.foreign.cert(DEMO_AGENT).read_bytes()
    stranger = grpc.ssl_channel_credentials(tls.ca.read_bytes(), key_pem, cert_pem)
    assert _category(lambda: _release(env, credentials=stranger)) is Category.UNAVAILABLE


def _appraise(env: Env, credentials: grpc.ChannelCredentials) -> KeybrokerError | None:
    with grpc.secure_channel(env.verifier.address, credentials) as channel:
        try:
            verifier_pb2_grpc.VerifierStub(channel).Appraise(
                verifier_pb2.AppraiseRequest(request_id="tls-probe"), timeout=10)
        except grpc.RpcError as exc:
            return error_from_rpc(exc, "verifier")
    return None


def test_tls_verifier_refuses_callers_without_an_allowed_client_certificate(env: Env) -> None:
    """The verifier (mutual TLS): no client certificate, one of another CA, or one of its CA
    whose name is not in allowed_clients are all refused; the broker's certificate is served
    (the empty probe then fails on its content, MALFORMED)."""
    tls = env.layout.tls
    none = _appraise(env, client_credentials(tls.ca))
    assert none is not None and none.category is Category.UNAVAILABLE
    foreign = grpc.ssl_channel_credentials(tls.ca.read_bytes(),
                                           env.foreign.key("broker-client").read_bytes(),
                                           env.foreign.cert("broker-client").read_bytes())
    other_ca = _appraise(env, foreign)
    assert other_ca is not None and other_ca.category is Category.UNAVAILABLE
    admin = _appraise(env, client_credentials(tls.ca, tls.cert("admin"), tls.key("admin")))
    assert admin is not None and admin.category is Category.PLATFORM_POLICY
    broker = _appraise(env, client_credentials(tls.ca, tls.cert("broker-client"),
                                               tls.key("broker-client")))
    assert broker is not None and broker.category is Category.MALFORMED


def test_tls_agent_pin(env: Env) -> None:
    """The agent's --pin-sha256: the broker certificate's digest passes, another is
    CHAIN_UNTRUSTED; the agent CLI refuses to attest with a wrong pin (exit 1)."""
    tls = env.layout.tls
    cert = x509.load_pem_x509_certificate(tls.cert("broker").read_bytes())
    digest = hashlib.sha256(cert.public_bytes(encoding=_DER)).hexdigest()
    check_pin(env.broker.address, tls.ca, digest, cert=tls.cert(DEMO_AGENT),
              key=tls.key(DEMO_AGENT))
    with pytest.raises(KeybrokerError) as exc:
        check_pin(env.broker.address, tls.ca, "00" * 32, cert=tls.cert(DEMO_AGENT),
                  key=tls.key(DEMO_AGENT))
    assert (exc.value.category, exc.value.rule) == (Category.CHAIN_UNTRUSTED, "tls.pin")
    done = subprocess.run(
        [sys.executable, "-m", "attester_agent.cli", "get-secret", "--broker",
         env.broker.address, *agent_tls_args(env.layout), "--pin-sha256", "ab" * 32,
         "--key-id", DEMO_KEY_ID, "--insecure-simulator", "--simulator-dir",
         str(env.layout.sim), "--init-data", str(env.layout.init_data)],
        capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 1 and "CHAIN_UNTRUSTED" in done.stderr


def _challenge(env: Env, agent: str) -> tuple[grpc.Channel, broker_pb2.Challenge]:
    tls = env.layout.tls
    channel = grpc.secure_channel(env.broker.address, client_credentials(
        tls.ca, tls.cert(agent), tls.key(agent)))
    stub = broker_pb2_grpc.KeyBrokerStub(channel)
    return channel, stub.GetChallenge(broker_pb2.GetChallengeRequest(
        tee=evidence_pb2.TEE_TYPE_SEV_SNP, key_ids=[DEMO_KEY_ID]), timeout=10)


def _release_request(env: Env, challenge: broker_pb2.Challenge,
                     channel_digest: bytes) -> broker_pb2.ReleaseKeyRequest:
    suite = Suite.X25519_HKDFSHA256_AES256GCM
    keypair = AgentKeyPair.generate(suite)
    report_data = binding.report_data(challenge.nonce, suite.value, keypair.public_bytes,
                                      binding.init_data_digest(DEMO_INIT_DATA), channel_digest)
    return broker_pb2.ReleaseKeyRequest(
        challenge_id=challenge.challenge_id,
        evidence=demo_collector(env.layout, "snp").collect(report_data),
        public_key=keypair.public_bytes, suite=evidence_pb2.HpkeSuite.ValueType(suite.wire),
        keys=[broker_pb2.KeyRef(key_id=DEMO_KEY_ID)], init_data=DEMO_INIT_DATA)


def _denied(channel: grpc.Channel, request: broker_pb2.ReleaseKeyRequest) -> Category:
    with pytest.raises(grpc.RpcError) as exc:
        broker_pb2_grpc.KeyBrokerStub(channel).ReleaseKey(request, timeout=30)
    return error_from_rpc(exc.value, "broker").category


def test_tls_row26_challenge_of_agent_a_used_by_agent_b_is_freshness(env: Env) -> None:
    """Row 26: a challenge issued to agent A's certificate, consumed by agent B: FRESHNESS."""
    channel_a, challenge = _challenge(env, DEMO_AGENT)
    channel_b, _ = _challenge(env, OTHER_AGENT)
    with channel_a, channel_b:
        b_binding = channel_binding_of(env, OTHER_AGENT)
        request = _release_request(env, challenge, b_binding)
        assert _denied(channel_b, request) is Category.FRESHNESS


def test_tls_row30_relayed_evidence_is_binding(env: Env) -> None:
    """Row 30 (relay / cuckoo): a genuine TEE quotes the nonce for its own TLS identity (or
    none), and a relay holding another TLS key submits it: BINDING."""
    for quoted in (b"", channel_binding_of(env, OTHER_AGENT)):
        channel, challenge = _challenge(env, DEMO_AGENT)
        with channel:
            assert _denied(channel, _release_request(env, challenge, quoted)) is \
                Category.BINDING
    channel, challenge = _challenge(env, DEMO_AGENT)
    with channel:
        response = broker_pb2_grpc.KeyBrokerStub(channel).ReleaseKey(
            _release_request(env, challenge, channel_binding(env.layout)), timeout=30)
    assert [k.key_id for k in response.keys] == [DEMO_KEY_ID]


def channel_binding_of(env: Env, agent: str) -> bytes:
    cert = x509.load_pem_x509_certificate(env.layout.tls.cert(agent).read_bytes())
    return hashlib.sha256(cert.public_bytes(encoding=_DER)).digest()


def _served_digest(env: Env, address: str, *, client: str) -> str:
    tls = env.layout.tls
    cert = x509.load_pem_x509_certificate(tls.cert("verifier").read_bytes())
    expected = hashlib.sha256(cert.public_bytes(encoding=_DER)).hexdigest()
    deadline = time.monotonic() + 15
    while True:
        try:
            check_pin(address, tls.ca, expected, cert=tls.cert(client), key=tls.key(client))
        except KeybrokerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
            continue
        return expected


def test_tls_certificate_reload_without_restart(env: Env) -> None:
    """A re-issued verifier certificate is served without a restart: picked up from the
    changed files, and again after SIGHUP; broker -> verifier keeps working throughout."""
    ca = TlsAuthority.load(env.layout.tls.root)
    pid = env.verifier.pid
    for trigger in ("file change", "SIGHUP"):
        ca.issue("verifier", client=False, overwrite=True)
        if trigger == "SIGHUP":
            os.kill(pid, signal.SIGHUP)
        _served_digest(env, env.verifier.address, client="broker-client")
        assert env.verifier.popen.poll() is None and env.verifier.pid == pid
        assert _release(env, **tls_kwargs(env.layout)) == {DEMO_KEY_ID: env.secret}


def test_tls_expired_or_unreadable_certificate_refuses_start(env: Env) -> None:
    """An expired server certificate, or a missing key file, stops start-up (exit 2) with an
    error naming the file."""
    ca = TlsAuthority.load(env.layout.tls.root)
    past = datetime.now(UTC) - timedelta(days=10)
    cert, key = ca.issue("expired-verifier", client=False, not_before=past - timedelta(days=1),
                         not_after=past)
    missing = env.layout.verifier / "missing-key.pem"
    config = env.layout.verifier_config.read_text()
    for bad_cert, bad_key, word, named in ((cert, key, "expired", cert),
                                           (env.layout.tls.cert("verifier"), missing,
                                            "cannot read", missing)):
        bad = env.layout.verifier / f"bad-{word.replace(' ', '-')}.toml"
        bad.write_text(config.replace(str(env.layout.tls.cert("verifier")), str(bad_cert))
                       .replace(str(env.layout.tls.key("verifier")), str(bad_key)))
        done = subprocess.run(keybroker_command("verifier", "serve", "--config", str(bad),
                                                "--insecure-simulator"),
                              capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        assert word in done.stderr and str(named) in done.stderr, done.stderr


def test_tls_plaintext_flag_is_loopback_only_and_loud(env: Env) -> None:
    """--insecure-plaintext refuses a non-loopback listen address and logs INSECURE."""
    text = env.layout.broker_config.read_text().replace('listen = "127.0.0.1:0"',
                                                          'listen = "0.0.0.0:0"')
    config = env.layout.broker / "wide.toml"
    config.write_text(text)
    done = subprocess.run(keybroker_command("broker", "serve", "--config", str(config),
                                            "--insecure-simulator", "--insecure-plaintext"),
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode != 0 and "loopback" in done.stderr
    os.unlink(config)
