"""A real verifier process with the collateral refresher on: at start-up it renews a stored
item due for its next update from the (replayed) vendor, and a running verifier serves with
what a prefetch stored, without a restart."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from support.admin import write_verifier_config
from support.paths import VECTORS
from support.vendor_replay import ROOT_CRL_PATH, VendorReplay, at

from keybroker_cli.launcher import ServiceProcess, keybroker_command
from verifier.collateral.item_store import CollateralItemStore
from verifier.collateral.settings import FetchSettings
from verifier.result import ResultSigner
from verifier.vendors import VendorSources

KEY = "tdx-tcb-00a06d080000"


def test_collateral_refresher_in_a_running_verifier(replay: VendorReplay,
                                                    tmp_path: Path) -> None:
    """The 2025-10 GNR TCB Info in the store (long past its next update) is replaced by the
    vendor's current one within seconds of the verifier starting; nothing else is asked."""
    config = write_verifier_config(tmp_path, extra=(
        f'listen = "127.0.0.1:0"\nworkers = 0\npcs_url = "{replay.url}"\n'
        f'kds_url = "{replay.url}"\nroot_crl_url = "{replay.url}{ROOT_CRL_PATH}"\n'
        "collateral_refresh_seconds = 10"))
    ResultSigner.generate().write_private_key(tmp_path / "result-key.pem")
    vendors = VendorSources.from_settings(FetchSettings(pcs_url=replay.url))
    need = vendors.pcs.need(KEY)
    store = CollateralItemStore(tmp_path / "state.db")
    old = vendors.pcs.verify(need, (VECTORS / "tdx/trustee-gnr-v4/tcbInfo.json").read_bytes(),
                             (VECTORS / "tdx/intel-roots/tcb-signing-chain-2025-2032.pem")
                             .read_bytes(), source="test", at=at("2025-11-01T00:00:00Z"),
                             fetched_at=datetime.now(UTC))
    assert store.put(old)
    proc = ServiceProcess.start("verifier", keybroker_command(
        "verifier", "serve", "--config", str(config), "--insecure-plaintext"),
        log_path=tmp_path / "verifier.log")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            item = store.get(KEY)
            if item is not None and item.digest != old.digest:
                break
            time.sleep(0.2)
        item = store.get(KEY)
        assert item is not None and item.issued == at("2026-01-12T16:27:21Z")
        assert dict(replay.counts) == {"/tdx/certification/v4/tcb?fmspc=00a06d080000": 1}
        assert proc.popen.poll() is None
    finally:
        proc.stop()
        store.close()
    assert "collateral refreshed: tdx-tcb-00a06d080000" in (tmp_path / "verifier.log").read_text()
