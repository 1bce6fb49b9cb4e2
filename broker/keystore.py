"""The configured KEK backend and the KEK ring over the broker database: one place that turns
``kek_provider`` into a backend, for the service and for the operator's commands.

Invariants:
- ``file`` and ``pkcs11`` are the only providers; a PKCS#11 backend that cannot load its
  module, find its token or log in is ``Unavailable`` at start-up, never replaced by a file KEK.
- Opening the ring never creates a KEK: ``broker init`` does (``initialise``), and a broker
  started without one refuses to start.
"""

from __future__ import annotations

import time

from broker.config import BrokerConfig
from broker.kek import FileBackend, KekBackend
from broker.kek_ring import Clock, KekRing, kek_schema
from keybroker.database import Database
from keybroker.errors import Unavailable


def open_backend(config: BrokerConfig) -> KekBackend:
    """The backend named by ``kek_provider``."""
    if config.pkcs11 is not None:
        from broker.kek_pkcs11 import Pkcs11Backend  # noqa: PLC0415 - loads the HSM module

        return Pkcs11Backend(config.pkcs11)
    return FileBackend(config.kek_file)


def open_ring(config: BrokerConfig, db: Database, backend: KekBackend | None = None,
              *, clock: Clock = time.time) -> KekRing:
    """The KEK ring of the broker database ``db``."""
    return KekRing(db, backend or open_backend(config), clock=clock)


def initialise(backend: KekBackend) -> list[str]:
    """Create version 1 of the KEK and the audit checkpoint key where missing; returns what
    was created (for the operator's output)."""
    created = []
    locator = backend.locator(1)
    try:
        backend.open(locator)
    except Unavailable:
        backend.create(locator)  # a backend that is down fails here too, with its reason
        created.append(f"KEK {locator}")
    if backend.ensure_audit_key():
        created.append("audit checkpoint key")
    return created


__all__ = ["initialise", "kek_schema", "open_backend", "open_ring"]
