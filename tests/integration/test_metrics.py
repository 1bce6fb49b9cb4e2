"""Metrics through real processes: after one release and one denial, both services' HTTPS
endpoints are scraped and parsed with prometheus-client's own parser, and every family the
operator relies on is there with the values this traffic must produce; a scraper without a
client certificate is refused where ``metrics_client_ca`` asks for one.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.agent_tls import tls_kwargs
from support.demo_stack import prepared_services

from attester_agent.client import get_secrets
from keybroker.errors import Category, KeybrokerError
from keybroker_cli.demo import demo_collector, demo_init_data
from keybroker_cli.demo_prepare import Ports
from keybroker_cli.demo_setup import DEMO_KEY_ID, DemoLayout

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Scraped:
    layout: DemoLayout
    ports: Ports
    broker: Samples
    verifier: Samples


def scrape(layout: DemoLayout, port: int, *, client: bool) -> Samples:
    """Parse one endpoint with the library's parser (as Prometheus would)."""
    context = ssl.create_default_context(cafile=str(layout.tls.ca))
    if client:
        context.load_cert_chain(layout.tls.cert("admin"), layout.tls.key("admin"))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context,
                                timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode("utf-8")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, **labels: str) -> float:
    """The sample ``metric`` whose labels include ``labels`` (exactly one must match)."""
    found = [v for (n, ls), v in samples.items()
             if n == metric and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return found[0]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    root = tmp_path_factory.mktemp("metrics") / "deploy"
    ca = root / "tls" / "ca.pem"
    with prepared_services(root, verifier_settings=f'metrics_client_ca = "{ca}"\n') as running:
        layout, address = running.layout, running.broker.address
        kwargs = tls_kwargs(layout)
        got = get_secrets(address, [DEMO_KEY_ID], demo_collector(layout, "snp"),
                          init_data=demo_init_data(layout, "snp"),
                          **kwargs)  # type: ignore[arg-type]
        assert DEMO_KEY_ID in got
        with pytest.raises(KeybrokerError) as denied:
            get_secrets(address, [DEMO_KEY_ID], demo_collector(layout, "snp", wrong=True),
                        init_data=demo_init_data(layout, "snp"),
                        **kwargs)  # type: ignore[arg-type]
        assert denied.value.category is Category.MEASUREMENT
        ports = running.ports
        yield Scraped(layout, ports, scrape(layout, ports.broker_metrics, client=False),
                      scrape(layout, ports.verifier_metrics, client=True))


def test_metrics_broker_releases_denials_and_requests(scraped: Scraped) -> None:
    """Releases and denials by category, TEE and rule pattern; gRPC requests by method and
    code; outstanding challenges; rules version; audit writes; dependency availability."""
    b = scraped.broker
    assert value(b, "keybroker_releases_total", tee="snp", key_pattern="demo/*") == 1
    assert value(b, "keybroker_denials_total", category="MEASUREMENT", tee="snp",
                 key_pattern="demo/*") == 1
    assert value(b, "keybroker_grpc_requests_total", method="ReleaseKey", code="OK") == 1
    assert value(b, "keybroker_grpc_requests_total", method="ReleaseKey",
                 code="PERMISSION_DENIED") == 1
    assert value(b, "keybroker_grpc_requests_total", method="GetChallenge", code="OK") == 2
    assert value(b, "keybroker_challenges_outstanding") == 0
    assert value(b, "keybroker_release_rules_version", name="release-rules") == 1
    # intent + released + denied, at least (admin calls are audited too)
    assert value(b, "keybroker_audit_write_seconds_count") >= 3
    assert value(b, "keybroker_audit_write_failures_total") == 0
    for dependency in ("database", "audit", "kek (file)", "verifier"):
        assert value(b, "keybroker_dependency_up", dependency=dependency) == 1


def test_metrics_verifier_appraisals_versions_and_collateral(scraped: Scraped) -> None:
    """Appraisals by TEE and outcome with a latency histogram up to 30 s, the policy version
    in force, and every collateral item's age and (positive) time to its next update."""
    v = scraped.verifier
    assert value(v, "keybroker_appraisals_total", tee="snp", outcome="affirmed") == 1
    assert value(v, "keybroker_appraisals_total", tee="snp", outcome="denied",
                 category="MEASUREMENT") == 1
    assert value(v, "keybroker_appraisal_seconds_count", tee="snp") == 2
    assert value(v, "keybroker_appraisal_seconds_bucket", tee="snp", le="30.0") == 2
    assert value(v, "keybroker_appraisal_seconds_bucket", tee="snp", le="+Inf") == 2
    assert value(v, "keybroker_policy_version", policy="snp-demo") == 1
    assert value(v, "keybroker_grpc_requests_total", method="Appraise", code="OK") == 1
    items = {dict(ls)["item"] for (n, ls) in v if n == "keybroker_collateral_next_update_seconds"}
    assert any(item.startswith("CRL ARK-") for item in items), items
    assert all(value(v, "keybroker_collateral_next_update_seconds", item=item) > 0
               for item in items)
    assert all(value(v, "keybroker_collateral_age_seconds", item=item) >= 0 for item in items)
    assert value(v, "keybroker_dependency_up", dependency="database") == 1
    # Appraisal records are never dropped silently: the writer's counts are exported.
    assert value(v, "keybroker_appraisal_records_total", outcome="dropped") == 0
    assert value(v, "keybroker_appraisal_records_total", outcome="failed") == 0
    assert 0 <= value(v, "keybroker_appraisal_records_total", outcome="written") <= 2


def test_metrics_client_certificate_required_where_configured(scraped: Scraped) -> None:
    """The verifier's endpoint wants a client certificate (metrics_client_ca): a scraper
    without one is refused at the TLS handshake; plain HTTP gets nothing either."""
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        scrape(scraped.layout, scraped.ports.verifier_metrics, client=False)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{scraped.ports.broker_metrics}/metrics",
                               timeout=5).read()
