"""Verifier and broker processes started from a prepared demo layout (as ``keybroker demo``
does): real processes on loopback, mutual TLS between them, simulator roots allowed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from keybroker_cli.demo_setup import DemoLayout, write_broker_config
from keybroker_cli.launcher import ServiceProcess, keybroker_command


def start_verifier(layout: DemoLayout) -> ServiceProcess:
    """``keybroker verifier serve`` from the layout's config."""
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
