"""The verifier's appraisal worker processes, with real processes: appraisals run in the
configured number of spawned workers (children of the serving process), health answers while
they are busy, and a worker killed under the verifier fails the request it would have served
closed (UNAVAILABLE, nothing released) before fresh workers take over (the fault of
hostile-evidence section 2, "verifier crashes mid-check")."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.demo_stack import prepared_services, served_env
from support.release_attempts import Env, build_attempt, open_released, recovers, send

from keybroker.errors import Category, KeybrokerError
from keybroker.tls import client_credentials
from keybroker_cli.demo import demo_collector

pytestmark = pytest.mark.integration
WORKERS = 2


def children(pid: int) -> set[int]:
    """Live worker processes of ``pid`` (spawned children; not the resource tracker)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z" and b"spawn_main" in command:
            found.add(int(stat.parent.name))
    return found


def wait_for_workers(pid: int, count: int, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(pid)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"verifier {pid} has {children(pid)} children, expected {count}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with (prepared_services(tmp_path_factory.mktemp("workers"),
                            verifier_settings=f"workers = {WORKERS}\n") as served,
          served_env(served) as env):
        yield env


def release(env: Env) -> bytes:
    attempt = build_attempt(env, demo_collector(env.layout, "snp"))
    return open_released(attempt, send(env, attempt.request))


def test_verifier_appraises_in_worker_processes(env: Env) -> None:
    """The configured number of workers run as children of the verifier and serve releases."""
    assert release(env) == env.secret
    assert len(wait_for_workers(env.verifier.pid, WORKERS)) == WORKERS


def test_verifier_health_answers_while_workers_are_busy(env: Env) -> None:
    """Health checks on the verifier's port answer within a second while four clients keep
    the workers busy (the serving process never appraises on its event loop)."""
    tls = env.layout.tls
    credentials = client_credentials(tls.ca, tls.cert("broker-client"), tls.key("broker-client"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        while not stop.is_set():
            try:
                release(env)
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        with grpc.secure_channel(env.verifier.address, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            slowest = 0.0
            for _ in range(20):
                start = time.perf_counter()
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                slowest = max(slowest, time.perf_counter() - start)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert slowest < 1.0


def test_fault_worker_killed_fails_closed_then_recovers(env: Env) -> None:
    """Kill every worker: the next release is refused UNAVAILABLE (no key), then fresh
    workers serve releases again."""
    workers = wait_for_workers(env.verifier.pid, WORKERS)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while children(env.verifier.pid) & workers and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(KeybrokerError) as exc:
        release(env)
    assert exc.value.category is Category.UNAVAILABLE
    assert recovers(lambda: release(env), env.secret, timeout=60)
    assert not wait_for_workers(env.verifier.pid, WORKERS) & workers
