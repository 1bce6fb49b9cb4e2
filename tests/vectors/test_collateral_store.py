"""The verifier's collateral store: prefetch from the replayed vendors, the store on both
backends, signed bundles between two verifier stores, status, and a running verifier that
serves with new items without a restart."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from support.admin import snp_policy, write_verifier_config
from support.paths import VECTORS
from support.store_backends import StoreBackend
from support.vendor_replay import (
    GCP_AT,
    GCP_HWID,
    GCP_REPORT,
    PCS_AT,
    ROOT_CRL_PATH,
    SNP,
    Fault,
    VendorReplay,
    at,
)

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_report import parse_report
from keybroker.v1 import evidence_pb2, verifier_pb2
from keybroker_cli.main import main
from verifier.collateral.bundle import BundledItem, read_bundle, write_bundle
from verifier.collateral.fetcher import Fetcher
from verifier.collateral.freshness import freshness
from verifier.collateral.item_store import CollateralItemStore
from verifier.collateral.refresher import Refresher
from verifier.collateral.settings import FetchSettings
from verifier.config import load_config
from verifier.result import ResultSigner
from verifier.server import build_servicer
from verifier.service import VerifierServicer
from verifier.snp.kds import KdsSource
from verifier.vendors import VendorSources

TCB_PATH = "/tdx/certification/v4/tcb?fmspc=00a06d080000"
GCP_MEASUREMENT = ("b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1"
                   "b6d19251b8ee600fd16a3708f58406f3")


def verifier_dir(path: Path) -> Path:
    config = write_verifier_config(path)
    ResultSigner.generate().write_private_key(path / "result-key.pem")
    return config


def prefetch_all(replay: VendorReplay, config: Path, *extra: str) -> int:
    snp = main(["collateral", "prefetch", "--config", str(config), "--tee", "snp", "--for",
                str(GCP_REPORT), "--kds-url", replay.url, "--at", GCP_AT, *extra])
    tdx = main(["collateral", "prefetch", "--config", str(config), "--tee", "tdx", "--fmspc",
                "00a06d080000", "--pcs-url", replay.url, "--root-crl-url",
                replay.url + ROOT_CRL_PATH, "--at", PCS_AT])
    return max(snp, tdx)


def keys(path: Path, name: str = "bundle-key") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = path / f"{name}.pem", path / f"{name}.pub"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                     PublicFormat.SubjectPublicKeyInfo))
    return private, public


def exported(replay: VendorReplay, tmp_path: Path) -> tuple[Path, Path, Path, Path, Path]:
    """Verifier a (prefetched, exported to a bundle), empty verifier b, the bundle key pair
    and the bundle."""
    a, b = verifier_dir(tmp_path / "a"), verifier_dir(tmp_path / "b")
    assert prefetch_all(replay, a) == 0
    private, public = keys(tmp_path)
    bundle = tmp_path / "fleet.bundle"
    assert main(["collateral", "export", "--config", str(a), "--signing-key", str(private),
                 str(bundle)]) == 0
    return a, b, private, public, bundle


def stored(config: Path) -> dict[str, str]:
    store = CollateralItemStore(load_config(config).state_db)
    try:
        return {i.key: i.digest for i in store.items()}
    finally:
        store.close()


def test_collateral_store_keeps_newest_per_key(db_backend: StoreBackend,
                                               replay: VendorReplay) -> None:
    """put stores a verified item once, never rolls back to an older one, and bumps the
    generation only on a change (SQLite and PostgreSQL)."""
    store = CollateralItemStore(db_backend.target("collateral"))
    source = KdsSource(replay.url)
    need = source.chain_needs("Milan")[1]
    item = Fetcher().fetch(need, source, at=at(GCP_AT))
    assert store.generation() == 0
    assert store.put(item) is True
    first = store.generation()
    assert store.put(item) is False and store.generation() == first
    older = type(item)(**{**item.__dict__, "issued": item.issued - timedelta(days=1),
                          "body": item.body + b"x"})
    assert store.put(older) is False
    got = store.get(need.key)
    assert got is not None and got.digest == item.digest and got.body == item.body
    assert got.next_update == item.next_update and got.source == replay.url + need.url[
        len(replay.url):]
    assert [i.key for i in store.items()] == [need.key]
    store.close()


def test_collateral_prefetch_then_status(replay: VendorReplay, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """prefetch fills the verifier store; status lists ages, flags what expires soon and
    exits 1 once something is stale; a second prefetch sends no request."""
    config = verifier_dir(tmp_path / "v")
    assert prefetch_all(replay, config) == 0
    assert len(stored(config)) == 7
    sent = sum(replay.counts.values())
    assert prefetch_all(replay, config) == 0
    assert sum(replay.counts.values()) == sent
    capsys.readouterr()
    assert main(["collateral", "status", "--config", str(config), "--at", PCS_AT,
                 "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert "EXPIRING tdx-tcb-00a06d080000" in out and "ok       snp-vcek-chain-Milan" in out
    assert main(["collateral", "status", "--config", str(config), "--at", GCP_AT]) == 1
    out = capsys.readouterr().out
    assert "STALE    tdx-qe-identity" in out and "stale" in out.splitlines()[-1]


def test_collateral_prefetch_by_hwid(replay: VendorReplay, tmp_path: Path) -> None:
    """--hwid with --product and --tcb fetches that chip's VCEK, chain and CRL."""
    config = verifier_dir(tmp_path / "v")
    assert main(["collateral", "prefetch", "--config", str(config), "--tee", "snp",
                 "--product", "Milan", "--hwid", GCP_HWID, "--tcb", "0400000000001bde",
                 "--kds-url", replay.url, "--at", GCP_AT]) == 0
    assert sorted(stored(config)) == sorted([
        f"snp-vcek-Milan-{GCP_HWID}-0400000000001bde", "snp-vcek-chain-Milan",
        "snp-vcek-crl-Milan"])
    assert main(["collateral", "prefetch", "--config", str(config), "--tee", "snp",
                 "--hwid", GCP_HWID]) == 2  # usage: no product or TCB


