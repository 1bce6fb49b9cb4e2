"""Replicas on PostgreSQL (issue 14): two verifiers and two brokers sharing one database and
nothing else, as real processes. Releases through either broker; a challenge is single-use
across brokers (a retried request after a lost answer is a clean FRESHNESS); one linear
audit chain; failover when a verifier dies; PostgreSQL restarted under load; a broker
killed between intent and outcome."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import pytest
from support.agent_tls import secure_channel
from support.release_attempts import Env, build_attempt, open_released, recovers, send

from keybroker.audit_log import AuditLog, AuditRecord
from keybroker.database import PostgresTarget
from keybroker.errors import Category, KeybrokerError
from keybroker.v1 import broker_pb2, broker_pb2_grpc
from keybroker_cli.demo import demo_collector
from keybroker_cli.demo_replicas import ReplicaSet, prepare_replicas, replica_services
from keybroker_cli.demo_setup import DemoLayout
from keybroker_cli.launcher import ServiceProcess
from keybroker_cli.pg_cluster import PostgresCluster

_DATABASES = iter(range(1, 1000))


@contextmanager
def deployment(cluster: PostgresCluster, root: Path) -> Iterator[tuple[ReplicaSet, bytes]]:
    """A fresh database and two verifiers (one appraisal worker each) plus two brokers."""
    url = cluster.database(f"replicas{next(_DATABASES)}")
    layout = DemoLayout(root)
    secret = prepare_replicas(layout, url, verifier_settings="workers = 1\n")
    with replica_services(layout, url) as replicas:
        yield replicas, secret


@contextmanager
def env_of(replicas: ReplicaSet, broker: ServiceProcess, secret: bytes) -> Iterator[Env]:
    channel = secure_channel(replicas.layout, broker.address)
    try:
        yield Env(replicas.layout, secret, replicas.verifiers[0], broker, channel,
                  broker_pb2_grpc.KeyBrokerStub(channel))
    finally:
        channel.close()


def release(env: Env) -> bytes:
    attempt = build_attempt(env, demo_collector(env.layout, "snp"))
    return open_released(attempt, send(env, attempt.request))


def audit_records(replicas: ReplicaSet) -> list[AuditRecord]:
    log = AuditLog(PostgresTarget(replicas.url, "broker_audit"), clock=time.time)
    try:
        assert log.verify_chain() > 0  # one linear chain, whoever wrote it
        return log.records()
    finally:
        log.close()


def assert_one_outcome_each(records: list[AuditRecord]) -> None:
    """Every intent has exactly one outcome and no challenge was released twice."""
    intents = {r.entry.request_id for r in records if r.entry.kind == "intent"}
    outcomes = Counter(r.entry.request_id for r in records
                       if r.entry.kind in ("released", "denied", "unknown"))
    odd = {rid: [(r.seq, r.entry.kind, r.entry.replica, r.entry.reason) for r in records
                 if r.entry.request_id == rid] for rid in intents if outcomes[rid] != 1}
    assert intents and not odd, odd
    released = Counter(r.entry.challenge_id for r in records if r.entry.kind == "released")
    assert max(released.values()) == 1


@pytest.fixture(scope="module")
def shared(postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ReplicaSet, bytes]]:
    with deployment(postgres_cluster, tmp_path_factory.mktemp("replicas")) as running:
        yield running


def test_postgres_replicas_release_through_either_broker(shared: tuple[ReplicaSet, bytes]
                                                         ) -> None:
    """Each broker releases the secret stored once in the shared database; the audit log is
    one verified chain holding both replicas' records."""
    replicas, secret = shared
    for broker in replicas.brokers:
        with env_of(replicas, broker, secret) as env:
            assert release(env) == secret
    records = audit_records(replicas)
    assert {r.entry.replica for r in records if r.entry.kind == "released"} >= {
        "broker-0", "broker-1"}
    assert_one_outcome_each(records)


