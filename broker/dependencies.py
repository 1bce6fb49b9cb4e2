"""What the broker depends on, as health probes: its database, its audit sink, its KEK
provider (the HSM for ``pkcs11``) and the verifier.

Invariants:
- Each probe does the smallest real operation on the dependency: a fresh connection to each
  SQLite file, an HMAC with the audit key held by the KEK provider (for an HSM, a call into
  the token), a gRPC health check of the verifier over the broker's own mutual-TLS channel.
- Probes only read: no probe writes a record, a key or a challenge.
"""

from __future__ import annotations

from broker.release import Broker
from broker.verifier_client import GrpcAppraiser
from keybroker.health import DEFAULT_INTERVAL, HealthMonitor, Probe, blocking
from keybroker.v1 import broker_pb2

SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["KeyBroker"].full_name
_PROBE_MESSAGE = b"keybroker health probe"


def broker_monitor(broker: Broker, *, interval: float = DEFAULT_INTERVAL) -> HealthMonitor:
    """The broker's health monitor (not started)."""
    backend = broker.secrets.ring.backend

    def kek() -> None:
        backend.audit_mac(_PROBE_MESSAGE)

    probes: dict[str, Probe] = {
        "database": blocking(broker.challenges.probe),
        "audit": blocking(broker.audit.probe),
        f"kek ({backend.name})": blocking(kek),
    }
    if isinstance(broker.appraiser, GrpcAppraiser):
        probes["verifier"] = broker.appraiser.probe
    return HealthMonitor(SERVICE_NAME, probes, interval=interval)
