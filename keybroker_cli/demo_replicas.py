"""A replicated deployment: N verifiers and M brokers sharing one PostgreSQL database.

Used by the load benchmark and the replica tests, and a worked example of the README's
"two replicas on PostgreSQL": the demo layout (``demo_setup.prepare``) moved onto a
``postgresql://`` database, every verifier started from the same config, every broker from
its own config (its listen address and ``replica_id``) naming every verifier.

Invariants:
- Replicas share nothing but the database (and the files an operator would copy to each
  machine: TLS material, the KEK file, the verifier's keys and policies).
- Processes are stopped on exit, brokers first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from keybroker_cli.demo_setup import (
    DEMO_KEY_ID,
    DemoLayout,
    Tee,
    prepare,
    put_secret,
    run_cli,
    write_broker_config,
)
from keybroker_cli.launcher import ServiceProcess, keybroker_command


def prepare_replicas(layout: DemoLayout, url: str, *, tee: Tee = "snp",
                     verifier_settings: str = "") -> bytes:
    """Prepare the demo layout with its state in PostgreSQL at ``url``; returns the demo
    secret (stored once, in the shared database)."""
    prepare(layout, tee=tee)
    with layout.verifier_config.open("a") as config:
        config.write(f'database = "{url}"\n{verifier_settings}')
    write_broker_config(layout, "127.0.0.1:1", database=url)
    run_cli("broker", "init", "--config", str(layout.broker_config))
    secret = b"replicated-demo-secret-" + layout.root.name.encode()
    put_secret(layout, DEMO_KEY_ID, secret)
    return secret


@dataclass
class ReplicaSet:
    """The running replicas."""

    layout: DemoLayout
    url: str
    verifiers: list[ServiceProcess] = field(default_factory=list)
    brokers: list[ServiceProcess] = field(default_factory=list)

    def broker_config(self, index: int) -> Path:
        return self.layout.broker / f"broker-{index}.toml"

    def start_verifier(self) -> ServiceProcess:
        """One more verifier replica (the shared config, a port of its own)."""
        index = len(self.verifiers)
        process = ServiceProcess.start("verifier", keybroker_command(
            "--log-level", "WARNING", "verifier", "serve", "--config",
            str(self.layout.verifier_config), "--insecure-simulator"),
            log_path=self.layout.verifier / f"verifier-{index}.log")
        self.verifiers.append(process)
        return process

    def start_broker(self, index: int | None = None, listen: str = "127.0.0.1:0",
                     wrapper: Sequence[str] = ()) -> ServiceProcess:
        """Broker replica ``index`` (a new one by default; an index again restarts that
        replica with its ``replica_id``), naming every verifier; ``wrapper`` runs the
        command (for example ``prlimit --fsize=N --``)."""
        index = len(self.brokers) if index is None else index
        config = self.broker_config(index)
        write_broker_config(self.layout, [v.address for v in self.verifiers],
                            database=self.url, replica_id=f"broker-{index}", listen=listen,
                            config=config)
        process = ServiceProcess.start("broker", [*wrapper, *keybroker_command(
            "--log-level", "WARNING", "broker", "serve", "--config", str(config),
            "--insecure-simulator")], log_path=self.layout.broker / f"broker-{index}.log")
        if index < len(self.brokers):
            self.brokers[index] = process
        else:
            self.brokers.append(process)
        return process

    def stop(self) -> None:
        for process in [*self.brokers, *self.verifiers]:
            process.stop()


@contextmanager
def replica_services(layout: DemoLayout, url: str, *, verifiers: int = 2,
                     brokers: int = 2) -> Iterator[ReplicaSet]:
    """Start ``verifiers`` then ``brokers`` replicas on a prepared layout; stop them on exit."""
    replicas = ReplicaSet(layout, url)
    with ExitStack() as stack:
        stack.callback(replicas.stop)
        for _ in range(verifiers):
            replicas.start_verifier()
        for _ in range(brokers):
            replicas.start_broker()
        yield replicas
