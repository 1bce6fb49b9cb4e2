"""Optional OpenTelemetry spans across broker -> verifier, through real processes: with
``tracing = "file"`` in both configs one release leaves a broker server span, its client span
for the verifier call, and the verifier's server span in the same trace, the verifier's span a
child of the broker's client span; the request id is on both server spans and nothing secret
is. Tracing off, nothing is written; an unknown mode is refused when the config loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.agent_tls import tls_kwargs
from support.demo_stack import prepared_services

from attester_agent.client import get_secrets
from keybroker.errors import Category, Malformed
from keybroker.tracing import Tracing, start_tracing, tracing_settings
from keybroker_cli.demo import demo_collector, demo_init_data
from keybroker_cli.demo_setup import DEMO_KEY_ID

TRACING = 'tracing = "file"\ntracing_file = "spans.jsonl"\n'
REQUEST_ID = "trace-test-1"


def _spans(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.integration
def test_tracing_spans_cross_broker_to_verifier(tmp_path: Path) -> None:
    with prepared_services(tmp_path / "deploy", broker_settings=TRACING,
                           verifier_settings=TRACING) as running:
        layout = running.layout
        got = get_secrets(running.broker.address, [DEMO_KEY_ID], demo_collector(layout, "snp"),
                          init_data=demo_init_data(layout, "snp"), request_id=REQUEST_ID,
                          **tls_kwargs(layout))  # type: ignore[arg-type]
        secret = got[DEMO_KEY_ID]
    broker = {s["name"]: s for s in _spans(layout.broker / "spans.jsonl")}
    (verifier,) = _spans(layout.verifier / "spans.jsonl")
    server, client = broker["keybroker.v1.KeyBroker/ReleaseKey"], \
        broker["keybroker.v1.Verifier/Appraise"]
    assert (server["kind"], client["kind"], verifier["kind"]) == (
        "SpanKind.SERVER", "SpanKind.CLIENT", "SpanKind.SERVER")
    trace = server["context"]["trace_id"]  # type: ignore[index]
    assert client["context"]["trace_id"] == trace  # type: ignore[index]
    assert verifier["context"]["trace_id"] == trace  # type: ignore[index]
    assert client["parent_id"] == server["context"]["span_id"]  # type: ignore[index]
    assert verifier["parent_id"] == client["context"]["span_id"]  # type: ignore[index]
    assert server["attributes"]["keybroker.request_id"] == REQUEST_ID  # type: ignore[index]
    assert verifier["attributes"]["keybroker.request_id"] == REQUEST_ID  # type: ignore[index]
    assert verifier["attributes"]["keybroker.tee"] == "snp"  # type: ignore[index]
    assert verifier["resource"]["attributes"]["service.name"] == "keybroker-verifier"  # type: ignore[index]
    for path in (layout.broker / "spans.jsonl", layout.verifier / "spans.jsonl"):
        text = path.read_text()
        assert secret.hex() not in text and secret.decode(errors="replace") not in text


def test_tracing_off_or_misconfigured(tmp_path: Path) -> None:
    """Off is the default and a no-op; an unknown mode, or a file mode without a file, is
    MALFORMED naming the key."""
    off = tracing_settings({}, tmp_path, "cfg")
    assert off.mode == "off"
    tracing = start_tracing("svc", off)
    assert type(tracing) is Tracing and tracing.outgoing() == []
    with tracing.span("x") as span:
        span.set("k", "v")
    for table in ({"tracing": "jaeger"}, {"tracing": "file"}):
        with pytest.raises(Malformed) as exc:
            tracing_settings(table, tmp_path, "cfg")
        assert exc.value.category is Category.MALFORMED and exc.value.rule == "config.tracing"
