"""`keybroker demo`: the whole release flow on embedded defaults, end to end.

Starts a verifier and a broker as separate OS processes on loopback (SQLite files, generated
keys, a simulator under a freshly generated INSECURE test root: SEV-SNP by default, TDX or SGX
with ``--tee``), stores a demo secret with a release rule, releases it through the attester
agent (a real agent process; on TDX after ``attester-agent measure`` put the demo container
image into RTMR3, which the policy requires), shows a denied request (wrong launch
measurement) with its category and reason, prints timings, stops both processes and exits 0
only if the release and the denial both happened as expected.

Invariant: the simulator roots exist only inside the demo's working directory and both
services are started with their explicit insecure flags; nothing here is a production setup.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from attester_agent.client import get_secrets
from attester_agent.collectors.base import Collector
from keybroker.errors import KeybrokerError
from keybroker_cli import demo_serve
from keybroker_cli.demo_setup import (
    DEMO_AGENT,
    DEMO_IMAGE,
    DEMO_KEY_ID,
    DEMO_TEES,
    TEES,
    DemoLayout,
    Tee,
    agent_channel,
    agent_tls_args,
    prepare,
    run_cli,
    write_broker_config,
)
from keybroker_cli.launcher import ServiceProcess, keybroker_command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` subcommand."""
    parser = sub.add_parser("demo", help="run the release flow end to end on the simulator")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="directory for databases, keys and logs (default: a temp dir)")
    parser.add_argument("--releases", type=int, default=20,
                        help="timed in-process releases after the first (default 20)")
    parser.add_argument("--tee", choices=TEES, default="snp",
                        help="simulated platform: snp (default), tdx or sgx")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--serve", action="store_true",
                      help="start the services of an existing --workdir in the background, "
                           "with their admin APIs, and write admin client profiles")
    keep.add_argument("--stop", action="store_true",
                      help="stop the services --serve started")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The demo, or (``--serve`` / ``--stop``) its services kept running in the background."""
    if args.serve or args.stop:
        if args.workdir is None:
            print("--serve and --stop need --workdir", file=sys.stderr)
            return 2
        layout = DemoLayout(args.workdir.resolve())
        return demo_serve.serve(layout) if args.serve else demo_serve.stop(layout)
    return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when one release and one denial happened as expected."""
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="keybroker-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    layout = DemoLayout(workdir.resolve())
    say(f"keybroker demo (working directory {layout.root})")
    tee: Tee = args.tee
    say(f"WARNING: this demo uses the {DEMO_TEES[tee].display_name} SIMULATOR under a generated "
        "INSECURE test root")
    t0 = time.perf_counter()
    secret = prepare(layout, tee=tee)
    say(f"set-up: keys, policy, databases, demo secret stored ({ms(t0)} ms)")
    with ExitStack() as stack:
        verifier = stack.enter_context(service(
            "verifier", layout.verifier / "verifier.log",
            "verifier", "serve", "--config", str(layout.verifier_config), "--insecure-simulator",
        ))
        say(f"verifier process pid={verifier.pid} on {verifier.address}")
        write_broker_config(layout, verifier.address)
        broker = stack.enter_context(service(
            "broker", layout.broker / "broker.log",
            "broker", "serve", "--config", str(layout.broker_config), "--insecure-simulator",
        ))
        say(f"broker process pid={broker.pid} on {broker.address}")
        say(f"transport: TLS for agents (mutual TLS: agents present a {DEMO_AGENT} "
            "certificate, bound into the evidence) and mTLS between broker and verifier; "
            f"throwaway CA {layout.tls.ca}")
        refused = plaintext_refused(broker.address, layout, tee)
        released = release_with_agent(layout, broker.address, secret, tee)
        # The demo already warned about the simulator; keep per-request agent logs quiet.
        logging.getLogger("attester_agent").setLevel(logging.ERROR)
        timings = timed_releases(layout, broker.address, secret, args.releases, tee)
        denied = denied_request(layout, broker.address, tee)
        show_audit(layout)
    say("verifier and broker stopped")
    if timings:
        say(f"timings: {len(timings)} in-process releases, p50 {statistics.median(timings):.1f} ms,"
            f" max {max(timings):.1f} ms (challenge + simulated evidence + appraisal + sealing)")
    ok = released and denied and refused
    say("demo: OK (1 release, 1 denial)" if ok else "demo: FAILED")
    return 0 if ok else 1


def say(text: str) -> None:
    """Demo output goes to stdout, flushed at once."""
    print(text, flush=True)


def ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


@contextmanager
def service(name: str, log_path: Path, *args: str) -> Iterator[ServiceProcess]:
    """A keybroker service process that is always stopped on exit."""
    proc = ServiceProcess.start(name, keybroker_command(*args), log_path=log_path)
    try:
        yield proc
    finally:
        code = proc.stop()
        say(f"{name} stopped (exit code {code})")


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "attester_agent.cli", *args]


