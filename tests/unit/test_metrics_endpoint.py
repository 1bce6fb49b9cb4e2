"""The metrics endpoint itself: HTTPS with the service certificate, client certificates where
``metrics_client_ca`` asks, plaintext refused off loopback, settings checked, and a restart
(SIGHUP) serving the certificate files as they are then, keeping the old ones when the new
ones do not load."""

from __future__ import annotations

import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.metrics import MetricsSettings, ServiceMetrics, metrics_settings, serve_metrics
from keybroker.tls import TlsFiles
from keybroker_cli.tls_cmd import init_tls


def _get(address: str, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://{address}/metrics", context=context,
                                timeout=5) as reply:
        return str(reply.read().decode())


def test_metrics_endpoint_serves_and_restarts_with_new_certificates(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    init_tls(old)
    init_tls(new)
    live = tmp_path / "live"
    shutil.copytree(old, live)
    metrics = ServiceMetrics("test")
    Counter("keybroker_test_events", "test", registry=metrics.registry).inc(3)
    tls = TlsFiles(cert=live / "verifier.pem", key=live / "verifier-key.pem")
    server = serve_metrics(MetricsSettings(listen="127.0.0.1:0"), metrics.registry, tls)
    assert server is not None and server.scheme == "https"
    try:
        families = {f.name: f for f in text_string_to_metric_families(_get(server.address,
                                                                           old / "ca.pem"))}
        assert families["keybroker_test_events"].samples[0].value == 3
        (live / "verifier.pem").write_text("not a certificate")
        server.restart()  # a broken set: the running server keeps the old certificate
        assert "keybroker_test_events_total 3.0" in _get(server.address, old / "ca.pem")
        for name in ("verifier.pem", "verifier-key.pem"):
            shutil.copy(new / name, live / name)
        server.restart()
        assert "keybroker_test_events_total 3.0" in _get(server.address, new / "ca.pem")
        with pytest.raises(ssl.SSLError):
            try:
                _get(server.address, old / "ca.pem")
            except urllib.error.URLError as exc:
                raise exc.reason from None  # type: ignore[misc]
    finally:
        server.stop()


def test_metrics_settings_are_checked(tmp_path: Path) -> None:
    assert metrics_settings({}, tmp_path, "cfg") == MetricsSettings()
    assert serve_metrics(MetricsSettings(), ServiceMetrics("x").registry, None) is None
    got = metrics_settings({"metrics_listen": "127.0.0.1:9100", "metrics_client_ca": "ca.pem"},
                           tmp_path, "cfg")
    assert got == MetricsSettings("127.0.0.1:9100", tmp_path / "ca.pem")
    for bad in ({"metrics_listen": "9100"}, {"metrics_listen": 9100},
                {"metrics_listen": "host:99999"}):
        with pytest.raises(Malformed) as exc:
            metrics_settings(bad, tmp_path, "cfg")
        assert exc.value.rule == "config.metrics"


def test_plaintext_metrics_only_on_loopback() -> None:
    """Without TLS (the service's insecure plaintext mode) only a loopback address serves."""
    with pytest.raises(KeybrokerError) as exc:
        serve_metrics(MetricsSettings(listen="0.0.0.0:0"), ServiceMetrics("x").registry, None)
    assert (exc.value.category, exc.value.rule) == (Category.MALFORMED, "tls.plaintext")
    server = serve_metrics(MetricsSettings(listen="127.0.0.1:0"), ServiceMetrics("x").registry,
                           None)
    assert server is not None and server.scheme == "http"
    server.stop()
