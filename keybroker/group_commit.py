"""Group commit: concurrent writers share one transaction, so one durable commit (one fsync
on SQLite, one WAL flush on PostgreSQL) covers every record that arrived while the previous
commit was in progress.

Invariants:
- ``submit`` returns only after the batch holding its item was written and committed by
  ``write`` (or raises that item's error): each record is durable before its caller goes on,
  exactly as with one transaction per record.
- One batch is written at a time (the leader: the first submitter that finds no write in
  progress); batches hold at most ``max_batch`` items, in arrival order.
- ``write`` returns one outcome per item: its result, or the exception for that item alone
  (the others commit). If ``write`` itself raises, every item of the batch gets that error
  and none is written.
- With no concurrency the cost is one lock round trip: a lone submitter writes its own item.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    done: bool = False
    result: R | None = None
    error: BaseException | None = field(default=None)


class GroupCommit(Generic[T, R]):
    """Batches concurrent ``submit`` calls into calls of ``write``."""

    def __init__(self, write: Callable[[Sequence[T]], Sequence[R | BaseException]], *,
                 max_batch: int = 256) -> None:
        self._write = write
        self._max = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot[T, R]] = []
        self._busy = False
        self.batches = 0  # batches written (the commits saved are submits - batches)

    def submit(self, item: T) -> R:
        """Write ``item`` in the next batch; its result, or its error raised."""
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._queue.append(slot)
            while not slot.done:
                if self._busy:
                    self._cond.wait()
                    continue
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
                self._busy = True
                self._cond.release()
                try:
                    outcomes = self._run(batch)
                finally:
                    self._cond.acquire()
                for done, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        done.error = outcome
                    else:
                        done.result = outcome
                    done.done = True
                self._busy = False
                self.batches += 1
                self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _run(self, batch: list[_Slot[T, R]]) -> Sequence[R | BaseException]:
        try:
            outcomes = self._write([s.item for s in batch])
        except BaseException as exc:  # the whole batch failed: nobody's item was written
            return [exc] * len(batch)
        if len(outcomes) != len(batch):
            error = RuntimeError("group commit: one outcome per item expected")
            return [error] * len(batch)
        return outcomes
