"""A blocking job run on a worker thread at a fixed interval on the running event loop
(state polls, collateral refresh).

Invariants:
- At most one task per ``Periodic``; ``start`` again is a no-op, ``stop`` cancels it and
  waits for the cancellation (a job already running on its thread finishes on its own).
- The job runs in ``asyncio.to_thread``, never on the event loop, so the loop stays
  responsive; the job handles its own errors (an exception ends the task and is logged by
  asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Periodic:
    """Run ``job`` every ``interval`` seconds; first after one interval, or at once when
    ``wait_first`` is False."""

    def __init__(self, job: Callable[[], object], *, wait_first: bool = True) -> None:
        self._job = job
        self._wait_first = wait_first
        self._task: asyncio.Task[None] | None = None

    async def _run(self, interval: float) -> None:
        if self._wait_first:
            await asyncio.sleep(interval)
        while True:
            await asyncio.to_thread(self._job)
            await asyncio.sleep(interval)

    def start(self, interval: float) -> None:
        """Start on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def stop(self) -> None:
        """Stop running."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
