"""Benchmark: key releases through real verifier and broker processes.

Starts a verifier and a broker (separate processes, loopback, SQLite, simulator root), then
N agent processes that each run releases back to back for a fixed duration. Prints
releases/s, p50/p99 latency, the server-side CPU time per release (verifier + broker, read
from /proc), and, measured in the same run, the cryptographic floor of one release:
the evidence signatures (SNP: one P-384 ECDSA verify of the report; TDX/SGX: two P-256 ECDSA
verifies, the QE report and the quote; TPM: one P-256 ECDSA verify of the quote by the AK),
one ES256 sign (the result token), one ES256 verify
(the broker checks it) and one HPKE seal. Then:

    floor_ratio = server CPU seconds per release / floor seconds

and, measured in the same run with the same agents and transport, the transport floor: the
server CPU per release of a bare gRPC broker/verifier pair with the release's connections and
message sizes and no work behind the calls (``bench/transport.py``), and

    ratio_over_crypto_and_transport = server CPU per release / (floor + transport floor)

which is what our own code costs on top of what no Python gRPC service with this protocol
can avoid.

Transport is the demo's: each release is a new agent connection with a mutual-TLS handshake
(as a real agent makes one connection per boot), and the broker keeps one mutual-TLS channel to
the verifier. ``--insecure-plaintext`` runs the same on plaintext loopback, to show what TLS
costs in the same session.

With ``--tee tpm`` the agents quote with a real swtpm machine (enrolled first). swtpm has no
resource manager (a kernel's /dev/tpmrm0 gives each client its own object slots), so the
default there is one agent and releases/s is the swtpm's pace; the CPU per release and the
ratio are the services' alone.

The verifier's CPU includes its appraisal worker processes. ``--verifier-workers 1,2,4`` runs
the whole measurement once per worker count and ends with the curve of releases/s against
verifier processes (default: the configuration's default, one per core).

Usage: python bench/release.py [--agents N] [--seconds S] [--suite SUITE_ID]
       [--tee snp|tdx|sgx|tpm|nitro] [--insecure-plaintext] [--verifier-workers LIST]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from timing import cpu_seconds, per_op
from transport import transport_floor

from keybroker.wrapping import AgentKeyPair, Suite, load_public_key, release_info, seal


def crypto_floor(suite: Suite, tee: str) -> dict[str, float]:
    """Seconds per operation of each primitive a release cannot avoid."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    report = os.urandom(0x2A0)
    sig384 = p384.sign(report, ec.ECDSA(hashes.SHA384()))
    pub384 = p384.public_key()
    p256 = ec.generate_private_key(ec.SECP256R1())
    claims = os.urandom(1500)
    sig256 = p256.sign(claims, ec.ECDSA(hashes.SHA256()))
    pub256 = p256.public_key()
    agent = AgentKeyPair.generate(suite)
    agent_pub = load_public_key(suite, agent.public_bytes)
    info = release_info("bench/key", 1, "challenge")
    secret = os.urandom(32)
    if tee in ("snp", "nitro"):  # one P-384 signature (the chain is cached per platform)
        evidence = {"p384_verify": per_op(
            lambda: pub384.verify(sig384, report, ec.ECDSA(hashes.SHA384())))}
    elif tee == "tpm":
        evidence = {"p256_verify": per_op(
            lambda: pub256.verify(sig256, claims, ec.ECDSA(hashes.SHA256())))}
    else:
        evidence = {"p256_verify_x2": 2 * per_op(
            lambda: pub256.verify(sig256, claims, ec.ECDSA(hashes.SHA256())))}
    return {
        **evidence,
        "es256_sign": per_op(lambda: p256.sign(claims, ec.ECDSA(hashes.SHA256()))),
        "es256_verify": per_op(lambda: pub256.verify(sig256, claims, ec.ECDSA(hashes.SHA256()))),
        "hpke_seal": per_op(lambda: seal(suite, agent_pub, secret, info)),
    }


def agent_worker(args: tuple[str, str, float, str, str, bool]) -> list[float]:
    """One agent process: release back to back until the deadline; returns latencies (s)."""
    broker, root, deadline, suite_id, tee, plaintext = args
    import logging

    from attester_agent.client import get_secrets
    from keybroker_cli.demo import demo_collector, demo_init_data
    from keybroker_cli.demo_setup import DEMO_KEY_ID, DemoLayout, agent_channel

    logging.disable(logging.WARNING)
    layout = DemoLayout(Path(root))
    init_data = demo_init_data(layout, tee)  # type: ignore[arg-type]
    collector = demo_collector(layout, tee)  # type: ignore[arg-type]
    suite = Suite.from_id(suite_id)
    credentials, channel = (None, b"") if plaintext else agent_channel(layout)
    latencies: list[float] = []
    while time.time() < deadline:
        start = time.perf_counter()
        got = get_secrets(broker, [DEMO_KEY_ID], collector, suite=suite, init_data=init_data,
                          credentials=credentials, channel_binding=channel)
        latencies.append(time.perf_counter() - start)
        assert DEMO_KEY_ID in got
    return latencies


