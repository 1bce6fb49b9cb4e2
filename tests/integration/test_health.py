"""Health that means something, through real processes: the gRPC health service of each
service is NOT_SERVING while a dependency is down (the broker's database, its audit log, the
verifier unresponsive; the verifier's state database) and SERVING again when it is back; and
``keybroker status`` names the dependency, exits 1 while it is down and 0 after.

The deployment is ``keybroker demo --prepare-only``'s (free ports, dependencies probed every
0.2 s), started as separate processes like the README does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.demo_stack import prepared_services

from keybroker.tls import client_credentials
from keybroker_cli.demo_prepare import Ports
from keybroker_cli.demo_setup import DemoLayout, agent_channel
from keybroker_cli.launcher import ServiceProcess
from keybroker_cli.main import main

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST = "health_check_seconds = 0.2\n"


@dataclass
class Deployment:
    layout: DemoLayout
    ports: Ports
    verifier: ServiceProcess
    broker: ServiceProcess

    def broker_health(self) -> int:
        credentials, _ = agent_channel(self.layout)
        return _check(f"127.0.0.1:{self.ports.broker}", credentials)

    def verifier_health(self) -> int:
        tls = self.layout.tls
        credentials = client_credentials(tls.ca, tls.cert("broker-client"),
                                         tls.key("broker-client"))
        return _check(f"127.0.0.1:{self.ports.verifier}", credentials)

    def status(self, service: str, capsys: pytest.CaptureFixture[str]
               ) -> tuple[int, dict[str, object]]:
        capsys.readouterr()
        code = main(["status", "--profile", str(self.layout.root / "admin" / "admin.toml"),
                     "--service", service, "--json"])
        return code, json.loads(capsys.readouterr().out)


def _check(address: str, credentials: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


def _until(probe: Callable[[], int], wanted: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    seen = probe()
    while seen != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = probe()
    assert seen == wanted, f"health stayed {seen}, expected {wanted}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with prepared_services(tmp_path_factory.mktemp("health") / "deploy", broker_settings=FAST,
                           verifier_settings=FAST) as running:
        yield Deployment(running.layout, running.ports, running.verifier, running.broker)


@contextmanager
def moved_away(path: Path) -> Iterator[None]:
    """``path`` (and its WAL files) gone inside the block, back after it."""
    away = path.with_name(path.name + ".away")
    shutil.move(path, away)
    try:
        yield
    finally:
        shutil.move(away, path)


def _status_until(deployment: Deployment, service: str, dependency: str, ok: bool,
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    """Ask ``keybroker status`` until it reports ``dependency`` up (``ok``) or down."""
    deadline = time.monotonic() + 10
    code, status = deployment.status(service, capsys)
    while _dependency(status, dependency)["ok"] is not ok and time.monotonic() < deadline:
        time.sleep(0.1)
        code, status = deployment.status(service, capsys)
    assert _dependency(status, dependency)["ok"] is ok, status
    return code, status


@pytest.fixture(autouse=True)
def serving_first(deployment: Deployment) -> None:
    """Each test starts from both services SERVING (a previous test may have just ended)."""
    _until(deployment.verifier_health, SERVING)
    _until(deployment.broker_health, SERVING)


def _dependency(status: dict[str, object], name: str) -> dict[str, object]:
    deps = status["dependencies"]
    assert isinstance(deps, dict)
    dep = deps[name]
    assert isinstance(dep, dict)
    return dep


def test_health_serving_with_every_dependency(deployment: Deployment,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Both services SERVING; status lists every probed dependency as ok and exits 0."""
    assert deployment.broker_health() == SERVING
    assert deployment.verifier_health() == SERVING
    code, status = deployment.status("broker", capsys)
    assert code == 0 and status["serving"] is True
    assert sorted(status["dependencies"]) == [  # type: ignore[call-overload]
        "audit", "database", "kek (file)", "verifier"]
    code, status = deployment.status("verifier", capsys)
    assert code == 0 and sorted(status["dependencies"]) == ["audit", "database"]  # type: ignore[call-overload]
    assert status["policies_in_force"] == ["snp-demo@1"]
    collateral = status["collateral"]
    assert isinstance(collateral, list) and collateral
    assert all(item["next_update_in_seconds"] > 0 for item in collateral)


@pytest.mark.parametrize(("file", "dependency"), [("broker.db", "database"),
                                                  ("broker-audit.db", "audit")])
def test_health_broker_store_down_and_back(deployment: Deployment, file: str, dependency: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The broker's database or audit log gone: NOT_SERVING, status names it and exits 1;
    back: SERVING and exit 0."""
    path = deployment.layout.broker / file
    with moved_away(path):
        _until(deployment.broker_health, NOT_SERVING)
        code, status = _status_until(deployment, "broker", dependency, False, capsys)
        assert code == 1 and status["serving"] is False
        assert str(path) in str(_dependency(status, dependency)["detail"])
        capsys.readouterr()
        assert main(["status", "--profile", str(deployment.layout.root / "admin" / "admin.toml"),
                     "--service", "broker"]) == 1
        assert f"{dependency}" in capsys.readouterr().out
    _until(deployment.broker_health, SERVING)
    code, _ = _status_until(deployment, "broker", dependency, True, capsys)
    assert code == 0


def test_health_verifier_unresponsive(deployment: Deployment,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A verifier that does not answer (stopped with SIGSTOP) makes the broker NOT_SERVING
    with the verifier named; SIGCONT brings both back."""
    os.kill(deployment.verifier.pid, signal.SIGSTOP)
    try:
        _until(deployment.broker_health, NOT_SERVING)
        code, _ = _status_until(deployment, "broker", "verifier", False, capsys)
        assert code == 1
    finally:
        os.kill(deployment.verifier.pid, signal.SIGCONT)
    _until(deployment.broker_health, SERVING)


def test_health_verifier_state_database_down(deployment: Deployment,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The verifier's state database gone: the verifier is NOT_SERVING (status names the
    file) and so the broker reports its verifier dependency down; back: both SERVING."""
    path = deployment.layout.verifier / "verifier-state.db"
    with moved_away(path):
        _until(deployment.verifier_health, NOT_SERVING)
        code, status = _status_until(deployment, "verifier", "database", False, capsys)
        assert code == 1 and str(path) in str(_dependency(status, "database")["detail"])
        _until(deployment.broker_health, NOT_SERVING)
        _, status = _status_until(deployment, "broker", "verifier", False, capsys)
        assert "NOT_SERVING" in str(_dependency(status, "verifier")["detail"])
    _until(deployment.verifier_health, SERVING)
    _until(deployment.broker_health, SERVING)