def agent_sim_args(layout: DemoLayout, tee: Tee) -> list[str]:
    """The agent's simulator flags for ``tee`` (the launch measurement the policy accepts)."""
    demo = DEMO_TEES[tee]
    args = ["--insecure-simulator", "--simulator-dir", str(layout.sim),
            *demo.measurement_flags, demo.measurement.hex()]
    if demo.binds_init_data:
        args += ["--init-data", str(layout.init_data)]
    return args


def measure_image(layout: DemoLayout) -> bool:
    """`attester-agent measure`: put the demo container image into the simulated RTMR3."""
    done = subprocess.run(
        agent_command("measure", "--image", DEMO_IMAGE, "--insecure-simulator",
                      "--simulator-dir", str(layout.sim)),
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        say(f"MEASURE FAILED (agent exit {done.returncode}): {done.stderr.strip()[-800:]}")
        return False
    say(f"measured container image {DEMO_IMAGE[:23]}... into RTMR3 (runtime event log)")
    return True


def release_with_agent(layout: DemoLayout, broker: str, secret: bytes, tee: Tee = "snp") -> bool:
    """Release the demo secret through a real `attester-agent get-secret` process."""
    out = layout.root / "released-secret"
    out.unlink(missing_ok=True)
    if DEMO_TEES[tee].images and not measure_image(layout):
        return False
    start = time.perf_counter()
    done = subprocess.run(
        agent_command("get-secret", "--broker", broker, "--key-id", DEMO_KEY_ID, "--out",
                      str(out), *agent_tls_args(layout), *agent_sim_args(layout, tee)),
        capture_output=True, text=True, check=False,
    )
    elapsed = ms(start)
    if done.returncode != 0 or not out.exists():
        say(f"RELEASE FAILED (agent exit {done.returncode}): {done.stderr.strip()[-800:]}")
        return False
    mode = out.stat().st_mode & 0o777
    matches = out.read_bytes() == secret
    say(f"RELEASED {DEMO_KEY_ID} to the agent: written to {out} (mode {mode:o}), "
        f"{len(secret)} bytes, matches the stored secret: {matches} "
        f"({elapsed} ms incl. agent process start-up)")
    return matches and mode == 0o600


def demo_collector(layout: DemoLayout, tee: Tee, *, wrong: bool = False) -> Collector:
    """An in-process simulator collector for ``tee`` (``wrong``: a tampered launch
    measurement the policy does not accept)."""
    demo = DEMO_TEES[tee]
    measurement = demo.wrong_measurement if wrong else demo.measurement
    return demo.collector(layout.sim, measurement, demo_init_data(layout, tee))


def demo_init_data(layout: DemoLayout, tee: Tee) -> bytes:
    """The init-data the demo agent presents (none where the TEE cannot bind it)."""
    return layout.init_data.read_bytes() if DEMO_TEES[tee].binds_init_data else b""


def timed_releases(layout: DemoLayout, broker: str, secret: bytes, count: int,
                   tee: Tee = "snp") -> list[float]:
    """Repeat the release in-process to show steady-state latency."""
    init_data = demo_init_data(layout, tee)
    collector = demo_collector(layout, tee)
    credentials, channel = agent_channel(layout)
    timings: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        got = get_secrets(broker, [DEMO_KEY_ID], collector, init_data=init_data,
                          credentials=credentials, channel_binding=channel)
        timings.append((time.perf_counter() - start) * 1000)
        if got.get(DEMO_KEY_ID) != secret:
            say("timed release returned the wrong secret")
            return []
    return timings


def denied_request(layout: DemoLayout, broker: str, tee: Tee = "snp") -> bool:
    """A guest with a different launch measurement asks for the same key and is refused."""
    wrong = DEMO_TEES[tee].wrong_measurement
    collector = demo_collector(layout, tee, wrong=True)
    credentials, channel = agent_channel(layout)
    start = time.perf_counter()
    try:
        get_secrets(broker, [DEMO_KEY_ID], collector, init_data=demo_init_data(layout, tee),
                    credentials=credentials, channel_binding=channel)
    except KeybrokerError as err:
        say(f"DENIED {DEMO_KEY_ID} to a guest with launch measurement {wrong.hex()[:16]}...:"
            f" category {err.category.value}, reason: {err.reason} ({ms(start)} ms)")
        return err.category.value == "MEASUREMENT"
    say("UNEXPECTED: the tampered guest received the secret")
    return False


def plaintext_refused(broker: str, layout: DemoLayout, tee: Tee) -> bool:
    """A client without TLS gets no challenge from the demo broker."""
    try:
        get_secrets(broker, [DEMO_KEY_ID], demo_collector(layout, tee), timeout=5.0,
                    init_data=demo_init_data(layout, tee))
    except KeybrokerError as err:
        say(f"plaintext client refused by the broker ({err.category.value})")
        return err.category.value == "UNAVAILABLE"
    say("UNEXPECTED: the broker answered a plaintext client")
    return False


def show_audit(layout: DemoLayout) -> None:
    """Print the broker's audit trail (it never contains secret bytes)."""
    say("audit trail (broker):")
    for line in run_cli("broker", "audit", "list", "--config", str(layout.broker_config)
                        ).splitlines()[-6:]:
        say(f"  {line}")
