"""Load test: two brokers and two verifiers sharing one store, agents in their own processes.

For each store (``--store postgresql``, ``sqlite`` or ``both``, the default) starts a replica
set (``keybroker_cli.demo_replicas``): on PostgreSQL a throwaway cluster on loopback with
fsync on (a real commit), on SQLite the files of one host shared by the replicas. Then
``--agents`` agent processes (each one mutual-TLS connection per release, like an agent per
boot) release the demo secret back to back for ``--seconds``, agent i through broker
i mod 2. Prints:

    releases_per_s, latency p50/p99, errors by category,
    double_use=   challenges released more than once (must be 0),
    lost_audit=   releases an agent received without their intent and released records in
                  the audit log, plus released records without an intent (must be 0),
    server CPU per release, and the RSS of every service process at start and end
    (verifiers with their appraisal workers),

and then, with the same number of agents, the transport ceiling: the releases/s and server
CPU of a bare gRPC broker/verifier pair with the release's connections and message sizes and
no work behind the calls (``bench/transport.py``), which bounds what any service with this
protocol reaches on this machine with the agents beside it.

Usage: python bench/load.py [--seconds S] [--agents N] [--store postgresql|sqlite|both]
       [--verifier-workers N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from timing import cpu_seconds, rss_mib
from transport import throwaway_tls, transport_floor

from keybroker.audit_log import AuditLog
from keybroker.database import DatabaseTarget, PostgresTarget


def agent(index: int, broker: str, root: str, ready: Any, start: Any, deadline: Any,
          results: Any) -> None:
    """One agent process: release until the deadline; put (index, outcomes) on ``results``,
    outcomes as (latency seconds, "ok" or category, request id)."""
    import logging

    from attester_agent.client import get_secrets
    from keybroker.errors import KeybrokerError
    from keybroker_cli.demo import demo_collector, demo_init_data
    from keybroker_cli.demo_setup import DEMO_KEY_ID, DemoLayout, agent_channel

    logging.disable(logging.WARNING)
    layout = DemoLayout(Path(root))
    collector = demo_collector(layout, "snp")
    init_data = demo_init_data(layout, "snp")
    credentials, channel = agent_channel(layout)
    ready.put(index)
    start.wait()
    outcomes: list[tuple[float, str, str]] = []
    while time.time() < deadline.value:
        request_id = str(uuid.uuid4())
        began = time.perf_counter()
        try:
            get_secrets(broker, [DEMO_KEY_ID], collector, init_data=init_data,
                        credentials=credentials, channel_binding=channel,
                        request_id=request_id)
            outcome = "ok"
        except KeybrokerError as err:
            outcome = err.category.value
        outcomes.append((time.perf_counter() - began, outcome, request_id))
    results.put((index, outcomes))


def audit_figures(target: DatabaseTarget, received: set[str]) -> tuple[int, int]:
    """(double_use, lost_audit) from the shared audit log."""
    log = AuditLog(target, clock=time.time)
    try:
        log.verify_chain()
        records = log.records()
    finally:
        log.close()
    released = Counter(r.entry.challenge_id for r in records if r.entry.kind == "released")
    double_use = sum(1 for n in released.values() if n > 1)
    intents = {r.entry.request_id for r in records if r.entry.kind == "intent"}
    outcomes = {r.entry.request_id for r in records if r.entry.kind == "released"}
    lost = len(received - (intents & outcomes)) + len(outcomes - intents)
    return double_use, lost


def run(store: str, args: argparse.Namespace) -> None:
    """One replica set on ``store``, loaded by the agents; prints its figures."""
    from keybroker_cli.demo_replicas import prepare_replicas, replica_services
    from keybroker_cli.demo_setup import DemoLayout, prepare
    from keybroker_cli.pg_cluster import PostgresCluster

    with ExitStack() as stack:
        layout = DemoLayout(Path(tempfile.mkdtemp(prefix="keybroker-load-")))
        settings = f"workers = {args.verifier_workers}\n" if args.verifier_workers >= 0 else ""
        cluster: PostgresCluster | None = None
        if store == "postgresql":
            cluster = PostgresCluster.create(fsync=True)
            stack.callback(cluster.stop)
            database = cluster.url
            prepare_replicas(layout, database, verifier_settings=settings)
            audit_target: DatabaseTarget = PostgresTarget(database, "broker_audit")
        else:
            prepare(layout)
            if settings:
                with layout.verifier_config.open("a") as config:
                    config.write(settings)
            database = "broker.db"
            audit_target = layout.broker / "broker-audit.db"
        replicas = stack.enter_context(replica_services(layout, database))
        services = [(f"verifier-{i}", v.pid) for i, v in enumerate(replicas.verifiers)]
        services += [(f"broker-{i}", b.pid) for i, b in enumerate(replicas.brokers)]
        if cluster is not None:
            services.append(("postgresql", cluster.pid()))
        ctx = mp.get_context("spawn")
        ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
        deadline = ctx.Value("d", 0.0)
        agents = [ctx.Process(target=agent, args=(
            i, replicas.brokers[i % 2].address, str(layout.root), ready, start, deadline,
            results)) for i in range(args.agents)]
        for process in agents:
            process.start()
        for _ in agents:
            ready.get(timeout=300)
        rss_start = [rss_mib(pid) for _, pid in services]
        cpu_start = [cpu_seconds(pid) for _, pid in services]
        began = time.time()
        deadline.value = began + args.seconds
        start.set()
        outcomes = [o for _ in agents for o in results.get(timeout=args.seconds + 300)[1]]
        wall = time.time() - began
        cpu = sum(cpu_seconds(pid) - c for (_, pid), c in zip(services, cpu_start, strict=True))
        rss_end = [rss_mib(pid) for _, pid in services]
        for process in agents:
            process.join(timeout=30)
        ok = sorted(latency for latency, outcome, _ in outcomes if outcome == "ok")
        errors = Counter(outcome for _, outcome, _ in outcomes if outcome != "ok")
        received = {rid for _, outcome, rid in outcomes if outcome == "ok"}
        double_use, lost = audit_figures(audit_target, received)
        count = max(1, len(ok))
        print(f"store={store} brokers=2 verifiers=2 agents={args.agents} "
              f"seconds={args.seconds:.0f} cores={os.cpu_count()} "
              f"verifier_workers={settings.split('=')[1].strip() if settings else 'default'}")
        print(f"releases={len(ok)} releases_per_s={len(ok) / wall:.1f}")
        if ok:
            print(f"latency_ms p50={statistics.median(ok) * 1000:.1f} "
                  f"p99={ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1000:.1f}")
        print("errors " + (" ".join(f"{k}={v}" for k, v in sorted(errors.items())) or "none"))
        print(f"double_use={double_use} lost_audit={lost}")
        print(f"server_cpu_ms_per_release={cpu / count * 1000:.2f}")
        for (name, _), before, after in zip(services, rss_start, rss_end, strict=True):
            print(f"rss_mib {name} start={before:.0f} end={after:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Load test of replicas on one store.")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--store", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--verifier-workers", type=int, default=-1,
                        help="appraisal processes per verifier (default: the config's)")
    args = parser.parse_args()
    for store in (("sqlite", "postgresql") if args.store == "both" else (args.store,)):
        run(store, args)
    from keybroker_cli.demo_setup import DEMO_AGENT

    bare = transport_floor(agents=args.agents, seconds=min(args.seconds, 8.0),
                           tls_dir=throwaway_tls(DEMO_AGENT), agent_name=DEMO_AGENT)
    print(f"transport_ceiling agents={args.agents} releases_per_s={bare['per_s']:.1f} "
          f"server_cpu_ms_per_release={(bare['broker'] + bare['verifier']) * 1000:.2f} "
          "(one bare gRPC broker/verifier pair, same agents, connections and sizes, "
          "no work behind the calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
