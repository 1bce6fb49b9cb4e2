"""Fetch on miss (``fetch_on_miss = true``; off by default): an SEV-SNP, TDX or SGX appraisal
denied COLLATERAL_STALE fetches what that evidence needs into the collateral store and is
verified once more with the new collateral.

Invariants:
- Off unless configured: by default the appraisal path never touches the network
  (architecture section 2, rule 5). Turned on, anyone who can reach the broker can make this
  verifier ask AMD or Intel for items, so each key that failed to fetch is not asked again for
  ``retry_seconds`` (default 300) and at most ``max_per_minute`` fetch rounds run per minute;
  beyond that the denial stands.
- Everything fetched is verified against the pinned roots before it is stored (``Fetcher``),
  and the evidence is then verified from scratch by verifiers built on the new collateral
  (``rebuild``), which also serve later requests. The retry happens once; its error, if any,
  is the answer.
- Only the families whose collateral vendors publish are wrapped (snp, tdx, sgx); the others
  are handed back unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from keybroker.errors import CollateralStale, KeybrokerError
from keybroker.v1 import evidence_pb2
from verifier.collateral.fetcher import Fetcher
from verifier.collateral.item import Need
from verifier.collateral.item_store import CollateralItemStore
from verifier.tee import Claims, EvidenceVerifier
from verifier.vendors import VendorSources

_log = logging.getLogger(__name__)

FETCHING_KINDS = ("snp", "tdx", "sgx")
Rebuild = Callable[[], Mapping[str, EvidenceVerifier]]


class FetchOnMiss:
    """Fills the collateral store for evidence whose collateral is missing or stale."""

    def __init__(self, items: CollateralItemStore, vendors: VendorSources, *,
                 fetcher: Fetcher | None = None, retry_seconds: float = 300.0,
                 max_per_minute: int = 30) -> None:
        self._items = items
        self._vendors = vendors
        self._fetcher = fetcher or Fetcher()
        self._retry_seconds = retry_seconds
        self._max_per_minute = max_per_minute
        self._failed: dict[str, float] = {}  # key -> monotonic time of the failure
        self._rounds: list[float] = []
        self._lock = threading.Lock()
        self.rebuild: Rebuild | None = None  # set by the server: new verifiers, swapped in

    def wrap(self, verifiers: Mapping[str, EvidenceVerifier]) -> dict[str, EvidenceVerifier]:
        """``verifiers`` with the snp, tdx and sgx ones fetching on a miss."""
        return {kind: (_Fetching(self, kind, verifier) if kind in FETCHING_KINDS else verifier)
                for kind, verifier in verifiers.items()}

    def needs(self, evidence: evidence_pb2.Evidence) -> list[Need]:
        """What ``evidence`` needs from its vendor (empty for other kinds)."""
        kind = evidence.WhichOneof("kind")
        if kind == "snp":
            return self._vendors.kds.needs_for_report(evidence.snp.report)
        if kind in ("tdx", "sgx"):
            quote = evidence.tdx.quote if kind == "tdx" else evidence.sgx.quote
            return self._vendors.pcs.needs_for_quote(quote, kind)
        return []

    def fill(self, evidence: evidence_pb2.Evidence, at: datetime) -> bool:
        """Fetch and store what ``evidence`` misses; True when something new was stored."""
        now = time.monotonic()
        with self._lock:
            self._rounds = [t for t in self._rounds if now - t < 60]
            if len(self._rounds) >= self._max_per_minute:
                _log.warning("fetch on miss: over %d rounds a minute, not fetching",
                             self._max_per_minute)
                return False
            self._rounds.append(now)
            self._failed = {k: t for k, t in self._failed.items()
                            if now - t < self._retry_seconds}
            recent = set(self._failed)
        try:
            needs = [n for n in self.needs(evidence) if n.key not in recent]
        except KeybrokerError as exc:
            _log.info("fetch on miss: cannot tell what the evidence needs: %s", exc)
            return False
        if not needs:
            return False
        report = self._fetcher.fill(needs, self._vendors.for_key, held=self._items.held,
                                    store=self._items.put, at=at)
        with self._lock:
            for need, _ in report.failed:
                self._failed[need.key] = now
        _log.info("fetch on miss: %d fetched, %d held, %d failed", len(report.fetched),
                  len(report.cached), len(report.failed))
        return bool(report.fetched)


class _Fetching:
    """A family verifier that, denied COLLATERAL_STALE, fetches and verifies once more."""

    def __init__(self, owner: FetchOnMiss, kind: str, inner: EvidenceVerifier) -> None:
        self._owner = owner
        self._kind = kind
        self._inner = inner

    def verify(self, evidence: evidence_pb2.Evidence, *, at: datetime,
               expected_report_data: bytes) -> Claims:
        try:
            return self._inner.verify(evidence, at=at, expected_report_data=expected_report_data)
        except CollateralStale:
            rebuild = self._owner.rebuild
            if rebuild is None or not self._owner.fill(evidence, at):
                raise
        fresh = rebuild()[self._kind]
        return fresh.verify(evidence, at=at, expected_report_data=expected_report_data)
