"""`keybroker demo`: the whole release flow on embedded defaults, end to end.

Starts a verifier and a broker as separate OS processes on loopback (SQLite files, generated
keys, a simulator under a freshly generated INSECURE test root: SEV-SNP by default, TDX, SGX
or TPM with ``--tee``; TPM runs real swtpm machines whose AKs are enrolled first), stores a
demo secret with a release rule, releases it through the attester
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
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from attester_agent.client import get_secrets
from attester_agent.collectors.base import Collector
from keybroker.errors import KeybrokerError
from keybroker_cli import demo_serve, demo_tpm
from keybroker_cli.demo_prepare import Ports, prepare_deployment, prepared_summary
from keybroker_cli.demo_report import Steps, Timings, ms, say, show_audit, show_metrics
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
    write_broker_config,
)
from keybroker_cli.launcher import ServiceProcess, free_port, keybroker_command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` subcommand."""
    parser = sub.add_parser("demo", help="run the release flow end to end on the simulator")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="directory for databases, keys and logs (default: a temp dir)")
    parser.add_argument("--releases", type=int, default=20,
                        help="timed in-process releases after the first (default 20)")
    parser.add_argument("--tee", choices=TEES, default="snp",
                        help="simulated platform: snp (default), tdx, sgx, nitro, or tpm (real "
                             "swtpm processes: the Debian packages swtpm and swtpm-tools)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--serve", action="store_true",
                      help="start the services of an existing --workdir in the background, "
                           "with their admin APIs, and write admin client profiles")
    keep.add_argument("--stop", action="store_true",
                      help="stop the services --serve started")
    keep.add_argument("--prepare-only", action="store_true",
                      help="write a simulator deployment into an empty --workdir (configs on "
                           "fixed loopback ports, certificates, keys, policy, the demo secret, "
                           "an admin profile) and start nothing: for running the processes "
                           "yourself")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The demo, or (``--serve`` / ``--stop``) its services kept running in the background."""
    if args.prepare_only:
        return _prepare_only(args)
    if args.serve or args.stop:
        if args.workdir is None:
            print("--serve and --stop need --workdir", file=sys.stderr)
            return 2
        layout = DemoLayout(args.workdir.resolve())
        return demo_serve.serve(layout) if args.serve else demo_serve.stop(layout)
    return _demo(args)


def _prepare_only(args: argparse.Namespace) -> int:
    if args.workdir is None:
        print("--prepare-only needs --workdir", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    if workdir.exists() and any(workdir.iterdir()):
        print(f"{workdir} is not empty: --prepare-only writes a new deployment only into an "
              "empty or new directory", file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    layout = DemoLayout(workdir.resolve())
    prepare_deployment(layout, tee=args.tee)
    print(prepared_summary(layout, args.tee, Ports()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when one release and one denial happened as expected."""
    missing = demo_tpm.missing_parts() if args.tee == "tpm" else []
    if missing:
        print("keybroker demo --tee tpm runs real swtpm machines; missing: " + "; ".join(missing)
              + " (bash scripts/demo.sh --tee tpm installs them)", file=sys.stderr)
        return 1
    keep = args.workdir is not None
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="keybroker-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    layout = DemoLayout(workdir.resolve())
    tee: Tee = args.tee
    # The demo announces the simulator itself; per-request agent warnings would repeat it.
    logging.getLogger("attester_agent").setLevel(logging.ERROR)
    say(f"keybroker demo: {DEMO_TEES[tee].display_name} on the SIMULATOR, under a generated "
        "INSECURE test root (nothing here is a production set-up)")
    say(f"working directory {layout.root}: holds generated keys, certificates and the released "
        "secret; " + ("kept (--workdir; service logs in verifier/ and broker/)" if keep else
                      "deleted at exit (give --workdir DIR to keep it and the service logs)"))
    try:
        return _run_steps(layout, tee, args.releases, keep=keep)
    finally:
        if not keep:
            shutil.rmtree(layout.root, ignore_errors=True)


