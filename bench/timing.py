"""Timing and process helpers shared by the benchmark scripts (imported as ``timing`` from
``bench/``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _family(pid: int) -> list[tuple[str, list[str]]]:
    """(pid, /proc stat fields after the name) of ``pid`` and of its live children."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            found.append((stat.parent.name, fields))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its live children (the verifier's workers)."""
    return sum((int(f[11]) + int(f[12])) / CLK_TCK for _, f in _family(pid))


def rss_mib(pid: int) -> float:
    """Resident memory of a process and of its live children, MiB."""
    total = 0
    for child, _ in _family(pid):
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


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
