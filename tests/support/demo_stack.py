"""Verifier and broker processes started from a prepared demo layout (as ``keybroker demo``
does): real processes on loopback, mutual TLS between them, simulator roots allowed."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from keybroker.v1 import broker_pb2_grpc
from keybroker_cli.demo_prepare import Ports, prepare_deployment
from keybroker_cli.demo_setup import DemoLayout, PolicySpec, Tee, write_broker_config
from keybroker_cli.launcher import ServiceProcess, keybroker_command
from support.admin import free_port
from support.agent_tls import secure_channel
from support.release_attempts import Env

# Test deployments start many verifiers: one appraisal process each unless a test asks for
# more (the worker pool itself is tested in test_verifier_workers with several).
ONE_WORKER = "workers = 1\n"


def _one_worker(settings: str) -> str:
    return settings if "workers" in settings else settings + ONE_WORKER


def start_verifier(layout: DemoLayout) -> ServiceProcess:
    """``keybroker verifier serve`` from the layout's config (one appraisal worker unless
    the config names ``workers``)."""
    config = layout.verifier_config.read_text()
    if "workers" not in config:
        layout.verifier_config.write_text(config + ONE_WORKER)
    return ServiceProcess.start(
        "verifier", keybroker_command("verifier", "serve", "--config",
                                      str(layout.verifier_config), "--insecure-simulator"),
        log_path=layout.verifier / "verifier.log")


@contextmanager
def demo_services(layout: DemoLayout, *, challenge_ttl: int = 60,
                  broker_extra: Callable[[], None] | None = None
                  ) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """(verifier, broker), stopped on exit; ``broker_extra`` runs after the broker config is
    written (to append settings) and before the broker starts."""
    verifier = start_verifier(layout)
    try:
        write_broker_config(layout, verifier.address, challenge_ttl=challenge_ttl)
        if broker_extra is not None:
            broker_extra()
        broker = ServiceProcess.start(
            "broker", keybroker_command("broker", "serve", "--config",
                                        str(layout.broker_config), "--insecure-simulator"),
            log_path=layout.broker / "broker.log")
        try:
            yield verifier, broker
        finally:
            broker.stop()
    finally:
        verifier.stop()


@dataclass
class Prepared:
    """A ``keybroker demo --prepare-only`` deployment (free ports) with both services running."""

    layout: DemoLayout
    ports: Ports
    secret: bytes
    verifier: ServiceProcess
    broker: ServiceProcess


@contextmanager
def prepared_services(root: Path, *, broker_settings: str = "", verifier_settings: str = "",
                      global_args: Sequence[str] = (), tee: Tee = "snp",
                      extra_policies: Sequence[PolicySpec] = (),
                      before_start: Callable[[DemoLayout], None] | None = None
                      ) -> Iterator[Prepared]:
    """Prepare a deployment under ``root`` and run its verifier and broker (``global_args``
    go before the subcommand, for example ``--log-level DEBUG``; ``before_start`` may change
    the written files); both stopped on exit (a stopped verifier is continued first)."""
    layout = DemoLayout(root)
    ports = Ports(*(free_port() for _ in range(6)))
    secret = prepare_deployment(layout, ports=ports, broker_settings=broker_settings,
                                verifier_settings=_one_worker(verifier_settings), tee=tee,
                                extra_policies=extra_policies)
    if before_start is not None:
        before_start(layout)
    verifier = ServiceProcess.start("verifier", keybroker_command(
        *global_args, "verifier", "serve", "--config", str(layout.verifier_config),
        "--insecure-simulator"), log_path=layout.verifier / "verifier.log")
    try:
        broker = ServiceProcess.start("broker", keybroker_command(
            *global_args, "broker", "serve", "--config", str(layout.broker_config),
            "--insecure-simulator"), log_path=layout.broker / "broker.log")
        try:
            yield Prepared(layout, ports, secret, verifier, broker)
        finally:
            broker.stop()
    finally:
        with suppress(ProcessLookupError):
            os.kill(verifier.pid, signal.SIGCONT)
        verifier.stop()


@contextmanager
def served_env(served: Prepared) -> Iterator[Env]:
    """The release-attempt environment of a running deployment: an agent channel (mutual
    TLS) to its broker; the channel is closed on exit."""
    channel = secure_channel(served.layout, served.broker.address)
    try:
        yield Env(served.layout, served.secret, served.verifier, served.broker, channel,
                  broker_pb2_grpc.KeyBrokerStub(channel))
    finally:
        channel.close()
