"""Group commit: concurrent submitters share batches; each gets its own result or error
only after its batch was written; a failed batch fails every item in it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from keybroker.group_commit import GroupCommit


class Store:
    def __init__(self, *, fail_batch: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_batch = fail_batch

    def write(self, items: Sequence[int]) -> list[int | BaseException]:
        time.sleep(0.05)  # a commit takes a while: others arrive meanwhile
        if self.fail_batch:
            raise OSError("disk full")
        self.batches.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def _race(group: GroupCommit[int, int], n: int) -> dict[int, object]:
    results: dict[int, object] = {}
    barrier = threading.Barrier(n)

    def submit(i: int) -> None:
        barrier.wait()
        try:
            results[i] = group.submit(i)
        except (ValueError, OSError) as exc:
            results[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_items_share_batches_and_get_their_own_outcome() -> None:
    """16 racing submitters: fewer batches than items, every item written once, results
    and per-item errors delivered to their own submitter."""
    store = Store()
    group: GroupCommit[int, int] = GroupCommit(store.write)
    results = _race(group, 16)
    written = [i for batch in store.batches for i in batch]
    assert sorted(written) == list(range(16))
    assert len(store.batches) < 16 and group.batches == len(store.batches)
    for i, outcome in results.items():
        if i % 2:
            assert isinstance(outcome, ValueError) and str(outcome) == f"odd {i}"
        else:
            assert outcome == i * 10


def test_failed_batch_fails_every_item() -> None:
    """A batch whose write raises fails each of its items with that error."""
    results = _race(GroupCommit(Store(fail_batch=True).write), 8)
    assert all(isinstance(r, OSError) for r in results.values())


def test_lone_submitter_and_batch_bound() -> None:
    """Alone, an item is its own batch; batches never exceed max_batch."""
    store = Store()
    assert GroupCommit(store.write).submit(4) == 40
    assert store.batches == [[4]]
    bounded = Store()
    _race(GroupCommit(bounded.write, max_batch=3), 12)
    assert max(len(b) for b in bounded.batches) <= 3


def test_wrong_outcome_count_is_an_error() -> None:
    """A write that returns the wrong number of outcomes fails the batch loudly."""
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="one outcome per item"):
        group.submit(1)