def test_postgres_challenge_single_use_across_brokers(shared: tuple[ReplicaSet, bytes]
                                                      ) -> None:
    """A challenge from broker 0 is released by broker 1 once; the same request retried at
    broker 0 (the agent lost the answer) is a clean FRESHNESS denial, never a second
    release."""
    replicas, secret = shared
    with env_of(replicas, replicas.brokers[0], secret) as first, \
            env_of(replicas, replicas.brokers[1], secret) as second:
        attempt = build_attempt(first, demo_collector(first.layout, "snp"))
        assert open_released(attempt, send(second, attempt.request)) == secret
        for env in (first, second):
            retry = broker_pb2.ReleaseKeyRequest()
            retry.CopyFrom(attempt.request)
            retry.request_id = str(uuid.uuid4())  # a new call with the same request
            with pytest.raises(KeybrokerError) as exc:
                send(env, retry)
            assert exc.value.category is Category.FRESHNESS
    records = [r for r in audit_records(replicas)
               if r.entry.challenge_id == attempt.challenge.challenge_id]
    assert [r.entry.kind for r in records].count("released") == 1


def test_fault_postgres_restarted_under_load(postgres_cluster: PostgresCluster,
                                             shared: tuple[ReplicaSet, bytes]) -> None:
    """PostgreSQL restarted (connections cut) while four clients release through both
    brokers: requests during the outage are refused UNAVAILABLE and nothing else, releases
    work again afterwards, every intent has one outcome and the chain verifies."""
    replicas, secret = shared
    stop = threading.Event()
    outcomes: list[str] = []

    def load(index: int) -> None:
        with env_of(replicas, replicas.brokers[index % 2], secret) as env:
            while not stop.is_set():
                try:
                    outcomes.append("ok" if release(env) == secret else "wrong")
                except KeybrokerError as err:
                    outcomes.append(err.category.value)
                    time.sleep(0.05)
                except grpc.RpcError as err:  # GetChallenge is refused as a plain status
                    outcomes.append(err.code().name)
                    time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while outcomes.count("ok") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        postgres_cluster.restart()
        before = len(outcomes)
        deadline = time.monotonic() + 30
        while (len(outcomes) < before + 8 or outcomes[-1] != "ok") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert set(outcomes) <= {"ok", "UNAVAILABLE"}, Counter(outcomes)
    assert outcomes.count("ok") >= 16 and outcomes[-1] == "ok", Counter(outcomes)
    for broker in replicas.brokers:
        with env_of(replicas, broker, secret) as env:
            assert recovers(lambda env=env: release(env), secret, timeout=30)
    assert_one_outcome_each(audit_records(replicas))


def test_fault_postgres_broker_killed_between_intent_and_outcome(
        shared: tuple[ReplicaSet, bytes]) -> None:
    """SIGKILL broker 0 while clients release through both brokers; broker 1 keeps
    serving. Restarted, broker 0 marks its own dangling intents "unknown" and leaves broker
    1's in-flight ones alone: every intent ends with exactly one outcome."""
    replicas, secret = shared
    stop = threading.Event()
    done: list[int] = []

    def load(index: int) -> None:
        with env_of(replicas, replicas.brokers[index % 2], secret) as env, \
                suppress(KeybrokerError, grpc.RpcError):  # broker 0 goes away
            while not stop.is_set():
                assert release(env) == secret
                done.append(index % 2)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while done.count(0) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    replicas.brokers[0].kill()
    killed_at = len(done)
    deadline = time.monotonic() + 30
    while len(done) < killed_at + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    restarted = replicas.start_broker(0)  # broker 1 still under load meanwhile
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert done.count(1) > 4  # broker 1 served on while broker 0 was down
    with env_of(replicas, restarted, secret) as env:
        assert release(env) == secret
    records = audit_records(replicas)
    assert_one_outcome_each(records)
    unknown = [r for r in records if r.entry.kind == "unknown"]
    assert all(r.entry.replica == "broker-0" for r in unknown)


def test_fault_postgres_verifier_replica_killed_fails_over(shared: tuple[ReplicaSet, bytes]
                                                           ) -> None:
    """SIGKILL one verifier: every release through both brokers still succeeds (the call
    goes to the other replica), none is refused. (Last: the deployment keeps one verifier.)"""
    replicas, secret = shared
    replicas.verifiers[0].kill()
    for i in range(6):
        with env_of(replicas, replicas.brokers[i % 2], secret) as env:
            assert release(env) == secret
