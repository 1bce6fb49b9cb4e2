"""Live reload of versioned state (policies in force, reference values, release rules).

Invariants:
- The serving path reads ``Watched.current``: an attribute read, no I/O. Only the poller (an
  asyncio task, or an explicit ``refresh()``) touches the store, and it does the store reads and
  the compile in a worker thread.
- A new state replaces the old one whole and only after it was loaded and compiled completely;
  a load that fails keeps the old state in force (logged), so a broken store row can never
  leave a half-applied policy set or an empty one.
- ``generation`` is a cheap change counter of the underlying store(s); ``load`` runs only when
  it changed since the last successful load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from keybroker.errors import KeybrokerError
from keybroker.periodic import Periodic

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Watched(Generic[T]):
    """A value loaded from a store, swapped whole when the store's generation changes."""

    def __init__(self, name: str, generation: Callable[[], object],
                 load: Callable[[], T]) -> None:
        self._name = name
        self._generation = generation
        self._load = load
        self._seen = generation()
        self._current = load()
        self._poller = Periodic(self.refresh)

    @property
    def current(self) -> T:
        """The state in force (hot path: no I/O)."""
        return self._current

    def refresh(self) -> bool:
        """Reload if the store changed; True when a new state is now in force."""
        try:
            seen = self._generation()
            if seen == self._seen:
                return False
            fresh = self._load()
        except (KeybrokerError, OSError) as err:
            logger.warning("reload %s failed; the previous state stays in force: %s",
                         self._name, err)
            return False
        self._seen = seen
        self._current = fresh
        logger.info("reload %s: new state in force (generation %s)", self._name, seen)
        return True

    def start(self, interval: float) -> None:
        """Start polling every ``interval`` seconds on the running event loop."""
        self._poller.start(interval)

    async def stop(self) -> None:
        """Stop polling."""
        await self._poller.stop()
