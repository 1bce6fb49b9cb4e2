"""Optional OpenTelemetry spans, across broker -> verifier.

Invariants:
- Off unless a service config says ``tracing = "file"`` (spans as JSON lines in
  ``tracing_file``) or ``tracing = "otlp"`` (the standard ``OTEL_EXPORTER_OTLP_*`` variables
  say where). Tracing needs the ``otel`` extra; asking for it without the packages stops
  start-up naming the extra. Off, nothing of OpenTelemetry is imported.
- The trace context crosses from the broker to the verifier as W3C ``traceparent`` gRPC
  metadata; the verifier's span is a child of the broker's client span.
- Spans carry names, request ids, TEE and outcome categories; never secrets, keys, tokens or
  evidence.
- Each service has its own tracer provider (the process-global one is never set).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from keybroker.errors import Malformed

TRACING_KEYS = ("tracing", "tracing_file")
TracingMode = Literal["off", "file", "otlp"]
SpanKind = Literal["internal", "server", "client"]
_MODES: tuple[TracingMode, ...] = ("off", "file", "otlp")


@dataclass(frozen=True)
class TracingSettings:
    """Whether and where a service exports spans."""

    mode: TracingMode = "off"
    file: Path | None = None


def tracing_settings(table: Mapping[str, object], base: Path, where: str) -> TracingSettings:
    """The tracing keys of a service config table (``tracing_file`` relative to ``base``)."""
    mode = table.get("tracing", "off")
    if mode not in _MODES:
        raise Malformed(f"{where}: unknown tracing mode", rule="config.tracing",
                        expected=" | ".join(_MODES), actual=str(mode))
    file = table.get("tracing_file", "")
    if not isinstance(file, str):
        raise Malformed(f"{where}: tracing_file has the wrong type", rule="config.tracing",
                        expected="string", actual=type(file).__name__)
    if mode == "file" and not file:
        raise Malformed(f"{where}: tracing = \"file\" needs tracing_file", rule="config.tracing",
                        expected="a path for the spans (JSON lines)", actual="absent")
    return TracingSettings(mode=mode, file=base / file if file else None)


class Span:
    """What a caller may add to the span it is in (nothing, when tracing is off)."""

    def set(self, key: str, value: str | int) -> None:
        """Record an attribute (ids, names, categories only)."""


class Tracing:
    """Tracing switched off: every operation does nothing."""

    @contextmanager
    def span(self, name: str, *, kind: SpanKind = "internal",
             parent: Sequence[tuple[str, str | bytes]] = (),
             attributes: Mapping[str, str | int] | None = None) -> Iterator[Span]:
        """A span around the block; ``parent`` is incoming gRPC metadata to continue."""
        del name, kind, parent, attributes
        yield Span()

    def outgoing(self) -> list[tuple[str, str]]:
        """gRPC metadata carrying the current span to the next service."""
        return []

    def shutdown(self) -> None:
        """Export what is pending and stop."""


def start_tracing(service: str, settings: TracingSettings) -> Tracing:
    """The service's tracing (module invariants)."""
    if settings.mode == "off":
        return Tracing()
    try:
        return _OtelTracing(service, settings)
    except ImportError as exc:
        raise Malformed(f"tracing = \"{settings.mode}\" needs the otel extra "
                        "(pip install 'keybroker[otel]')", rule="config.tracing",
                        expected="opentelemetry-sdk" + (
                            " and opentelemetry-exporter-otlp" if settings.mode == "otlp"
                            else ""),
                        actual=f"missing: {exc.name}") from None


class _OtelSpan(Span):
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: str | int) -> None:
        self._span.set_attribute(key, value)


class _OtelTracing(Tracing):
    def __init__(self, service: str, settings: TracingSettings) -> None:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional extra
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
        from opentelemetry.trace import SpanKind as OtelKind  # noqa: PLC0415

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if settings.mode == "file":
            assert settings.file is not None  # checked with the settings
            provider.add_span_processor(SimpleSpanProcessor(_json_lines(settings.file)))
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - optional
                OTLPSpanExporter,
            )
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._provider = provider
        self._tracer = provider.get_tracer("keybroker")
        self._kinds = {"internal": OtelKind.INTERNAL, "server": OtelKind.SERVER,
                       "client": OtelKind.CLIENT}

    @contextmanager
    def span(self, name: str, *, kind: SpanKind = "internal",
             parent: Sequence[tuple[str, str | bytes]] = (),
             attributes: Mapping[str, str | int] | None = None) -> Iterator[Span]:
        from opentelemetry.propagate import extract  # noqa: PLC0415 - optional extra

        carrier = {k: v for k, v in parent if isinstance(v, str)}
        context = extract(carrier) if carrier else None
        with self._tracer.start_as_current_span(name, context=context, kind=self._kinds[kind],
                                                attributes=dict(attributes or {})) as span:
            yield _OtelSpan(span)

    def outgoing(self) -> list[tuple[str, str]]:
        from opentelemetry.propagate import inject  # noqa: PLC0415 - optional extra

        carrier: dict[str, str] = {}
        inject(carrier)
        return sorted(carrier.items())

    def shutdown(self) -> None:
        self._provider.shutdown()


def _json_lines(path: Path) -> Any:
    """A span exporter appending each finished span to ``path`` as one JSON line."""
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415 - optional extra
        SpanExporter,
        SpanExportResult,
    )

    class JsonLines(SpanExporter):
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            with self._lock, path.open("a", encoding="utf-8") as out:
                for span in spans:
                    out.write(span.to_json(indent=None) + "\n")
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    return JsonLines()
