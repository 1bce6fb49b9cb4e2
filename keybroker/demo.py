"""`keybroker demo`: the whole release flow on embedded defaults, end to end.

Starts a verifier and a broker as separate OS processes on loopback (SQLite files, generated
keys, the SEV-SNP simulator under a freshly generated INSECURE test root), stores a demo
secret with a release rule, releases it through the attester agent (a real agent process),
shows a denied request (wrong launch measurement) with its category and reason, prints
timings, stops both processes and exits 0 only if the release and the denial both happened
as expected.

Invariant: the simulator root exists only inside the demo's working directory and both
services are started with their explicit insecure flags; nothing here is a production setup.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from attester_agent.client import get_secrets
from attester_agent.collectors.simulator import SimulatorCollector
from attester_agent.simulator.snp import SnpTestCa
from keybroker.errors import KeybrokerError
from keybroker.launcher import ServiceProcess, keybroker_command

DEMO_KEY_ID = "demo/db-password"
DEMO_POLICY = "snp-demo"
DEMO_MEASUREMENT = hashlib.sha384(b"keybroker demo guest image v1").digest()
WRONG_MEASUREMENT = hashlib.sha384(b"keybroker demo guest image v1 (tampered)").digest()
DEMO_INIT_DATA = b'workload = "demo"\nimage = "sha256:' + b"ab" * 32 + b'"\n'


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo keeps its files."""

    root: Path

    @property
    def sim(self) -> Path:
        return self.root / "sim"

    @property
    def verifier(self) -> Path:
        return self.root / "verifier"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def verifier_config(self) -> Path:
        return self.verifier / "verifier.toml"

    @property
    def broker_config(self) -> Path:
        return self.broker / "broker.toml"

    @property
    def init_data(self) -> Path:
        return self.root / "init-data.toml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` subcommand."""
    parser = sub.add_parser("demo", help="run the release flow end to end on the simulator")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="directory for databases, keys and logs (default: a temp dir)")
    parser.add_argument("--releases", type=int, default=20,
                        help="timed in-process releases after the first (default 20)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when one release and one denial happened as expected."""
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="keybroker-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    layout = DemoLayout(workdir.resolve())
    say(f"keybroker demo (working directory {layout.root})")
    say("WARNING: this demo uses the SEV-SNP SIMULATOR under a generated INSECURE test root")
    t0 = time.perf_counter()
    secret = prepare(layout)
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
        released = release_with_agent(layout, broker.address, secret)
        # The demo already warned about the simulator; keep per-request agent logs quiet.
        logging.getLogger("attester_agent").setLevel(logging.ERROR)
        timings = timed_releases(layout, broker.address, secret, args.releases)
        denied = denied_request(layout, broker.address)
        show_audit(layout)
    say("verifier and broker stopped")
    if timings:
        say(f"timings: {len(timings)} in-process releases, p50 {statistics.median(timings):.1f} ms,"
            f" max {max(timings):.1f} ms (challenge + simulated evidence + appraisal + sealing)")
    ok = released and denied
    say("demo: OK (1 release, 1 denial)" if ok else "demo: FAILED")
    return 0 if ok else 1


def say(text: str) -> None:
    """Demo output goes to stdout, flushed at once."""
    print(text, flush=True)


def ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def run_cli(*args: str) -> str:
    """Run a keybroker CLI command in a child process; raise with its output on failure."""
    done = subprocess.run(keybroker_command(*args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"keybroker {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return done.stdout


@contextmanager
def service(name: str, log_path: Path, *args: str) -> Iterator[ServiceProcess]:
    """A keybroker service process that is always stopped on exit."""
    proc = ServiceProcess.start(name, keybroker_command(*args), log_path=log_path)
    try:
        yield proc
    finally:
        code = proc.stop()
        say(f"{name} stopped (exit code {code})")


def prepare(layout: DemoLayout, *, challenge_ttl: int = 60,
            extra_policies: Sequence[PolicySpec] = ()) -> bytes:
    """Generate the simulator CA, verifier keys and policies, broker database, KEK and the
    demo secret; returns the secret. ``extra_policies`` add policies (and their rules)."""
    for path in (layout.sim, layout.verifier, layout.broker, layout.verifier / "policies"):
        path.mkdir(parents=True, exist_ok=True)
    SnpTestCa.generate().save(layout.sim)
    layout.init_data.write_bytes(DEMO_INIT_DATA)
    run_cli("verifier", "init", "--dir", str(layout.verifier))
    specs = [PolicySpec(DEMO_POLICY, "demo/*", DEMO_MEASUREMENT), *extra_policies]
    for spec in specs:
        write_policy(layout, spec)
    layout.verifier_config.write_text(
        "[verifier]\n"
        'listen = "127.0.0.1:0"\n'
        f"policies = [{', '.join(f'{chr(34)}policies/{p.name}.toml{chr(34)}' for p in specs)}]\n"
        "collateral = []\n"
        'result_key = "result-key.pem"\n'
        "result_ttl_seconds = 60\n"
        'audience = "keybroker-broker"\n'
        f'simulator_roots = ["{layout.sim / "ark.pem"}"]\n'
    )
    (layout.broker / "release-rules.toml").write_text("".join(
        f'[[rule]]\nkeys = "{spec.keys}"\npolicy = "{spec.name}"\naccept_warning = false\n\n'
        for spec in specs
    ))
    write_broker_config(layout, "127.0.0.1:1", challenge_ttl=challenge_ttl)
    run_cli("broker", "init", "--config", str(layout.broker_config))
    secret = b"demo-db-password-" + secrets.token_hex(16).encode()
    put_secret(layout, DEMO_KEY_ID, secret)
    return secret


@dataclass(frozen=True)
class PolicySpec:
    """An appraisal policy for the simulator and the release rule that requires it."""

    name: str
    keys: str
    measurement: bytes
    min_tcb: tuple[tuple[str, int], ...] = (
        ("bootloader", 0), ("tee", 0), ("snp", 0), ("microcode", 0))


def write_policy(layout: DemoLayout, spec: PolicySpec) -> None:
    """Write the verifier policy file for ``spec``."""
    floor = ", ".join(f"{name} = {value}" for name, value in spec.min_tcb)
    (layout.verifier / "policies" / f"{spec.name}.toml").write_text(
        "[policy]\n"
        f'name = "{spec.name}"\n'
        "version = 1\n"
        'platform = "sev-snp"\n'
        "\n[snp]\n"
        f'measurements = ["{spec.measurement.hex()}"]\n'
        f"min_tcb = {{ {floor} }}\n"
        "allow_debug = false\n"
        "allowed_vmpls = [0]\n"
        "allow_migration_agent = false\n"
        "allow_smt = true\n"
        "require_init_data = true\n"
    )


def put_secret(layout: DemoLayout, key_id: str, secret: bytes) -> None:
    """Store ``secret`` under ``key_id`` through the broker admin CLI (file mode 0600)."""
    secret_file = layout.broker / "incoming-secret.bin"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    try:
        run_cli("broker", "secret", "put", "--config", str(layout.broker_config),
                "--key-id", key_id, "--file", str(secret_file))
    finally:
        secret_file.unlink()


def write_broker_config(layout: DemoLayout, verifier_address: str, *,
                        challenge_ttl: int = 60) -> None:
    """(Re)write the broker config pointing at the verifier's address."""
    layout.broker_config.write_text(
        "[broker]\n"
        'listen = "127.0.0.1:0"\n'
        'database = "broker.db"\n'
        'kek_file = "kek.bin"\n'
        f'verifier = "{verifier_address}"\n'
        f'verifier_jwks = "{layout.verifier / "verifier-jwks.json"}"\n'
        'verifier_alg = "ES256"\n'
        "verifier_timeout_seconds = 5.0\n"
        f"challenge_ttl_seconds = {challenge_ttl}\n"
        'audience = "keybroker-broker"\n'
        'release_rules = "release-rules.toml"\n'
        "accept_insecure_results = true\n"
    )


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "attester_agent.cli", *args]


def release_with_agent(layout: DemoLayout, broker: str, secret: bytes) -> bool:
    """Release the demo secret through a real `attester-agent get-secret` process."""
    out = layout.root / "released-secret"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(
        agent_command(
            "get-secret", "--broker", broker, "--key-id", DEMO_KEY_ID, "--out", str(out),
            "--init-data", str(layout.init_data),
            "--insecure-simulator", "--simulator-dir", str(layout.sim),
            "--sim-measurement", DEMO_MEASUREMENT.hex(),
        ),
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


def timed_releases(layout: DemoLayout, broker: str, secret: bytes, count: int) -> list[float]:
    """Repeat the release in-process to show steady-state latency."""
    init_data = layout.init_data.read_bytes()
    collector = SimulatorCollector(layout.sim, insecure=True, measurement=DEMO_MEASUREMENT,
                                   init_data=init_data)
    timings: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        got = get_secrets(broker, [DEMO_KEY_ID], collector, init_data=init_data)
        timings.append((time.perf_counter() - start) * 1000)
        if got.get(DEMO_KEY_ID) != secret:
            say("timed release returned the wrong secret")
            return []
    return timings


def denied_request(layout: DemoLayout, broker: str) -> bool:
    """A guest with a different launch measurement asks for the same key and is refused."""
    init_data = layout.init_data.read_bytes()
    collector = SimulatorCollector(layout.sim, insecure=True, measurement=WRONG_MEASUREMENT,
                                   init_data=init_data)
    start = time.perf_counter()
    try:
        get_secrets(broker, [DEMO_KEY_ID], collector, init_data=init_data)
    except KeybrokerError as err:
        say(f"DENIED {DEMO_KEY_ID} to a guest with measurement {WRONG_MEASUREMENT.hex()[:16]}...:"
            f" category {err.category.value}, reason: {err.reason} ({ms(start)} ms)")
        return err.category.value == "MEASUREMENT"
    say("UNEXPECTED: the tampered guest received the secret")
    return False


def show_audit(layout: DemoLayout) -> None:
    """Print the broker's audit trail (it never contains secret bytes)."""
    say("audit trail (broker):")
    for line in run_cli("broker", "audit", "list", "--config", str(layout.broker_config)
                        ).splitlines()[-6:]:
        say(f"  {line}")
