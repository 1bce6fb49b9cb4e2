"""The verifier's Prometheus metrics: appraisals by TEE and outcome with latency histograms
(buckets up to 30 s), the policies and reference-value set versions in force, and the age
and time to next update of every collateral item, plus what every service measures
(``keybroker.metrics``).

Invariants:
- Appraisals are counted by the servicer's observer; state gauges (versions in force,
  collateral dates) are computed at scrape time from the state the service already holds
  (no file or database read).
- Labels are bounded: TEE, outcome, category, policy and set names, collateral item names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from keybroker.health import HealthMonitor
from keybroker.metrics import LATENCY_BUCKETS, ServiceMetrics
from verifier.collateral.freshness import freshness
from verifier.service import VerifierServicer


class VerifierMetrics(ServiceMetrics):
    """Metrics of one verifier, wired to it by ``attach``."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__("verifier")
        self._clock = clock
        self.appraisals = Counter("keybroker_appraisals", "appraisals, by TEE, outcome "
                                  "(affirmed/denied) and denial category",
                                  ("tee", "outcome", "category"), registry=self.registry)
        self.latency = Histogram("keybroker_appraisal_seconds", "time to verify and appraise "
                                 "one piece of evidence, by TEE", ("tee",),
                                 registry=self.registry, buckets=LATENCY_BUCKETS)

    def attach(self, servicer: VerifierServicer, monitor: HealthMonitor) -> None:
        """Observe ``servicer``'s appraisals and the dependency probes."""
        servicer.observer = self.appraisal
        monitor.observe(self.dependency)
        self.registry.register(_VerifierState(servicer, self._clock))

    def appraisal(self, tee: str, seconds: float, category: str) -> None:
        """One appraisal ("" category: affirmed)."""
        self.latency.labels(tee).observe(seconds)
        self.appraisals.labels(tee, "denied" if category else "affirmed", category).inc()


class _VerifierState(Collector):
    def __init__(self, servicer: VerifierServicer, clock: Callable[[], datetime]) -> None:
        self._servicer = servicer
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        watched = self._servicer.watched
        if watched is not None:
            state = watched.current
            policies = GaugeMetricFamily("keybroker_policy_version", "version of each "
                                         "appraisal policy in force", labels=("policy",))
            for name, policy in sorted(state.policies.items()):
                policies.add_metric((name,), policy.version)
            yield policies
            sets = GaugeMetricFamily("keybroker_reference_set_versions", "reference-value set "
                                     "versions, by set and state", labels=("set", "state"))
            counts: dict[tuple[str, str], int] = {}
            for version in state.references.versions:
                key = (version.name, str(version.state))
                counts[key] = counts.get(key, 0) + 1
            for key, count in sorted(counts.items()):
                sets.add_metric(key, count)
            yield sets
        now = self._clock()
        age = GaugeMetricFamily("keybroker_collateral_age_seconds", "seconds since each "
                                "collateral item (CRL, TCB Info, QE identity) was issued",
                                labels=("item",))
        due = GaugeMetricFamily("keybroker_collateral_next_update_seconds", "seconds until "
                                "each collateral item's next update (negative: stale)",
                                labels=("item",))
        for item in freshness(self._servicer.collateral):
            age.add_metric((item.item,), (now - item.issued).total_seconds())
            if item.next_update is not None:
                due.add_metric((item.item,), (item.next_update - now).total_seconds())
        yield age
        yield due
        writer = self._servicer.record_writer
        if writer is not None:
            records = CounterMetricFamily(
                "keybroker_appraisal_records", "appraisal records written, dropped (queue "
                "full: the appraisal answers without waiting for the store) or failed",
                labels=("outcome",))
            for outcome, count in (("written", writer.written), ("dropped", writer.dropped),
                                   ("failed", writer.failed)):
                records.add_metric((outcome,), count)
            yield records
