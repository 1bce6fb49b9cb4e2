"""Filling a collateral holder (a folder or the verifier's store) with what a list of needs
asks for, fetching only what it does not already hold fresh.

Invariants:
- What the holder already has is re-verified by the source before it counts as held (a
  tampered file is fetched again, never trusted); it is held when it verifies and is fresh at
  the given time.
- A fetched body is verified by the source against the pinned roots before it is stored; one
  that does not verify is discarded and reported with its typed error, never stored.
- Needs may come from several vendors: ``source_for`` names the source of each key.
- A failed item does not stop the others; the report says, per need, fetched, cached or
  failed (and whether what was stored is stale at the given time).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from keybroker.errors import KeybrokerError, Malformed
from verifier.collateral.item import CollateralItem, Need, Source
from verifier.collateral.vendor_client import VendorClient

_log = logging.getLogger(__name__)

Held = Callable[[Need], tuple[bytes, bytes] | None]
Store = Callable[[CollateralItem], object]
SourceFor = Callable[[str], Source]  # item key -> the source that fetches and verifies it


@dataclass
class FetchReport:
    """What one fill did, need by need."""

    fetched: list[CollateralItem] = field(default_factory=list)
    cached: list[CollateralItem] = field(default_factory=list)
    failed: list[tuple[Need, KeybrokerError]] = field(default_factory=list)
    stale: list[CollateralItem] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every need is held, verified and fresh."""
        return not self.failed and not self.stale

    def lines(self) -> list[str]:
        """One line per need for operators."""
        out = [f"cached   {i.key}  (next update {i.next_update.isoformat()})"
               for i in self.cached]
        out += [f"fetched  {i.key}  from {i.source}  (next update {i.next_update.isoformat()})"
                for i in self.fetched]
        out += [f"STALE    {i.key}  (next update {i.next_update.isoformat()} has passed)"
                for i in self.stale]
        out += [f"FAILED   {n.key}  {n.what}: {e}" for n, e in self.failed]
        return out


def decode_chain(value: str | None) -> bytes:
    """An issuer-chain header value (percent-encoded PEM) as PEM bytes; b"" when absent."""
    return urllib.parse.unquote(value).encode("ascii") if value else b""


class Fetcher:
    """Fills a holder from vendor services through one ``VendorClient``."""

    def __init__(self, client: VendorClient | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client or VendorClient()
        self._clock = clock

    def fill(self, needs: Sequence[Need], source_for: SourceFor, *, held: Held, store: Store,
             at: datetime) -> FetchReport:
        """Make the holder hold every need fresh at ``at`` (see the module invariants); a
        need listed twice is handled once."""
        report = FetchReport()
        for need in {n.key: n for n in needs}.values():
            source = source_for(need.key)
            existing = self._held(need, source, held, at)
            if existing is not None:
                report.cached.append(existing)
                continue
            try:
                item = self.fetch(need, source, at=at)
            except KeybrokerError as exc:
                _log.warning("collateral %s not stored: %s", need.key, exc)
                report.failed.append((need, exc))
                continue
            store(item)
            report.fetched.append(item)
            if not item.fresh_at(at):
                report.stale.append(item)
        return report

    def fetch(self, need: Need, source: Source, *, at: datetime) -> CollateralItem:
        """Fetch ``need`` and return it verified; raises the typed error otherwise."""
        response = self.client.get(need.url)
        chain = decode_chain(response.header(*need.chain_headers)) if need.chain_headers \
            else b""
        if need.chain_headers and not chain:
            raise Malformed(f"{need.url}: the issuer chain header is missing",
                            rule="collateral.chain", expected=" or ".join(need.chain_headers),
                            actual="absent")
        return source.verify(need, response.body, chain, source=need.url, at=at,
                             fetched_at=self._clock())

    @staticmethod
    def _held(need: Need, source: Source, held: Held, at: datetime) -> CollateralItem | None:
        found = held(need)
        if found is None:
            return None
        body, chain = found
        try:
            item = source.verify(need, body, chain, source="held", at=at, fetched_at=at)
        except KeybrokerError as exc:
            _log.warning("held collateral %s does not verify, fetching again: %s", need.key,
                         exc)
            return None
        return item if item.fresh_at(at) else None