def _run_steps(layout: DemoLayout, tee: Tee, releases: int, *, keep: bool) -> int:
    steps = Steps()
    timings = Timings()
    t0 = time.perf_counter()
    secret = prepare(layout, tee=tee)
    metrics = {name: f"127.0.0.1:{free_port()}" for name in ("verifier", "broker")}
    with layout.verifier_config.open("a") as out:
        out.write(f'metrics_listen = "{metrics["verifier"]}"\n')
    layout = DemoLayout(layout.root, broker_settings=layout.broker_settings
                        + f'metrics_listen = "{metrics["broker"]}"\n')
    timings.add("set-up", ms(t0))
    steps.say(f"set up: TLS CA and certificates, verifier result key, policy "
              f"{DEMO_TEES[tee].policy_name}, release rules, secret {DEMO_KEY_ID} "
              f"({len(secret)} bytes) stored under the broker's KEK")
    codes: dict[str, int] = {}
    with ExitStack() as stack:
        verifier = stack.enter_context(service(
            "verifier", layout.verifier / "verifier.log", codes,
            "verifier", "serve", "--config", str(layout.verifier_config), "--insecure-simulator",
        ))
        steps.say(f"verifier started: pid {verifier.pid}, {verifier.address}, mutual TLS")
        write_broker_config(layout, verifier.address)
        broker = stack.enter_context(service(
            "broker", layout.broker / "broker.log", codes,
            "broker", "serve", "--config", str(layout.broker_config), "--insecure-simulator",
        ))
        steps.say(f"broker started: pid {broker.pid}, {broker.address}, TLS for agents with a "
                  f"{DEMO_AGENT} client certificate bound into the evidence, mutual TLS to the "
                  "verifier")
        if tee == "tpm":
            credentials, _ = agent_channel(layout)
            for line in stack.enter_context(demo_tpm.tpm_machines(
                    layout.sim, (DEMO_TEES[tee].measurement, DEMO_TEES[tee].wrong_measurement),
                    broker.address, credentials)):
                steps.say(line)
        refused = plaintext_refused(broker.address, layout, tee, steps)
        release_id, deny_id = f"demo-release-{uuid.uuid4().hex[:8]}", \
            f"demo-denial-{uuid.uuid4().hex[:8]}"
        released = release_with_agent(layout, broker.address, secret, tee, steps=steps,
                                       request_id=release_id, timings=timings)
        denied = denied_request(layout, broker.address, tee, steps=steps, request_id=deny_id,
                                timings=timings)
        show_audit(layout, steps, (release_id, deny_id), keep=keep)
        timed = timed_releases(layout, broker.address, secret, releases, tee)
        show_metrics(steps, layout, {k: f"https://{v}/metrics" for k, v in metrics.items()},
                     len(timed))
    steps.say("verifier and broker stopped (exit codes: "
              + ", ".join(f"{name} {code}" for name, code in codes.items()) + ")")
    say("")
    say("timings (apart from the steps; this machine, this run):")
    for line in timings.lines(timed):
        say(f"  {line}")
    ok = released and denied and refused and all(code == 0 for code in codes.values())
    say("demo: OK (1 release, 1 denial)" if ok else "demo: FAILED")
    return 0 if ok else 1


@contextmanager
def service(name: str, log_path: Path, codes: dict[str, int],
            *args: str) -> Iterator[ServiceProcess]:
    """A keybroker service process that is always stopped on exit (its exit code is recorded
    in ``codes``)."""
    proc = ServiceProcess.start(name, keybroker_command(*args), log_path=log_path)
    try:
        yield proc
    finally:
        codes[name] = proc.stop()


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "attester_agent.cli", *args]


def agent_sim_args(layout: DemoLayout, tee: Tee) -> list[str]:
    """The agent's simulator flags for ``tee`` (the launch measurement the policy accepts)."""
    demo = DEMO_TEES[tee]
    args = ["--insecure-simulator", "--simulator-dir", str(layout.sim),
            *demo.agent_args(layout.sim, demo.measurement)]
    if demo.binds_init_data:
        args += ["--init-data", str(layout.init_data)]
    return args