def run(args: argparse.Namespace, suite: Suite, workers: int | None) -> dict[str, float]:
    """One measurement (services started and stopped); prints its figures."""
    from keybroker_cli.demo_setup import DemoLayout, prepare, write_broker_config
    from keybroker_cli.launcher import ServiceProcess, keybroker_command

    transport = ["--insecure-plaintext"] if args.insecure_plaintext else []
    layout = DemoLayout(Path(tempfile.mkdtemp(prefix="keybroker-bench-")))
    prepare(layout, tee=args.tee)
    if workers is not None:
        with layout.verifier_config.open("a") as config:
            config.write(f"workers = {workers}\n")
    if args.tee == "tdx":
        from keybroker_cli.demo import measure_image

        assert measure_image(layout), "attester-agent measure failed"
    verifier = ServiceProcess.start(
        "verifier", keybroker_command("--log-level", "WARNING", "verifier", "serve",
                                      "--config", str(layout.verifier_config),
                                      "--insecure-simulator", *transport),
        log_path=layout.verifier / "verifier.log")
    write_broker_config(layout, verifier.address)
    broker = ServiceProcess.start(
        "broker", keybroker_command("--log-level", "WARNING", "broker", "serve", "--config",
                                    str(layout.broker_config), "--insecure-simulator",
                                    *transport),
        log_path=layout.broker / "broker.log")
    machines = contextlib.ExitStack()
    try:
        if args.tee == "tpm":
            from keybroker_cli.demo_setup import DEMO_TEES, agent_channel
            from keybroker_cli.demo_tpm import tpm_machines

            machines.enter_context(tpm_machines(
                layout.sim, (DEMO_TEES["tpm"].measurement,), broker.address,
                agent_channel(layout)[0]))
        # Warm-up (chain caches in every worker, connections), not measured.
        agent_worker((broker.address, str(layout.root), time.time() + 2.0, suite.value,
                      args.tee, args.insecure_plaintext))
        v0, b0 = cpu_seconds(verifier.pid), cpu_seconds(broker.pid)
        deadline = time.time() + args.seconds
        start = time.perf_counter()
        with mp.get_context("spawn").Pool(args.agents) as pool:
            results = pool.map(agent_worker, [
                (broker.address, str(layout.root), deadline, suite.value, args.tee,
                 args.insecure_plaintext)
                for _ in range(args.agents)])
        wall = time.perf_counter() - start
        v_cpu, b_cpu = cpu_seconds(verifier.pid) - v0, cpu_seconds(broker.pid) - b0
        cpu = v_cpu + b_cpu
    finally:
        machines.close()
        broker.stop()
        verifier.stop()

    latencies = sorted(x for r in results for x in r)
    count = len(latencies)
    from keybroker_cli.demo_setup import DEMO_AGENT

    bare = transport_floor(agents=args.agents, seconds=min(args.seconds, 5.0),
                           tls_dir=None if args.insecure_plaintext else layout.tls.root,
                           agent_name=DEMO_AGENT)
    floor = crypto_floor(suite, args.tee)
    floor_total = sum(floor.values())
    per_release_cpu = cpu / count
    p99 = latencies[min(count - 1, int(count * 0.99))]
    print(f"tee={args.tee} suite={suite.value} agents={args.agents} seconds={args.seconds:.0f} "
          f"cores={os.cpu_count()} verifier_workers={'default' if workers is None else workers} "
          f"transport={'PLAINTEXT' if args.insecure_plaintext else 'mTLS'}")
    print(f"releases={count} releases_per_s={count / wall:.1f}")
    print(f"latency_ms p50={statistics.median(latencies) * 1000:.2f} p99={p99 * 1000:.2f}")
    print(f"server_cpu_ms_per_release={per_release_cpu * 1000:.3f} "
          f"(verifier {v_cpu / count * 1000:.3f} + broker {b_cpu / count * 1000:.3f})")
    print("floor_us " + " ".join(f"{k}={v * 1e6:.1f}" for k, v in floor.items())
          + f" total={floor_total * 1e6:.1f}")
    print(f"floor_ratio = {per_release_cpu / floor_total:.1f}")
    transport_total = bare["broker"] + bare["verifier"]
    print(f"transport_floor_us broker={bare['broker'] * 1e6:.1f} "
          f"verifier={bare['verifier'] * 1e6:.1f} total={transport_total * 1e6:.1f} "
          f"(bare gRPC pair, same connections and sizes, {bare['per_s']:.0f} releases/s)")
    print(f"ratio_over_crypto_and_transport = "
          f"{per_release_cpu / (floor_total + transport_total):.1f}")
    return {"releases_per_s": count / wall, "p99_ms": p99 * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=None,
                        help="agent processes (default 4; 1 for --tee tpm)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--suite", default=Suite.X25519_HKDFSHA256_AES256GCM.value)
    parser.add_argument("--tee", default="snp", choices=["snp", "tdx", "sgx", "tpm", "nitro"])
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="no TLS anywhere (loopback), for comparison")
    parser.add_argument("--verifier-workers", default=None, metavar="LIST",
                        help="comma-separated verifier worker counts, one run each (0: "
                             "appraise in the serving process)")
    args = parser.parse_args()
    args.agents = args.agents or (1 if args.tee == "tpm" else 4)
    suite = Suite.from_id(args.suite)
    counts: list[int | None] = ([int(n) for n in args.verifier_workers.split(",")]
                                if args.verifier_workers else [None])
    curve = [(n, run(args, suite, n)) for n in counts]
    if len(curve) > 1:
        print("curve verifier_workers -> releases_per_s (p99 ms): " + ", ".join(
            f"{n}: {r['releases_per_s']:.1f} ({r['p99_ms']:.0f})" for n, r in curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
