"""``keybroker collateral fetch`` against a local server replaying recorded AMD KDS and Intel
PCS responses: the folders it fills verify real evidence with CRLs required, a second fetch
asks for nothing, and every vendor fault (429, 404, slow, truncated, wrong signer) is handled."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from support.vendor_replay import (
    GCP_AT,
    GCP_REPORT,
    GCP_VCEK_PATH,
    GNR_QUOTE,
    PCS,
    PCS_AT,
    ROOT_CRL_PATH,
    SNP,
    Fault,
    VendorReplay,
    at,
    only,
)

from keybroker.errors import Category, KeybrokerError
from keybroker_cli.main import main
from verifier.collateral.fetcher import Fetcher
from verifier.collateral.item import read_files
from verifier.collateral.vendor_client import RetryPolicy, VendorClient
from verifier.dcap.pcs import PcsSource
from verifier.snp.kds import KdsSource

TCB_PATH = "/tdx/certification/v4/tcb?fmspc=00a06d080000"
MILAN_CRL = "/vcek/v1/Milan/crl"


def fetch_snp(replay: VendorReplay, out: Path) -> int:
    return main(["collateral", "fetch", "--tee", "snp", "--evidence", str(GCP_REPORT),
                 "--out", str(out), "--kds-url", replay.url, "--at", GCP_AT])


def fetch_tdx(replay: VendorReplay, out: Path) -> int:
    return main(["collateral", "fetch", "--tee", "tdx", "--evidence", str(GNR_QUOTE),
                 "--out", str(out), "--pcs-url", replay.url,
                 "--root-crl-url", replay.url + ROOT_CRL_PATH, "--at", PCS_AT])


def verify_json(capsys: pytest.CaptureFixture[str], argv: list[str]
                ) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = main(["verify", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_collateral_fetch_gcp_milan_folder_verifies_with_crl(
        replay: VendorReplay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The GCP Milan v5 report verifies (CRL required) from the folder fetch filled from KDS."""
    out = tmp_path / "snp"
    assert fetch_snp(replay, out) == 0
    assert "3 fetched, 0 already held, 0 failed, 0 stale" in capsys.readouterr().out
    assert replay.counts[GCP_VCEK_PATH] == 1
    assert only(out) == sorted([
        f"snp-vcek-Milan-{GCP_VCEK_PATH.split('/')[4].split('?')[0]}-0400000000001bde.der",
        "snp-vcek-chain-Milan.pem", "snp-vcek-crl-Milan.der"])
    code, result = verify_json(capsys, [str(GCP_REPORT), "--tee", "snp", "--collateral",
                                        str(out), "--at", GCP_AT])
    assert (code, result["verdict"]) == (0, "verified"), result
    assert result["claims"]["collateral_warnings"] == []


