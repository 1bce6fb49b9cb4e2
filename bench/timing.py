"""Timing helper shared by the benchmark scripts (imported as ``timing`` from ``bench/``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def per_op(fn: Callable[[], object], seconds: float = 1.0, *, batch: int = 50) -> float:
    """Mean wall seconds of one call of ``fn`` over about ``seconds`` (after a warm-up),
    calling it ``batch`` times between clock reads."""
    for _ in range(20):
        fn()
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            fn()
        count += batch
    return elapsed / count
