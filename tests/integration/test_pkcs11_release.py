"""A broker whose KEK lives in a real SoftHSM2 token, end to end through real processes: init
creates the KEK in the token (no key file), put, release, KEK rotation while serving, release
again, and the HSM going away (UNAVAILABLE, nothing released, audited; health NOT_SERVING)
and coming back."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.agent_tls import secure_channel, tls_kwargs
from support.demo_stack import demo_services
from support.softhsm import SoftHsmToken

from attester_agent.client import get_secrets
from keybroker.errors import Category, KeybrokerError
from keybroker_cli.demo import demo_collector, demo_init_data
from keybroker_cli.demo_setup import DEMO_KEY_ID, DemoLayout, prepare
from keybroker_cli.launcher import ServiceProcess, keybroker_command


@dataclass
class Env:
    layout: DemoLayout
    secret: bytes
    broker: ServiceProcess
    token: SoftHsmToken


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHsmToken) -> Iterator[Env]:
    layout = DemoLayout(tmp_path_factory.mktemp("pkcs11"),
                        broker_settings=softhsm_token.broker_settings("e2e-kek")
                        + "health_check_seconds = 0.2\n")
    secret = prepare(layout)
    with demo_services(layout) as (_, broker):
        yield Env(layout, secret, broker, softhsm_token)


def _release(env: Env) -> dict[str, bytes]:
    return get_secrets(env.broker.address, [DEMO_KEY_ID], demo_collector(env.layout, "snp"),
                       init_data=demo_init_data(env.layout, "snp"), timeout=20,
                       **tls_kwargs(env.layout))  # type: ignore[arg-type]


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keybroker_command("broker", *args[:2], "--config",
                                            str(env.layout.broker_config), *args[2:]),
                          capture_output=True, text=True, check=False, timeout=120)


def test_pkcs11_init_puts_the_kek_in_the_token(env: Env) -> None:
    """No KEK file exists; kek status shows version 1 in the token as current."""
    assert not (env.layout.broker / "kek.bin").exists()
    done = _cli(env, "kek", "status")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\t")[:3] == ["v1", "current",
                                            f"pkcs11:{env.token.label}/e2e-kek"]


def test_pkcs11_release_rotate_release(env: Env) -> None:
    """A release works, the KEK rotates while the broker serves (the data key is re-wrapped in
    the HSM), and the next release opens the secret under the new KEK."""
    assert _release(env) == {DEMO_KEY_ID: env.secret}
    done = _cli(env, "kek", "rotate")
    assert done.returncode == 0, done.stderr
    assert "v2" in done.stdout and "1 data key(s) re-wrapped" in done.stdout
    assert f"pkcs11:{env.token.label}/e2e-kek" in done.stdout  # v1 retired
    status = _cli(env, "kek", "status").stdout.splitlines()
    assert [line.split("\t")[:2] for line in status] == [["v1", "retired"], ["v2", "current"]]
    assert _release(env) == {DEMO_KEY_ID: env.secret}


def test_pkcs11_hsm_unavailable_denies_and_recovers(env: Env) -> None:
    """With the token gone the release is UNAVAILABLE, nothing is sealed, and the denial is
    audited; with the token back the broker reconnects and releases again."""
    with env.token.unplugged():
        with pytest.raises(KeybrokerError) as exc:
            _release(env)
        assert exc.value.category is Category.UNAVAILABLE
    audit = _cli(env, "audit", "list", "--json")
    last = json.loads(audit.stdout.splitlines()[-1])
    assert (last["kind"], last["category"]) == ("denied", "UNAVAILABLE")
    assert "HSM" in last["reason"]
    assert _release(env) == {DEMO_KEY_ID: env.secret}


def _health(env: Env) -> int:
    with secure_channel(env.layout, env.broker.address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def _health_becomes(env: Env, wanted: int) -> None:
    deadline = time.monotonic() + 10
    while _health(env) != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _health(env) == wanted


def test_pkcs11_health_follows_the_hsm(env: Env) -> None:
    """The broker's gRPC health is NOT_SERVING while the token is gone and SERVING again once
    it is back (the KEK probe is an HMAC inside the HSM)."""
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health(env) == serving
    with env.token.unplugged():
        _health_becomes(env, health_pb2.HealthCheckResponse.NOT_SERVING)
    _health_becomes(env, serving)
