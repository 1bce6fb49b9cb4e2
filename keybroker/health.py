"""Dependency health: named probes, their last results, and the gRPC health status that
follows from them.

Invariants:
- A service is SERVING only when the last run of every probe succeeded; a probe that raises
  or does not finish within its timeout marks its dependency down, with the reason.
- Probes run off the event loop (blocking ones in threads) and concurrently, every
  ``interval`` seconds, and once before the service reports SERVING for the first time.
- Every attached gRPC health servicer (the service's own name and the empty name) follows the
  overall state; a shutdown marks them NOT_SERVING for good.
- Changes are logged once each: a dependency going down at WARNING with the reason, coming
  back at INFO. ``on_change`` observers (metrics) see every probe result.
- Importing this module starts nothing; ``run`` is the only loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from keybroker.errors import KeybrokerError, Unavailable

_log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
Observer = Callable[[str, bool], None]

DEFAULT_INTERVAL = 2.0
DEFAULT_TIMEOUT = 2.0
_NOT_CHECKED = "not checked yet"


def blocking(probe: Callable[[], None]) -> Probe:
    """A blocking probe (a database query, an HSM call) run in a worker thread."""
    async def run() -> None:
        await asyncio.to_thread(probe)
    return run


@dataclass(frozen=True)
class DependencyState:
    """The last result of one probe."""

    name: str
    ok: bool
    detail: str
    since: float  # when it last changed (time.time)

    def as_dict(self) -> dict[str, object]:
        """JSON form for status replies."""
        return {"ok": self.ok, "detail": self.detail, "since": self.since}


class HealthMonitor:
    """Runs the probes of one service and publishes the overall status."""

    def __init__(self, service_name: str, probes: Mapping[str, Probe], *,
                 interval: float = DEFAULT_INTERVAL, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.service_name = service_name
        self._probes = dict(probes)
        self._interval = interval
        self._timeout = timeout
        self._servicers: list[health_aio.HealthServicer] = []
        self._observers: list[Observer] = []
        now = time.time()
        self._states = {name: DependencyState(name, False, _NOT_CHECKED, now)
                        for name in self._probes}
        self._stopped = False

    def attach(self, servicer: health_aio.HealthServicer) -> None:
        """Publish the overall state on ``servicer`` from now on."""
        self._servicers.append(servicer)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(name, ok)`` after every probe run."""
        self._observers.append(observer)

    @property
    def serving(self) -> bool:
        """Whether every dependency was up at its last check (and not shut down)."""
        return not self._stopped and all(s.ok for s in self._states.values())

    def snapshot(self) -> dict[str, DependencyState]:
        """The last state of every dependency."""
        return dict(self._states)

    async def check_once(self) -> bool:
        """Run every probe now; publish and return the overall state."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._run(name) for name in names))
        for name, detail in zip(names, results, strict=True):
            self._record(name, detail)
        await self._publish()
        return self.serving

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    async def shutdown(self) -> None:
        """NOT_SERVING from now on (graceful stop)."""
        self._stopped = True
        for servicer in self._servicers:
            await servicer.enter_graceful_shutdown()

    async def _run(self, name: str) -> str | None:
        """None when the probe succeeded, else why it failed."""
        try:
            await asyncio.wait_for(self._probes[name](), self._timeout)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except KeybrokerError as exc:
            return exc.detail
        except Exception as exc:  # a probe's failure is a down dependency, never a crash
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def _record(self, name: str, failure: str | None) -> None:
        ok = failure is None
        before = self._states[name]
        detail = "ok" if ok else str(failure)
        first = before.detail == _NOT_CHECKED
        if first or before.ok != ok:
            if not ok:
                _log.warning("%s: %s is DOWN: %s", self.service_name, name, detail)
            elif not first:
                _log.info("%s: %s is available again", self.service_name, name)
            self._states[name] = DependencyState(name, ok, detail, time.time())
        elif not ok and before.detail != detail:
            self._states[name] = DependencyState(name, ok, detail, before.since)
        for observer in self._observers:
            observer(name, ok)

    async def _publish(self) -> None:
        if self._stopped:
            return
        status = (health_pb2.HealthCheckResponse.SERVING if self.serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for servicer in self._servicers:
            await servicer.set(self.service_name, status)
            await servicer.set("", status)

    def status_json(self) -> dict[str, object]:
        """``serving`` and each dependency, for the admin Status reply."""
        return {"serving": self.serving,
                "dependencies": {n: s.as_dict() for n, s in sorted(self._states.items())}}


def or_unavailable(read: Callable[[], object]) -> object:
    """``read()``, or why it failed: a status reply reports a store that is down, it does not
    fail with it."""
    try:
        return read()
    except Unavailable as exc:
        return f"unavailable: {exc.detail}"