def test_collateral_fetch_gnr_tdx_folder_verifies_with_crls(
        replay: VendorReplay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Granite Rapids TDX quote verifies (CRLs required) from the folder fetch filled
    from PCS: TCB Info, TD_QE identity, PCK platform CRL and root CA CRL with their chains."""
    out = tmp_path / "tdx"
    assert fetch_tdx(replay, out) == 0
    assert "4 fetched" in capsys.readouterr().out
    assert only(out) == sorted([
        "intel-root-ca-crl.der", "sgx-pck-crl-platform.der",
        "sgx-pck-crl-platform-issuer-chain.pem", "tdx-qe-identity.json",
        "tdx-qe-identity-issuer-chain.pem", "tdx-tcb-00a06d080000.json",
        "tdx-tcb-00a06d080000-issuer-chain.pem"])
    code, result = verify_json(capsys, [str(GNR_QUOTE), "--tee", "tdx", "--collateral", str(out),
                                        "--at", PCS_AT])
    assert (code, result["verdict"]) == (0, "verified"), result
    assert result["claims"]["tcb"]["collateral_warnings"] == []


def test_collateral_second_fetch_asks_for_nothing(
        replay: VendorReplay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second fetch into the same folders sends no request: everything is held and fresh."""
    assert fetch_snp(replay, tmp_path / "snp") == 0
    assert fetch_tdx(replay, tmp_path / "tdx") == 0
    before = sum(replay.counts.values())
    capsys.readouterr()
    assert fetch_snp(replay, tmp_path / "snp") == 0
    assert fetch_tdx(replay, tmp_path / "tdx") == 0
    assert sum(replay.counts.values()) == before == 7
    out = capsys.readouterr().out
    assert "0 fetched, 3 already held" in out and "0 fetched, 4 already held" in out


def test_collateral_refetch_when_held_item_is_stale_or_tampered(
        replay: VendorReplay, tmp_path: Path) -> None:
    """A held CRL past its next update, or one whose bytes were changed, is fetched again."""
    out = tmp_path / "snp"
    assert fetch_snp(replay, out) == 0
    crl = out / "snp-vcek-crl-Milan.der"
    crl.write_bytes(crl.read_bytes()[:-4] + b"\0\0\0\0")
    assert fetch_snp(replay, out) == 0
    assert replay.counts[MILAN_CRL] == 2
    assert crl.read_bytes() == (SNP / "amd-crl/milan_vcek_crl_2026-06-22.der").read_bytes()
    assert main(["collateral", "fetch", "--tee", "snp", "--evidence", str(GCP_REPORT),
                 "--out", str(out), "--kds-url", replay.url, "--at",
                 "2026-09-01T00:00:00Z"]) == 1  # KDS only has a CRL that is stale by then
    assert replay.counts[MILAN_CRL] == 3


def test_collateral_fetch_429_waits_retry_after(replay: VendorReplay, tmp_path: Path) -> None:
    """429 with Retry-After is retried after the wait the server asked for (and no sooner)."""
    waits: list[float] = []
    client = VendorClient(RetryPolicy(sleep=waits.append, backoff_seconds=0.01))
    replay.fault(MILAN_CRL, Fault("429", retry_after="7"), Fault("429", retry_after="2"))
    response = client.get(replay.url + MILAN_CRL)
    assert response.body == (SNP / "amd-crl/milan_vcek_crl_2026-06-22.der").read_bytes()
    assert replay.counts[MILAN_CRL] == 3
    assert 7 <= waits[0] < 7.1 and 2 <= waits[1] < 2.1


def test_collateral_fetch_429_beyond_bound_is_unavailable(
        replay: VendorReplay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Retry-After longer than the bound fails at once (UNAVAILABLE), nothing is written,
    and the command exits 1 naming the item; the other items are still fetched."""
    replay.fault(GCP_VCEK_PATH, Fault("429", retry_after="3600"))
    out = tmp_path / "snp"
    capsys.readouterr()
    assert fetch_snp(replay, out) == 1
    text = capsys.readouterr().out
    assert "FAILED   snp-vcek-Milan-" in text and "UNAVAILABLE" in text and "3600" in text
    assert replay.counts[GCP_VCEK_PATH] == 1
    assert not any(p.name.startswith("snp-vcek-Milan-") for p in out.iterdir())
    assert (out / "snp-vcek-crl-Milan.der").exists()


def test_collateral_fetch_404_is_collateral_stale(replay: VendorReplay) -> None:
    """A 404 (the vendor publishes no such item) is COLLATERAL_STALE and not retried."""
    source = KdsSource(replay.url)
    need = source.chain_needs("Turin")[1]  # no Turin CRL is recorded
    with pytest.raises(KeybrokerError) as err:
        Fetcher().fetch(need, source, at=at(GCP_AT))
    assert err.value.category is Category.COLLATERAL_STALE
    assert replay.counts["/vcek/v1/Turin/crl"] == 1


def test_collateral_fetch_slow_server_times_out(replay: VendorReplay) -> None:
    """A server slower than the timeout fails UNAVAILABLE after the bounded attempts."""
    replay.fault(MILAN_CRL, Fault("slow", seconds=1.5), Fault("slow", seconds=1.5))
    client = VendorClient(RetryPolicy(attempts=2, timeout_seconds=0.3, backoff_seconds=0.01))
    start = time.monotonic()
    with pytest.raises(KeybrokerError) as err:
        client.get(replay.url + MILAN_CRL)
    assert err.value.category is Category.UNAVAILABLE
    assert "TimeoutError" in err.value.actual or "timed out" in err.value.actual
    assert time.monotonic() - start < 1.4
    assert replay.counts[MILAN_CRL] == 2


def test_collateral_fetch_truncated_body_retried(replay: VendorReplay) -> None:
    """A body cut short is never returned: retried, then UNAVAILABLE when it stays short."""
    quick = RetryPolicy(attempts=2, backoff_seconds=0.01)
    replay.fault(TCB_PATH, Fault("truncate"))
    body = VendorClient(quick).get(replay.url + TCB_PATH).body
    assert body == (PCS / "tcb_info_00a06d080000.json").read_bytes()
    replay.fault(TCB_PATH, Fault("truncate"), Fault("truncate"))
    with pytest.raises(KeybrokerError) as err:
        VendorClient(quick).get(replay.url + TCB_PATH)
    assert err.value.category is Category.UNAVAILABLE
    assert "truncated" in err.value.actual


def test_collateral_fetch_wrong_signer_discarded(
        replay: VendorReplay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CRL signed by another ARK (the real Genoa CRL served as Milan's) and a TCB Info whose
    signature was made by another key are discarded: CHAIN_UNTRUSTED, nothing written."""
    replay.fault(MILAN_CRL, Fault("body", body=(SNP / "amd-crl/genoa_vcek_crl_2026-07-28.der")
                                  .read_bytes()))
    out = tmp_path / "snp"
    capsys.readouterr()
    assert fetch_snp(replay, out) == 1
    text = capsys.readouterr().out
    assert "FAILED   snp-vcek-crl-Milan" in text and "CHAIN_UNTRUSTED" in text
    assert not (out / "snp-vcek-crl-Milan.der").exists()
    body = (PCS / "tcb_info_00a06d080000.json").read_bytes()
    doc = json.loads(body)
    forged = body.replace(doc["signature"].encode(), ("11" * 64).encode())
    replay.fault(TCB_PATH, Fault("body", body=forged))
    source = PcsSource(replay.url, root_crl_url=replay.url + ROOT_CRL_PATH)
    need = source.platform_needs("tdx", bytes.fromhex("00a06d080000"), "platform")[0]
    with pytest.raises(KeybrokerError) as err:
        Fetcher().fetch(need, source, at=at(PCS_AT))
    assert err.value.category is Category.CHAIN_UNTRUSTED
    assert read_files(tmp_path, need) is None


def test_collateral_fetch_single_flight(replay: VendorReplay) -> None:
    """Eight threads asking for the same item at once share one request."""
    replay.fault(MILAN_CRL, Fault("slow", seconds=0.5))
    client = VendorClient()
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(
        client.get(replay.url + MILAN_CRL).body)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bodies) == 8 and len(set(bodies)) == 1
    assert replay.counts[MILAN_CRL] == 1 and client.requests == 1