def test_collateral_bundle_round_trip(replay: VendorReplay, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """export from one verifier store, import into another: the same items; importing again
    stores nothing new."""
    a, b, _, public, bundle = exported(replay, tmp_path)
    assert main(["collateral", "import", "--config", str(b), "--trust-key", str(public),
                 "--at", PCS_AT, str(bundle)]) == 0
    assert stored(b) == stored(a) and len(stored(b)) == 7
    capsys.readouterr()
    assert main(["collateral", "import", "--config", str(b), "--trust-key", str(public),
                 "--at", PCS_AT, str(bundle)]) == 0
    assert "0 stored, 7 already held, 0 refused" in capsys.readouterr().out


def test_collateral_bundle_tampered_refused(replay: VendorReplay, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle whose payload changed, or one signed by an untrusted key, is refused whole
    (exit 1, nothing stored); a correctly signed bundle carrying an item the pinned roots do
    not vouch for stores the others and names the refused one."""
    a, b, private, public, bundle = exported(replay, tmp_path)
    header, payload, signature = bundle.read_bytes().split(b".")
    doc = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    genoa = (SNP / "amd-crl/genoa_vcek_crl_2026-07-28.der").read_bytes()
    crl = next(i for i in doc["items"] if i["key"] == "snp-vcek-crl-Milan")
    crl["body"] = base64.b64encode(genoa).decode()
    forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=")
    bad = tmp_path / "tampered.bundle"
    bad.write_bytes(b".".join([header, forged, signature]))
    capsys.readouterr()
    assert main(["collateral", "import", "--config", str(b), "--trust-key", str(public),
                 "--at", PCS_AT, str(bad)]) == 1
    assert "SIG_INVALID" in capsys.readouterr().err
    _, other = keys(tmp_path, "other-key")
    assert main(["collateral", "import", "--config", str(b), "--trust-key", str(other),
                 "--at", PCS_AT, str(bundle)]) == 1
    assert stored(b) == {}
    # The signer is trusted, but a signer cannot make collateral trusted.
    key = load_pem_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    _, items = read_bundle(bundle.read_bytes(), [key.public_key()])
    items = [BundledItem(i.key, i.kind, genoa if i.key == "snp-vcek-crl-Milan" else i.body,
                         i.issuer_chain, i.source, i.fetched_at) for i in items]
    signed_bad = tmp_path / "signed-bad.bundle"
    signed_bad.write_bytes(write_bundle(items, key, created=at(PCS_AT)))
    capsys.readouterr()
    assert main(["collateral", "import", "--config", str(b), "--trust-key", str(public),
                 "--at", PCS_AT, str(signed_bad)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED  snp-vcek-crl-Milan: CHAIN_UNTRUSTED" in out
    assert sorted(stored(b)) == sorted(k for k in stored(a) if k != "snp-vcek-crl-Milan")


def test_collateral_verifier_serves_new_items_without_restart(
        replay: VendorReplay, tmp_path: Path) -> None:
    """A built verifier has no CRL; after a prefetch into its store, its next poll serves with
    the VCEK and the CRL (no restart)."""
    config_path = verifier_dir(tmp_path / "v")
    servicer = build_servicer(load_config(config_path), insecure=False, plaintext=True)
    assert servicer.watched is not None
    assert freshness(servicer.collateral) == []
    report = parse_report(GCP_REPORT.read_bytes())
    assert servicer.collateral.vceks_for(report.chip_id, report.reported_tcb) == []
    assert main(["collateral", "prefetch", "--config", str(config_path), "--tee", "snp",
                 "--for", str(GCP_REPORT), "--kds-url", replay.url, "--at", GCP_AT]) == 0
    assert servicer.watched.refresh() is True
    assert len(servicer.collateral.vceks_for(report.chip_id, report.reported_tcb)) == 1
    assert [f.item.split(" (")[0] for f in freshness(servicer.collateral)] == ["CRL ARK-Milan"]
    assert servicer.watched.refresh() is False


def test_collateral_refresher_renews_before_next_update(replay: VendorReplay,
                                                        tmp_path: Path) -> None:
    """The refresher renews an item due within its lead time (the 2025-10 GNR TCB Info is
    replaced by the recorded 2026-01 one), leaves items not due alone, and counts a failed
    round without touching the store."""
    store = CollateralItemStore(tmp_path / "state.db")
    vendors = VendorSources.from_settings(FetchSettings(
        pcs_url=replay.url, kds_url=replay.url, root_crl_url=replay.url + ROOT_CRL_PATH))
    need = vendors.pcs.need("tdx-tcb-00a06d080000")
    old = vendors.pcs.verify(need, (VECTORS / "tdx/trustee-gnr-v4/tcbInfo.json").read_bytes(),
                             (VECTORS / "tdx/intel-roots/tcb-signing-chain-2025-2032.pem")
                             .read_bytes(), source="test", at=at("2025-11-01T00:00:00Z"),
                             fetched_at=at("2025-11-01T00:00:00Z"))
    assert store.put(old)
    root_need = vendors.pcs.need("intel-root-ca-crl")
    assert store.put(Fetcher().fetch(root_need, vendors.pcs, at=at(PCS_AT)))
    now = old.next_update - timedelta(hours=10)
    replay.fault(TCB_PATH, Fault("404"))
    refresher = Refresher(store, vendors.for_key, ahead=timedelta(hours=72), clock=lambda: now)
    assert refresher.run_once() == [] and refresher.failures == 1
    assert store.get(need.key) == old
    assert refresher.run_once() == ["tdx-tcb-00a06d080000"]
    renewed = store.get(need.key)
    assert renewed is not None and renewed.issued == at("2026-01-12T16:27:21Z")
    assert replay.counts[ROOT_CRL_PATH] == 1  # not due: fetched once, by the test
    store.close()


def test_collateral_settings_in_verifier_config(tmp_path: Path) -> None:
    """The collateral keys of a verifier config: defaults (no refresh), given URLs, and a
    clear error for a non-http URL or an out-of-range interval."""
    config = load_config(verifier_dir(tmp_path / "a"))
    assert config.fetch.refresh_seconds == 0 and config.fetch.kds_url.startswith("https://")
    assert config.fetch.fetch_on_miss is False
    good = load_config(write_verifier_config(tmp_path / "b", extra=(
        'kds_url = "http://127.0.0.1:9"\ncollateral_refresh_seconds = 600')))
    assert (good.fetch.kds_url, good.fetch.refresh_seconds) == ("http://127.0.0.1:9", 600)
    for extra, rule in (('pcs_url = "ftp://x"', "pcs_url"),
                        ("collateral_refresh_seconds = 1", "collateral_refresh_seconds"),
                        ('fetch_on_miss = "yes"', "fetch_on_miss")):
        with pytest.raises(KeybrokerError) as err:
            load_config(write_verifier_config(tmp_path / rule, extra=extra))
        assert err.value.category is Category.MALFORMED and rule in str(err.value)


def gcp_request() -> verifier_pb2.AppraiseRequest:
    """An Appraise request carrying the real GCP Milan report (its REPORT_DATA is zero)."""
    return verifier_pb2.AppraiseRequest(
        evidence=evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(
            report=GCP_REPORT.read_bytes())),
        expected_report_data=bytes(64), nonce=b"n" * 16, policy_ids=["gcp"], request_id="r1")


def gcp_verifier(tmp_path: Path, replay: VendorReplay, extra: str) -> VerifierServicer:
    """A verifier whose policy accepts the GCP report, with ``extra`` config lines."""
    policy = snp_policy("gcp", floor="{bootloader: 4, tee: 0, snp: 27, microcode: 222}",
                        measurements="[" + GCP_MEASUREMENT + "]")
    config = write_verifier_config(tmp_path, policy=policy,
                                   extra=f'kds_url = "{replay.url}"\n{extra}')
    ResultSigner.generate().write_private_key(tmp_path / "result-key.pem")
    return build_servicer(load_config(config), insecure=False, plaintext=True,
                          clock=lambda: at(GCP_AT))


def test_collateral_fetch_on_miss(replay: VendorReplay, tmp_path: Path) -> None:
    """Off (the default), a missing VCEK/CRL is COLLATERAL_STALE and nothing is fetched; on,
    the verifier fetches the three items once, stores them, and the same request is
    released; later requests need no fetch."""
    off = gcp_verifier(tmp_path / "off", replay, "")
    with pytest.raises(KeybrokerError) as err:
        off.appraise(gcp_request(), "digest")
    assert err.value.category is Category.COLLATERAL_STALE
    assert sum(replay.counts.values()) == 0
    on = gcp_verifier(tmp_path / "on", replay, "fetch_on_miss = true")
    assert on.appraise(gcp_request(), "digest").count(".") == 2  # a signed token
    assert sum(replay.counts.values()) == 3
    assert on.appraise(gcp_request(), "digest").count(".") == 2
    assert sum(replay.counts.values()) == 3
    assert len(stored(tmp_path / "on" / "verifier.toml")) == 3


def test_collateral_fetch_on_miss_failure_not_retried(replay: VendorReplay,
                                                      tmp_path: Path) -> None:
    """A vendor that fails (404 on the CRL) leaves the denial COLLATERAL_STALE, and the failed
    item is not asked for again on the next request."""
    replay.fault("/vcek/v1/Milan/crl", Fault("404"))
    on = gcp_verifier(tmp_path, replay, "fetch_on_miss = true")
    for _ in range(2):
        with pytest.raises(KeybrokerError) as err:
            on.appraise(gcp_request(), "digest")
        assert err.value.category is Category.COLLATERAL_STALE
    assert replay.counts["/vcek/v1/Milan/crl"] == 1
