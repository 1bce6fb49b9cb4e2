"""Where the verifier fetches collateral from and whether it refreshes it: the collateral keys
of the ``[verifier]`` table.

Invariants:
- Defaults fetch nothing in the background (``collateral_refresh_seconds = 0``) and never on
  the appraisal path (``fetch_on_miss = false``); URLs default to AMD KDS, Intel PCS and the
  Intel root CA's CRL distribution point, and must be http(s).
- ``collateral_refresh_ahead_hours`` is how long before an item's next update the refresher
  renews it (default 72 h; vendors publish new CRLs and TCB Info days ahead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keybroker.errors import Malformed

DEFAULT_KDS_URL = "https://kdsintf.amd.com"
DEFAULT_PCS_URL = "https://api.trustedservices.intel.com"
DEFAULT_ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
FETCH_KEYS: dict[str, type | tuple[type, ...]] = {
    "kds_url": str, "pcs_url": str, "root_crl_url": str, "fetch_on_miss": bool,
    "collateral_refresh_seconds": (int, float), "collateral_refresh_ahead_hours": (int, float)}


@dataclass(frozen=True)
class FetchSettings:
    """Vendor URLs, background refresh and fetch on miss."""

    kds_url: str = DEFAULT_KDS_URL
    pcs_url: str = DEFAULT_PCS_URL
    root_crl_url: str = DEFAULT_ROOT_CRL_URL
    refresh_seconds: float = 0.0  # 0: no background refresh
    refresh_ahead_hours: float = 72.0
    fetch_on_miss: bool = False


def fetch_settings(table: Mapping[str, object], where: str) -> FetchSettings:
    """The collateral keys of a verifier config table (types already checked)."""
    urls = {}
    for key, default in (("kds_url", DEFAULT_KDS_URL), ("pcs_url", DEFAULT_PCS_URL),
                         ("root_crl_url", DEFAULT_ROOT_CRL_URL)):
        value = str(table.get(key, default))
        if not value.startswith(("https://", "http://")):
            raise Malformed(f"{where}: {key} is not an http(s) URL", rule="config.collateral",
                            expected="https://host[/path]", actual=value[:120])
        urls[key] = value
    refresh = float(table.get("collateral_refresh_seconds", 0))  # type: ignore[arg-type]
    if refresh != 0 and not 10 <= refresh <= 86400:
        raise Malformed(f"{where}: collateral_refresh_seconds out of range",
                        rule="config.collateral", expected="0 (off) or 10..86400",
                        actual=str(refresh))
    ahead = float(table.get("collateral_refresh_ahead_hours", 72))  # type: ignore[arg-type]
    if not 0 <= ahead <= 24 * 60:
        raise Malformed(f"{where}: collateral_refresh_ahead_hours out of range",
                        rule="config.collateral", expected="0..1440", actual=str(ahead))
    return FetchSettings(kds_url=urls["kds_url"], pcs_url=urls["pcs_url"],
                         root_crl_url=urls["root_crl_url"], refresh_seconds=refresh,
                         refresh_ahead_hours=ahead,
                         fetch_on_miss=bool(table.get("fetch_on_miss", False)))
