"""How old the verifier's collateral is: every CRL and Intel document with its issue date and
next update, for ``keybroker status`` and the metrics.

Invariants:
- Dates are read from the loaded (UNVERIFIED) items: they describe what the cache holds, they
  never decide an appraisal (the verifiers check windows on verified items).
- Pure: reads the store, touches no file and no clock (callers pass the time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from verifier.collateral.cache import CollateralStore
from verifier.pki import common_name


@dataclass(frozen=True)
class Freshness:
    """One dated collateral item: what it is, when it was issued and its next update."""

    item: str
    issued: datetime
    next_update: datetime | None

    def as_dict(self, at: datetime) -> dict[str, object]:
        """JSON form with ages in seconds at ``at`` (negative next-update: already stale)."""
        return {"item": self.item, "issued": self.issued.isoformat(),
                "next_update": self.next_update.isoformat() if self.next_update else None,
                "age_seconds": int((at - self.issued).total_seconds()),
                "next_update_in_seconds": (int((self.next_update - at).total_seconds())
                                           if self.next_update else None)}


def freshness(store: CollateralStore) -> list[Freshness]:
    """Every CRL and Intel document of ``store`` with its dates, stalest next update first."""
    items = [Freshness(f"CRL {common_name(c.crl.issuer) or c.crl.issuer.rfc4514_string()}"
                       f" ({hashlib.sha256(c.der).hexdigest()[:8]})",
                       c.crl.last_update_utc, c.crl.next_update_utc) for c in store.crls]
    for doc in store.intel_documents:
        what = (f"TCB Info {doc.id} fmspc {doc.fmspc.hex()}" if doc.fmspc is not None
                else f"{doc.id} identity")
        items.append(Freshness(f"{what} ({doc.digest[:8]})", doc.issue_date, doc.next_update))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(items, key=lambda f: f.next_update or far)