def measure_image(layout: DemoLayout, steps: Steps | None = None) -> bool:
    """`attester-agent measure`: put the demo container image into the simulated RTMR3."""
    done = subprocess.run(
        agent_command("measure", "--image", DEMO_IMAGE, "--insecure-simulator",
                      "--simulator-dir", str(layout.sim)),
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        say(f"MEASURE FAILED (agent exit {done.returncode}): {done.stderr.strip()[-800:]}")
        return False
    if steps is not None:
        steps.say(f"attester-agent measure: container image {DEMO_IMAGE[:23]}... extended "
                  "into RTMR3 (runtime event log)")
    return True


def release_with_agent(layout: DemoLayout, broker: str, secret: bytes, tee: Tee = "snp", *,
                       steps: Steps | None = None, request_id: str = "",
                       timings: Timings | None = None) -> bool:
    """Release the demo secret through a real `attester-agent get-secret` process."""
    out = layout.root / "released-secret"
    out.unlink(missing_ok=True)
    if DEMO_TEES[tee].images and not measure_image(layout, steps):
        return False
    start = time.perf_counter()
    done = subprocess.run(
        agent_command("get-secret", "--broker", broker, "--key-id", DEMO_KEY_ID, "--out",
                      str(out), *(["--request-id", request_id] if request_id else []),
                      *agent_tls_args(layout), *agent_sim_args(layout, tee)),
        capture_output=True, text=True, check=False,
    )
    elapsed = ms(start)
    if done.returncode != 0 or not out.exists():
        say(f"RELEASE FAILED (agent exit {done.returncode}): {done.stderr.strip()[-800:]}")
        return False
    mode = out.stat().st_mode & 0o777
    matches = out.read_bytes() == secret
    if timings is not None:
        timings.add("release through the attester-agent process (incl. its start-up)", elapsed)
    if steps is not None:
        steps.say(f"RELEASED {DEMO_KEY_ID} to attester-agent get-secret (request {request_id})")
        steps.more(f"agent: {done.stderr.strip().splitlines()[-1]}")
        steps.more(f"the file matches the stored secret: {matches}")
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


def denied_request(layout: DemoLayout, broker: str, tee: Tee = "snp", *,
                   steps: Steps | None = None, request_id: str = "",
                   timings: Timings | None = None) -> bool:
    """A guest with a different launch measurement asks for the same key and is refused."""
    wrong = DEMO_TEES[tee].wrong_measurement
    collector = demo_collector(layout, tee, wrong=True)
    credentials, channel = agent_channel(layout)
    start = time.perf_counter()
    try:
        get_secrets(broker, [DEMO_KEY_ID], collector, init_data=demo_init_data(layout, tee),
                    credentials=credentials, channel_binding=channel,
                    request_id=request_id or None)
    except KeybrokerError as err:
        if timings is not None:
            timings.add("denial (in-process agent)", ms(start))
        if steps is not None:
            steps.say(f"DENIED {DEMO_KEY_ID} to a guest with launch measurement "
                      f"{wrong.hex()[:16]}... (request {request_id})")
            steps.more(f"{err.category.value}: {err.reason}")
        return err.category.value == "MEASUREMENT"
    say("UNEXPECTED: the tampered guest received the secret")
    return False


def plaintext_refused(broker: str, layout: DemoLayout, tee: Tee,
                      steps: Steps | None = None) -> bool:
    """A client without TLS gets no challenge from the demo broker."""
    try:
        get_secrets(broker, [DEMO_KEY_ID], demo_collector(layout, tee), timeout=5.0,
                    init_data=demo_init_data(layout, tee))
    except KeybrokerError as err:
        if steps is not None:
            steps.say(f"a client without TLS is refused by the broker ({err.category.value})")
        return err.category.value == "UNAVAILABLE"
    say("UNEXPECTED: the broker answered a plaintext client")
    return False
