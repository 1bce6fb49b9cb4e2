"""Faults of hostile-evidence section 2 with real processes: the broker killed (SIGKILL) while
releases run, and the verifier killed and restarted. After a broker restart every intent
record has an outcome (released, denied, or ``unknown`` for the ones the crash cut off), no
challenge was released twice and the hash chain verifies; while the verifier is down releases
are refused UNAVAILABLE (nothing leaves), and they succeed again once it is back. The
verifier's worker processes die with it."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import textwrap
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
from keybroker.server_limits import HANDSHAKE_TIMEOUT_MS
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


_SKEWED_VERIFIER = textwrap.dedent("""
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from verifier.config import load_config
    from verifier.server import serve
    skew = timedelta(seconds=float(sys.argv[2]))
    asyncio.run(serve(load_config(Path(sys.argv[1])), insecure=True,
                      on_ready=lambda a: print(f"verifier listening on {a}", flush=True),
                      clock=lambda: datetime.now(UTC) + skew))
""")


def refusal_once_reachable(env: Env) -> Category:
    """The category of the first refusal that is not UNAVAILABLE (the broker reconnecting
    to a restarted verifier); fails if a key is released."""
    deadline = time.monotonic() + 20
    while True:
        with pytest.raises(KeybrokerError) as exc:
            release(env)
        if exc.value.category is not Category.UNAVAILABLE or time.monotonic() > deadline:
            return exc.value.category
        time.sleep(0.5)


SKEWS = ((2.0, None),                        # within the broker's leeway: released
         (600.0, Category.TOKEN_INVALID),    # verifier ahead: a token from the future
         (-600.0, Category.TOKEN_INVALID))   # verifier behind: the token expired on arrival


def test_fault_clock_skew_between_broker_and_verifier(tmp_path: Path) -> None:
    """A verifier process whose clock is off (restarted with each skew): within the leeway
    releases go on; past it the broker refuses the result token (TOKEN_INVALID) and
    releases nothing."""
    with prepared_services(tmp_path / "skew", verifier_settings="workers = 0\n") as served:
        served.verifier.stop()
        config = served.layout.verifier_config
        for skew, category in SKEWS:
            skewed = ServiceProcess.start(
                "verifier", [sys.executable, "-c", _SKEWED_VERIFIER, str(config), str(skew)],
                log_path=config.parent / "verifier-skewed.log")
            env = Stack(served).env(verifier=skewed)
            try:
                if category is None:
                    assert recovers(lambda env=env: release(env), env.secret, timeout=20)
                else:
                    assert refusal_once_reachable(env) is category, skew
            finally:
                env.channel.close()
                skewed.stop()


def test_fault_slow_clients_do_not_hold_the_broker(stack: Stack) -> None:
    """A hundred connections that never finish their TLS handshake (half send the first
    bytes of one and stall): releases still go through at once, and the broker closes the
    stalled connections at its handshake deadline."""
    host, port = stack.served.broker.address.rsplit(":", 1)
    stalled = [socket.create_connection((host, int(port)), timeout=5) for _ in range(100)]
    try:
        for sock in stalled[::2]:
            sock.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header, then nothing
        env = stack.env()
        try:
            began = time.monotonic()
            assert release(env) == env.secret
            assert time.monotonic() - began < 5
        finally:
            env.channel.close()
        for sock in (stalled[0], stalled[1]):
            sock.settimeout(HANDSHAKE_TIMEOUT_MS / 1000 + 10)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""  # closed by the broker
    finally:
        for sock in stalled:
            sock.close()
