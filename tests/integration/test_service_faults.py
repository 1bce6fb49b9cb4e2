"""Faults of hostile-evidence section 2 with real processes: the broker killed (SIGKILL) while
releases run, and the verifier killed and restarted. After a broker restart every intent
record has an outcome (released, denied, or ``unknown`` for the ones the crash cut off), no
challenge was released twice and the hash chain verifies; while the verifier is down releases
are refused UNAVAILABLE (nothing leaves), and they succeed again once it is back. The
verifier's worker processes die with it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from support.agent_tls import secure_channel
from support.demo_stack import Prepared, prepared_services
from support.release_attempts import Env, build_attempt, open_released, recovers, send
from test_verifier_workers import children, wait_for_workers

from keybroker.errors import Category, KeybrokerError
from keybroker.v1 import broker_pb2_grpc
from keybroker_cli.demo import demo_collector
from keybroker_cli.launcher import ServiceProcess, keybroker_command

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    served: Prepared
    extra: list[ServiceProcess] = field(default_factory=list)

    def env(self, broker: ServiceProcess | None = None,
            verifier: ServiceProcess | None = None) -> Env:
        broker = broker or self.served.broker
        channel = secure_channel(self.served.layout, broker.address)
        return Env(self.served.layout, self.served.secret, verifier or self.served.verifier,
                   broker, channel, broker_pb2_grpc.KeyBrokerStub(channel))

    def start(self, name: str) -> ServiceProcess:
        config = self.served.layout.broker_config if name == "broker" else (
            self.served.layout.verifier_config)
        process = ServiceProcess.start(name, keybroker_command(
            name, "serve", "--config", str(config), "--insecure-simulator"),
            log_path=config.parent / f"{name}-restarted.log")
        self.extra.append(process)
        return process


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with prepared_services(tmp_path / "faults") as served:
        stack = Stack(served)
        try:
            yield stack
        finally:
            for process in stack.extra:
                process.stop()


def release(env: Env) -> bytes:
    attempt = build_attempt(env, demo_collector(env.layout, "snp"))
    return open_released(attempt, send(env, attempt.request))


def audit(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keybroker_command("broker", "audit", *args, "--config",
                                            str(env.layout.broker_config)),
                          capture_output=True, text=True, check=False, timeout=60)


def test_fault_broker_killed_during_releases(stack: Stack) -> None:
    """SIGKILL the broker while four clients release; after a restart every intent has an
    outcome, no challenge was released twice, the chain verifies, and releases work."""
    env = stack.env()
    stop = threading.Event()
    done: list[bytes] = []

    def load() -> None:
        with contextlib.suppress(KeybrokerError, grpc.RpcError):  # the broker is gone
            while not stop.is_set():
                done.append(release(env))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(done) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    stack.served.broker.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    env.channel.close()
    assert len(done) >= 8 and set(done) == {env.secret}

    restarted = stack.start("broker")
    after = stack.env(broker=restarted)
    try:
        assert release(after) == env.secret
    finally:
        after.channel.close()
    listed = audit(after, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    intents = {r["request_id"] for r in records if r["kind"] == "intent"}
    outcomes = Counter(r["request_id"] for r in records
                       if r["kind"] in ("released", "denied", "unknown"))
    assert intents and all(outcomes[rid] == 1 for rid in intents), (intents, outcomes)
    released = Counter(r["challenge_id"] for r in records if r["kind"] == "released")
    assert max(released.values()) == 1
    verified = audit(after, "verify")
    assert verified.returncode == 0, verified.stderr + verified.stdout


def test_fault_verifier_killed_then_restarted(stack: Stack) -> None:
    """SIGKILL the verifier: its workers exit with it, releases are refused UNAVAILABLE (no
    key leaves); a restarted verifier on the same address serves them again."""
    env = stack.env()
    try:
        assert release(env) == env.secret
        workers = wait_for_workers(stack.served.verifier.pid, 1)
        stack.served.verifier.kill()
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and (
                time.monotonic() < deadline):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        with pytest.raises(KeybrokerError) as exc:
            release(env)
        assert exc.value.category is Category.UNAVAILABLE
        restarted = stack.start("verifier")
        assert restarted.address == stack.served.verifier.address
        assert children(restarted.pid) or wait_for_workers(restarted.pid, 1)
        assert recovers(lambda: release(env), env.secret, timeout=30)
    finally:
        env.channel.close()
