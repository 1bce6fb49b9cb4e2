"""The broker's Prometheus metrics: releases and denials by category, TEE and release-rule
pattern, outstanding challenges, the release rules in force, plus what every service measures
(``keybroker.metrics``: gRPC requests, dependency availability including the HSM and the
verifier, audit write latency and failures).

Invariants:
- Counters are fed by the broker's observers (``Broker.observer``, ``AuditLog.observer``,
  ``HealthMonitor.observe``); the gauges of state (outstanding challenges, rules version)
  are read at scrape time, off the request path.
- A scrape never fails the service: a store that cannot be read is left out of that scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.release import Broker
from keybroker.errors import KeybrokerError
from keybroker.health import HealthMonitor
from keybroker.metrics import ServiceMetrics


class BrokerMetrics(ServiceMetrics):
    """Metrics of one broker, wired to it by ``attach``."""

    def __init__(self) -> None:
        super().__init__("broker")
        self.releases = Counter("keybroker_releases", "requests whose secrets were released, "
                                "by TEE and release-rule key pattern", ("tee", "key_pattern"),
                                registry=self.registry)
        self.denials = Counter("keybroker_denials", "requests denied, by category, TEE and "
                               "release-rule key pattern", ("category", "tee", "key_pattern"),
                               registry=self.registry)

    def attach(self, broker: Broker, monitor: HealthMonitor) -> None:
        """Observe ``broker``'s releases, audit writes and dependency probes."""
        broker.observer = self.outcome
        broker.audit.observer = self.audit_write
        monitor.observe(self.dependency)
        self.registry.register(_BrokerState(broker))

    def outcome(self, tee: str, patterns: tuple[str, ...], category: str) -> None:
        """One release request's outcome ("" category: released)."""
        for pattern in patterns or ("(none)",):
            if category:
                self.denials.labels(category, tee, pattern).inc()
            else:
                self.releases.labels(tee, pattern).inc()


class _BrokerState(Collector):
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            outstanding = self._broker.challenges.outstanding()
        except KeybrokerError:
            outstanding = None
        if outstanding is not None:
            yield GaugeMetricFamily("keybroker_challenges_outstanding",
                                    "challenges issued and neither used nor expired",
                                    value=outstanding)
        watched = self._broker.watched_rules
        if watched is not None:
            rules = watched.current
            family = GaugeMetricFamily("keybroker_release_rules_version",
                                       "version of the release rules in force", labels=("name",))
            family.add_metric((rules.name,), rules.version)
            yield family
