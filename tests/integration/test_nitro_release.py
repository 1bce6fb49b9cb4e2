"""Integration on AWS Nitro Enclaves with real processes: verifier and broker on loopback (the
demo deployment for ``--tee nitro``: its policy pins the image's PCR0-2 and requires init-data
in PCR16), a release through the attester agent process on the simulated NSM, and the denials
issue 13 names: debug-mode PCRs, a wrong PCR2, a stale timestamp and a swapped public key;
plus a nonce of another challenge and init-data the enclave did not measure.

Each denial is checked three ways: the typed category reaches the caller, no key left the
broker, and the broker's audit log holds a denial record with that category."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from support.demo_stack import prepared_services, served_env
from support.release_attempts import (
    Env,
    agent,
    assert_denied,
    build_attempt,
    open_released,
    send,
)

from attester_agent.collectors.nitro_nsm import NitroNsmCollector
from attester_agent.simulator.nitro import NitroTestCa, SimulatedNsm, image_pcrs
from keybroker.errors import Category
from keybroker.v1 import evidence_pb2
from keybroker_cli.demo_nitro import DEMO_IMAGE_PCR0
from keybroker_cli.demo_setup import DEMO_INIT_DATA, DEMO_KEY_ID, agent_tls_args

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The prepared ``--tee nitro`` deployment, its verifier and broker running."""
    with (prepared_services(tmp_path_factory.mktemp("nitro-release"), tee="nitro") as served,
          served_env(served) as env):
        yield env


def enclave(env: Env, *, pcrs: dict[int, bytes] | None = None,
            clock: Callable[[], datetime] | None = None,
            init_data: bytes = DEMO_INIT_DATA) -> NitroNsmCollector:
    """A collector on a simulated NSM of the demo CA (the demo image unless ``pcrs``)."""
    nsm = SimulatedNsm(NitroTestCa.load(env.layout.sim / "nitro"),
                       pcrs=pcrs if pcrs is not None else image_pcrs(DEMO_IMAGE_PCR0),
                       clock=clock or (lambda: datetime.now(UTC)), init_data=init_data)
    return NitroNsmCollector(transport=nsm.call, name="nitro-simulator")


class Substituting:
    """A collector that asks the NSM for another nonce or public key than the request's."""

    def __init__(self, inner: NitroNsmCollector, *, nonce: bytes | None = None,
                 public_key: bytes | None = None) -> None:
        self.inner, self.nonce, self.public_key = inner, nonce, public_key
        self.name, self.tee = inner.name, inner.tee

    def available(self) -> bool:
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        return self.inner.collect(report_data)

    def collect_for(self, report_data: bytes, *, nonce: bytes,
                    public_key: bytes) -> evidence_pb2.Evidence:
        return self.inner.collect_for(report_data, nonce=self.nonce or nonce,
                                      public_key=self.public_key or public_key)


def test_nitro_release_through_the_agent_process(env: Env) -> None:
    """`attester-agent get-secret --sim-tee nitro` presents the init-data the simulated
    enclave measured into PCR16 and receives the secret."""
    out = env.layout.root / "nitro-secret"
    init = env.layout.root / "init-data.toml"
    init.write_bytes(DEMO_INIT_DATA)
    done = agent("get-secret", "--broker", env.broker.address, *agent_tls_args(env.layout),
                 "--key-id", DEMO_KEY_ID, "--out", str(out), "--init-data", str(init),
                 "--insecure-simulator", "--simulator-dir", str(env.layout.sim),
                 "--sim-tee", "nitro", "--sim-measurement", DEMO_IMAGE_PCR0.hex())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == env.secret


def test_nitro_release_in_process(env: Env) -> None:
    """The demo enclave's document releases the secret."""
    attempt = build_attempt(env, enclave(env))
    assert open_released(attempt, send(env, attempt.request)) == env.secret


def test_nitro_debug_mode_is_platform_policy(env: Env) -> None:
    """PCR0-2 all zero (a debug-mode enclave): PLATFORM_POLICY."""
    attempt = build_attempt(env, enclave(env, pcrs=image_pcrs(debug=True)))
    err = assert_denied(env, attempt, Category.PLATFORM_POLICY)
    assert "debug mode" in err.reason


def test_nitro_wrong_pcr2_is_measurement(env: Env) -> None:
    """The demo image with another application (PCR2): MEASUREMENT naming PCR2."""
    pcrs = image_pcrs(DEMO_IMAGE_PCR0)
    pcrs[2] = bytes(range(48))
    err = assert_denied(env, build_attempt(env, enclave(env, pcrs=pcrs)), Category.MEASUREMENT)
    assert "PCR2" in err.reason


def test_nitro_stale_timestamp_is_freshness(env: Env) -> None:
    """A document made ten minutes ago (its leaf still valid): FRESHNESS."""
    then = datetime.now(UTC) - timedelta(minutes=10)
    err = assert_denied(env, build_attempt(env, enclave(env, clock=lambda: then)),
                        Category.FRESHNESS)
    assert "timestamp" in err.reason


def test_nitro_swapped_public_key_is_binding(env: Env) -> None:
    """The document carries another public key than the one the agent sent: BINDING."""
    collector = Substituting(enclave(env), public_key=b"\x04" + b"\x42" * 32)
    err = assert_denied(env, build_attempt(env, collector), Category.BINDING)
    assert "public_key" in err.reason


def test_nitro_nonce_of_another_challenge_is_freshness(env: Env) -> None:
    """The document's nonce is not the challenge's: FRESHNESS."""
    collector = Substituting(enclave(env), nonce=b"\x00" * 32)
    err = assert_denied(env, build_attempt(env, collector), Category.FRESHNESS)
    assert "nonce" in err.reason


def test_nitro_init_data_not_measured_is_measurement(env: Env) -> None:
    """The agent presents init-data whose digest is not in PCR16: MEASUREMENT."""
    collector = enclave(env, init_data=b'[workload]\nname = "other"\n')
    err = assert_denied(env, build_attempt(env, collector), Category.MEASUREMENT)
    assert "PCR16" in err.reason
