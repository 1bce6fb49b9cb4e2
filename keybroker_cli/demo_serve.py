"""``keybroker demo --workdir DIR --serve`` / ``--stop``: keep a finished demo's verifier and
broker running in the background, with their admin APIs, for administration by hand.

Invariants:
- Only a directory a demo already set up is served; nothing is generated except free loopback
  ports for the admin APIs and one client profile per admin certificate.
- The admin APIs are mutual TLS under the demo CA; principals and roles are the ``admins`` of
  the verifier config (the broker gets the same table). Without ``admins`` the admin APIs stay
  off, as in any deployment.
- ``DIR/admin/<name>.toml`` is a client profile (``keybroker admin ... --profile``): the CA,
  that certificate and key, and both admin addresses. ``DIR/services.json`` holds the process
  ids; ``--stop`` ends them (SIGTERM, then SIGKILL) and removes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

from keybroker_cli.demo_setup import DEMO_AGENT, DemoLayout, write_broker_config
from keybroker_cli.launcher import free_port, keybroker_command

SERVICE_CERTS = {"ca", "broker", "verifier", "broker-client", DEMO_AGENT}


def _start(name: str, argv: list[str], log: Path, timeout: float = 60.0) -> tuple[int, str]:
    out = log.with_suffix(".out")
    with out.open("wb") as stdout, log.open("ab") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    ready = f"{name} listening on "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith(ready):
                return proc.pid, line[len(ready):].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{name} did not start; see {log}")


def serve(layout: DemoLayout) -> int:
    """Start the services of ``layout`` in the background (module invariants)."""
    if not layout.verifier_config.exists():
        print(f"{layout.root} holds no demo: run `keybroker demo --workdir {layout.root}` first")
        return 2
    table = tomllib.loads(layout.verifier_config.read_text())["verifier"]
    admins = table.get("admins", {})
    ports = {"verifier": free_port(), "broker": free_port()}
    ca = layout.tls.ca
    admins_line = "admins = { " + ", ".join(
        f'"{who}" = {json.dumps(list(roles))}' for who, roles in admins.items()) + " }\n"
    if "admin_listen" not in table:
        with layout.verifier_config.open("a") as out:
            out.write(f'admin_listen = "127.0.0.1:{ports["verifier"]}"\n'
                      f'admin_client_ca = "{ca}"\n')
    else:
        ports["verifier"] = int(str(table["admin_listen"]).rpartition(":")[2])
    pids = {}
    pids["verifier"], address = _start("verifier", keybroker_command(
        "verifier", "serve", "--config", str(layout.verifier_config), "--insecure-simulator"),
        layout.verifier / "verifier.log")
    served = DemoLayout(layout.root, broker_settings=(
        f'admin_listen = "127.0.0.1:{ports["broker"]}"\nadmin_client_ca = "{ca}"\n'
        + (admins_line if admins else "")))
    write_broker_config(served, address)
    pids["broker"], broker = _start("broker", keybroker_command(
        "broker", "serve", "--config", str(layout.broker_config), "--insecure-simulator"),
        layout.broker / "broker.log")
    (layout.root / "services.json").write_text(json.dumps(pids))
    profiles = layout.root / "admin"
    profiles.mkdir(exist_ok=True)
    for cert in sorted(layout.tls.root.glob("*.pem")):
        name = cert.stem
        if name in SERVICE_CERTS or name.endswith("-key"):
            continue
        (profiles / f"{name}.toml").write_text(
            f'ca = "{ca}"\ncert = "{cert}"\nkey = "{layout.tls.key(name)}"\n'
            f'verifier = "127.0.0.1:{ports["verifier"]}"\n'
            f'broker = "127.0.0.1:{ports["broker"]}"\n')
    print(f"verifier on {address} (admin API 127.0.0.1:{ports['verifier']}), broker on {broker} "
          f"(admin API 127.0.0.1:{ports['broker']}); client profiles in {profiles}/"
          + ("" if admins else "; no admins configured: the admin APIs are off"))
    return 0


def stop(layout: DemoLayout) -> int:
    """End the services started by ``serve``."""
    state = layout.root / "services.json"
    if not state.exists():
        print(f"no demo services running from {layout.root}")
        return 1
    for name, pid in json.loads(state.read_text()).items():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(int(pid), signal.SIGKILL)
        print(f"{name} stopped")
    state.unlink()
    return 0
