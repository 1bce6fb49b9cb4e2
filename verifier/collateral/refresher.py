"""The verifier's background collateral refresher (off unless ``collateral_refresh_seconds``
is set): renews stored items before their next update.

Invariants:
- Each round reads the store and fetches again every item whose next update is within
  ``ahead`` of now (or already past), through the configured vendor URLs; VCEKs never change
  and are not refreshed. What is fetched is verified against the pinned roots before it is
  stored (``Fetcher``); an item the vendor has not renewed yet is stored only if newer, so a
  round never rolls an item back.
- A round never raises: failures are logged and counted (``failures``), and the items stay as
  they were; appraisals go on with what is stored until its next update, then deny
  (COLLATERAL_STALE), never fetch.
- The running verifier sees stored items at its next state poll (``keybroker.reload``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from keybroker.errors import KeybrokerError
from keybroker.periodic import Periodic
from verifier.collateral.fetcher import Fetcher
from verifier.collateral.item import Source
from verifier.collateral.item_store import CollateralItemStore

_log = logging.getLogger(__name__)


class Refresher:
    """Renews what the collateral store holds before it goes stale."""

    def __init__(self, store: CollateralItemStore, source_for: Callable[[str], Source], *,
                 ahead: timedelta, fetcher: Fetcher | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._source_for = source_for
        self._ahead = ahead
        self._fetcher = fetcher or Fetcher()
        self._clock = clock
        self.renewed = 0
        self.failures = 0
        self._periodic = Periodic(self.run_once, wait_first=False)

    def run_once(self) -> list[str]:
        """One round; returns the keys renewed."""
        now = self._clock()
        renewed = []
        try:
            due = [i for i in self._store.items()
                   if i.kind != "certificate" and i.next_update - now <= self._ahead]
        except KeybrokerError as exc:
            self.failures += 1
            _log.warning("collateral refresh: cannot read the store: %s", exc)
            return []
        for item in due:
            try:
                source = self._source_for(item.key)
                fresh = self._fetcher.fetch(source.need(item.key), source, at=now)
                if self._store.put(fresh):
                    renewed.append(item.key)
            except KeybrokerError as exc:
                self.failures += 1
                _log.warning("collateral refresh of %s failed (next update %s): %s", item.key,
                             item.next_update.isoformat(), exc)
        self.renewed += len(renewed)
        if renewed:
            _log.info("collateral refreshed: %s", ", ".join(renewed))
        return renewed

    def start(self, interval: float) -> None:
        """Run a round now and then every ``interval`` seconds on the running event loop."""
        self._periodic.start(interval)

    async def stop(self) -> None:
        """Stop refreshing."""
        await self._periodic.stop()
