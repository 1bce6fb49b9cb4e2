"""Appraisal worker processes: the CPU-bound part of ``Appraise`` (verify, bind, judge, sign)
runs in N processes behind the one front process that owns the gRPC port, TLS, health, the
admin API and metrics.

Invariants:
- Workers are spawned (never forked from a process running gRPC) and each builds its own
  servicer from the same configuration file: its own family verifiers and caches (verified
  chains, parsed collateral, compiled policies), warm for the life of the worker. They do not
  seed policies (the front did, before starting them) and record nothing themselves.
- Policies and reference values reach every worker: each polls the state database's
  generation on a background thread every ``policy_poll_seconds`` and swaps in the new state
  whole (``keybroker.reload.Watched``).
- A worker returns the token (or the typed denial) and the appraisal records it would have
  written; the front writes the records through its one writer, so nothing is recorded twice
  and record counters stay in one place.
- Workers die with the serving process (Linux parent-death signal), even when it is killed.
- A worker that dies fails the requests it held closed (UNAVAILABLE) and the pool is replaced:
  the next request is served by fresh workers. Nothing waits forever: a call carries its
  deadline from the caller (gRPC), and shutdown does not wait for queued work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keybroker.errors import Category, KeybrokerError, Unavailable, error_for
from keybroker.logs import JsonFormatter, configure, request_scope
from keybroker.v1 import verifier_pb2
from verifier.config import load_config

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
Outcome = tuple[str, str, str, str, str, str]  # ("ok", token, ...) or ("deny", category, ...)


@dataclass
class _Worker:
    """The per-process state of a worker: its servicer and the records of the current call."""

    servicer: object
    records: list[object]


_WORKER: dict[str, _Worker] = {}  # this process's worker state, once initialised


class _Capture:
    """Stands in for the record writer inside a worker: keeps the call's records."""

    def __init__(self, sink: list[object]) -> None:
        self._sink = sink

    def submit(self, record: object) -> None:
        self._sink.append(record)

    def close(self) -> None:
        """Nothing to flush: the front writes the records."""


@dataclass(frozen=True)
class _Setup:
    """What a worker is built from: ``build`` is the server's ``build_servicer``, passed by
    reference so this module imports no server."""

    build: Callable[..., Any]
    config_path: str
    insecure: bool
    plaintext: bool
    level: str
    log_format: str


def _die_with_parent() -> None:
    """Ask Linux to stop this worker when the serving process dies, even by SIGKILL (no
    orphaned workers holding the state database)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(0)


def _init_worker(setup: _Setup) -> None:
    """Build this worker's servicer from the configuration (module invariants)."""
    _die_with_parent()
    configure(setup.level, "json" if setup.log_format == "json" else "text")
    config = load_config(Path(setup.config_path))
    records: list[object] = []
    servicer = setup.build(config, insecure=setup.insecure, plaintext=setup.plaintext,
                           seed=False, recorder=_Capture(records))
    watched = servicer.watched

    def poll() -> None:
        while watched is not None:
            threading.Event().wait(config.policy_poll_seconds)
            watched.refresh()

    threading.Thread(target=poll, name="policy-poll", daemon=True).start()
    _WORKER["worker"] = _Worker(servicer, records)


def _ping() -> int:
    return os.getpid()


def _appraise(request_bytes: bytes, digest: str) -> tuple[Outcome, list[object]]:
    """One appraisal in this worker: the outcome and the records to write."""
    worker = _WORKER["worker"]
    request = verifier_pb2.AppraiseRequest.FromString(request_bytes)
    worker.records.clear()
    with request_scope(request.request_id):
        try:
            token = worker.servicer.appraise(request, digest)  # type: ignore[attr-defined]
        except KeybrokerError as err:
            outcome: Outcome = ("deny", err.category.value, err.reason, err.rule,
                                err.expected, err.actual)
        else:
            outcome = ("ok", token, "", "", "", "")
    return outcome, list(worker.records)


def _log_setup() -> tuple[str, str]:
    root = logging.getLogger()
    level = logging.getLevelName(root.level) if root.level else "WARNING"
    json_lines = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return str(level), "json" if json_lines else "text"


class AppraisalWorkers:
    """A pool of ``count`` appraisal processes for the configuration at ``config_path``."""

    def __init__(self, config_path: Path, count: int, *, insecure: bool, plaintext: bool,
                 build: Callable[..., Any], submit_record: Callable[[object], None]) -> None:
        self._setup = _Setup(build, str(config_path), insecure, plaintext, *_log_setup())
        self.count = count
        self._submit_record = submit_record
        self._pool = self._new_pool()
        self.replaced = 0  # pools replaced after a worker died (metrics, tests)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self._setup,))

    def warm(self) -> None:
        """Start every worker now (building its servicer) rather than at the first call."""
        for _ in range(self.count):
            self._pool.submit(_ping)

    async def appraise(self, request: verifier_pb2.AppraiseRequest, digest: str) -> str:
        """The token, or the typed denial raised (module invariants)."""
        pool = self._pool
        loop = asyncio.get_running_loop()
        try:
            outcome, records = await loop.run_in_executor(
                pool, _appraise, request.SerializeToString(), digest)
        except BrokenExecutor:
            self._replace(pool)
            raise Unavailable("an appraisal worker died; the request was not appraised",
                              rule="verifier.worker", expected="a running worker",
                              actual="worker process exited") from None
        for record in records:
            self._submit_record(record)
        kind, first, reason, rule, expected, actual = outcome
        if kind == "ok":
            return first
        raise error_for(Category(first), reason, rule=rule, expected=expected, actual=actual)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken:
            logger.error("an appraisal worker died; starting a new pool of %d", self.count)
            self._pool = self._new_pool()
            self.replaced += 1
            self.warm()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers (queued work is cancelled; running calls finish)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
