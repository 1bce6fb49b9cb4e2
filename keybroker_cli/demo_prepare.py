"""``keybroker demo --workdir DIR --prepare-only``: a complete simulator deployment on disk,
for an operator to start and use by hand (the README's "Running the processes yourself").

Invariants:
- Only an empty (or new) directory is prepared; an existing deployment is never overwritten.
- Everything the demo generates is there (throwaway CA and certificates, simulator roots and
  collateral, verifier result key, policy, broker database, KEK, release rules and the demo
  secret), plus fixed loopback ports, the metrics endpoints, the admin APIs (mutual TLS under
  the throwaway CA, the ``admin`` certificate holding the operator and auditor roles) and a
  client profile ``DIR/admin/admin.toml``; nothing is started.
- The services still need their explicit ``--insecure-simulator`` flag to trust the simulator
  roots: preparing changes nothing about that rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from keybroker_cli.demo_setup import (
    DEMO_AGENT,
    DEMO_KEY_ID,
    DEMO_TEES,
    DemoLayout,
    PolicySpec,
    Tee,
    prepare,
    write_broker_config,
)

ADMIN = "admin"  # the client certificate `keybroker tls init` always issues
ADMIN_ROLES = ("operator", "auditor")


@dataclass(frozen=True)
class Ports:
    """Loopback ports of a prepared deployment."""

    broker: int = 50051
    broker_admin: int = 50052
    broker_metrics: int = 50053
    verifier: int = 50061
    verifier_admin: int = 50062
    verifier_metrics: int = 50063


def prepare_deployment(layout: DemoLayout, *, tee: Tee = "snp", ports: Ports = Ports(),
                       broker_settings: str = "", verifier_settings: str = "",
                       extra_policies: Sequence[PolicySpec] = ()) -> bytes:
    """Write the deployment (module invariants); returns the demo secret. ``*_settings`` are
    extra config lines and ``extra_policies`` extra policies with their rules (tests)."""
    ca = layout.tls.ca
    admins = f"admins = {{ {ADMIN} = {json.dumps(list(ADMIN_ROLES))} }}\n"
    served = DemoLayout(layout.root, broker_settings=(
        layout.broker_settings
        + f'admin_listen = "127.0.0.1:{ports.broker_admin}"\nadmin_client_ca = "{ca}"\n'
        + f'metrics_listen = "127.0.0.1:{ports.broker_metrics}"\n' + admins + broker_settings))
    secret = prepare(served, tee=tee, extra_policies=extra_policies)
    text = layout.verifier_config.read_text().replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{ports.verifier}"')
    layout.verifier_config.write_text(
        text + f'admin_listen = "127.0.0.1:{ports.verifier_admin}"\n'
        f'admin_client_ca = "{ca}"\n'
        f'metrics_listen = "127.0.0.1:{ports.verifier_metrics}"\n' + admins + verifier_settings)
    write_broker_config(served, f"127.0.0.1:{ports.verifier}",
                        listen=f"127.0.0.1:{ports.broker}")
    profiles = layout.root / "admin"
    profiles.mkdir(exist_ok=True)
    (profiles / f"{ADMIN}.toml").write_text(
        f'ca = "{ca}"\ncert = "{layout.tls.cert(ADMIN)}"\nkey = "{layout.tls.key(ADMIN)}"\n'
        f'verifier = "127.0.0.1:{ports.verifier_admin}"\n'
        f'broker = "127.0.0.1:{ports.broker_admin}"\n')
    return secret


def prepared_summary(layout: DemoLayout, tee: Tee, ports: Ports) -> str:
    """What was written and the commands that use it."""
    demo = DEMO_TEES[tee]
    root = layout.root
    flags = " ".join((*demo.agent_args(layout.sim, demo.measurement),
                      *(("--init-data", str(layout.init_data)) if demo.binds_init_data else ())))
    return "\n".join((
        f"prepared a {demo.display_name} simulator deployment in {root} (INSECURE test roots; "
        "it holds keys and the demo secret):",
        f"  verifier: {layout.verifier_config} (127.0.0.1:{ports.verifier}, admin API "
        f"127.0.0.1:{ports.verifier_admin}, metrics https://127.0.0.1:{ports.verifier_metrics}"
        "/metrics)",
        f"  broker:   {layout.broker_config} (127.0.0.1:{ports.broker}, admin API "
        f"127.0.0.1:{ports.broker_admin}, metrics https://127.0.0.1:{ports.broker_metrics}"
        f"/metrics); secret {DEMO_KEY_ID}",
        f"  TLS:      {layout.tls.ca} and certificates; agent certificate {DEMO_AGENT}",
        f"  admin:    profile {root / 'admin' / (ADMIN + '.toml')} "
        f"(roles {', '.join(ADMIN_ROLES)})",
        f"  agent:    --insecure-simulator --simulator-dir {layout.sim} {flags}",
        "start the services with --insecure-simulator (see README.md, \"Running the processes "
        "yourself\")",
    ))
