"""What the collateral commands share: the vendor sources (URLs from the command line, else
the verifier config, else the vendors' defaults) and a read of the verifier's collateral
store."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from verifier.collateral.item import CollateralItem
from verifier.collateral.item_store import CollateralItemStore
from verifier.collateral.settings import FetchSettings
from verifier.config import VerifierConfig, load_config
from verifier.vendors import VendorSources


def sources(args: argparse.Namespace, settings: FetchSettings | None = None) -> VendorSources:
    """``settings`` (default: the vendors' URLs) with ``--kds-url``, ``--pcs-url`` and
    ``--root-crl-url`` taking precedence."""
    base = settings or FetchSettings()
    given = {name: getattr(args, name, None) for name in ("kds_url", "pcs_url", "root_crl_url")}
    return VendorSources.from_settings(
        dataclasses.replace(base, **{k: v for k, v in given.items() if v}))


def stored_items(config_path: Path) -> tuple[VerifierConfig, list[CollateralItem]]:
    """The verifier config at ``config_path`` and every item of its collateral store."""
    config = load_config(config_path)
    store = CollateralItemStore(config.state_db)
    try:
        return config, store.items()
    finally:
        store.close()
