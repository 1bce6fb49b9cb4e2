"""Prometheus metrics every service shares: the HTTP(S) endpoint, gRPC requests by method and
code, dependency availability, and audit write latency and failures.

Invariants:
- Off unless ``metrics_listen`` is configured. The endpoint has its own port and serves TLS
  with the service's own certificate (``tls_cert``/``tls_key``); with ``metrics_client_ca``
  scrapers must present a certificate under that CA. Plaintext only when the whole service
  runs with its insecure plaintext flag, and then on loopback only.
- Each service has its own ``CollectorRegistry`` (never the process-global one), so several
  services in one process (tests) never collide.
- Label values are bounded: method names, status codes, categories, TEE names, dependency
  names and release-rule patterns; never key ids, request ids, principals or evidence.
- Importing this module starts nothing; ``serve_metrics`` is the only server. SIGHUP restarts
  it on the same port with the certificate files as they are then (a set that does not load
  keeps the old server).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from keybroker.errors import Malformed, Unavailable
from keybroker.tls import TlsFiles, check_plaintext

_log = logging.getLogger(__name__)

METRICS_KEYS = ("metrics_listen", "metrics_client_ca")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


@dataclass(frozen=True)
class MetricsSettings:
    """Where the metrics endpoint listens ("" = off) and whose client certificates it wants."""

    listen: str = ""
    client_ca: Path | None = None


def metrics_settings(table: Mapping[str, object], base: Path, where: str) -> MetricsSettings:
    """The metrics keys of a service config table (paths relative to ``base``)."""
    for key in METRICS_KEYS:
        if not isinstance(table.get(key, ""), str):
            raise Malformed(f"{where}: {key} has the wrong type", rule="config.metrics",
                            expected="string", actual=type(table[key]).__name__)
    listen = str(table.get("metrics_listen", ""))
    host, _, port = listen.rpartition(":")
    if listen and (not host or not port.isdigit() or int(port) > 65535):
        raise Malformed(f"{where}: invalid metrics_listen", rule="config.metrics",
                        expected="HOST:PORT", actual=listen)
    ca = str(table.get("metrics_client_ca", ""))
    return MetricsSettings(listen=listen, client_ca=base / ca if ca else None)


@dataclass
class MetricsServer:
    """A running metrics endpoint (``restart`` re-reads its certificate files)."""

    settings: MetricsSettings
    registry: CollectorRegistry
    tls: TlsFiles | None
    server: WSGIServer
    address: str

    @property
    def scheme(self) -> str:
        """``https``, or ``http`` in the insecure plaintext mode."""
        return "https" if self.tls else "http"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        """Serve again on the same port with the certificate files as they are now (SIGHUP);
        files that do not load keep the running server."""
        port = int(self.address.rpartition(":")[2])
        try:
            _check_files(self.tls)
        except (OSError, ValueError) as exc:
            _log.error("metrics certificate not reloaded, the old one stays: %s", exc)
            return
        self.stop()
        self.server = _start(self.settings, self.registry, self.tls, port)


def serve_metrics(settings: MetricsSettings, registry: CollectorRegistry,
                  tls: TlsFiles | None) -> MetricsServer | None:
    """Start the endpoint (module invariants); None when not configured. ``tls`` None is the
    service's insecure plaintext mode (loopback only)."""
    if not settings.listen:
        return None
    host, _, port = settings.listen.rpartition(":")
    if tls is None:
        check_plaintext(settings.listen, flag="--insecure-plaintext")
    server = _start(settings, registry, tls, int(port))
    return MetricsServer(settings, registry, tls, server,
                         f"{host.strip('[]')}:{server.server_address[1]}")


def _start(settings: MetricsSettings, registry: CollectorRegistry, tls: TlsFiles | None,
           port: int) -> WSGIServer:
    host = settings.listen.rpartition(":")[0].strip("[]")
    try:
        server, _ = start_http_server(
            port, addr=host, registry=registry,
            certfile=str(tls.cert) if tls else None, keyfile=str(tls.key) if tls else None,
            client_cafile=str(settings.client_ca) if tls and settings.client_ca else None,
            client_auth_required=bool(tls and settings.client_ca))
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot serve metrics on {settings.listen}", rule="config.metrics",
                          actual=str(exc)[:200]) from exc
    return server


def _check_files(tls: TlsFiles | None) -> None:
    """Raise if the certificate and key do not load together (before a restart)."""
    if tls is not None:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(tls.cert), str(tls.key))


class ServiceMetrics:
    """What every service measures, in its own registry."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        self.requests = Counter("keybroker_grpc_requests", "gRPC requests served, by method "
                                "and status code", ("method", "code"), registry=self.registry)
        self.up = Gauge("keybroker_dependency_up", "1 while a dependency's last health probe "
                        "passed (database, audit, kek, hsm, verifier)", ("dependency",),
                        registry=self.registry)
        self.audit_seconds = Histogram("keybroker_audit_write_seconds", "time to append one "
                                       "audit record durably", registry=self.registry,
                                       buckets=LATENCY_BUCKETS)
        self.audit_failures = Counter("keybroker_audit_write_failures", "audit appends that "
                                      "failed (the request they belonged to was refused)",
                                      registry=self.registry)

    def dependency(self, name: str, ok: bool) -> None:
        """A health probe result (``HealthMonitor.observe``)."""
        self.up.labels(name).set(1 if ok else 0)

    def audit_write(self, seconds: float, ok: bool) -> None:
        """One audit append (``AuditLog`` write observer)."""
        if ok:
            self.audit_seconds.observe(seconds)
        else:
            self.audit_failures.inc()

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Counts every unary call of the server it is installed on by method and code."""
        return _RequestCounter(self.requests)


if TYPE_CHECKING:  # grpc's handler type is generic only in its stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class _RequestCounter(grpc.aio.ServerInterceptor):
    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    async def intercept_service(self, continuation: Continuation,
                                details: grpc.HandlerCallDetails) -> Handler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # type: ignore[return-value]  # grpc's own "not found" path
        method = str(details.method).rsplit("/", 1)[-1]
        inner = handler.unary_unary
        counter = self._counter

        async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                response = await inner(request, context)  # type: ignore[arg-type]
            except BaseException:
                code = context.code()
                counter.labels(method, _code_name(code, grpc.StatusCode.UNKNOWN)).inc()
                raise
            counter.labels(method, _code_name(context.code(), grpc.StatusCode.OK)).inc()
            return response

        return grpc.unary_unary_rpc_method_handler(
            counted, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _code_name(code: object, default: grpc.StatusCode) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions report the numeric value
        for known in grpc.StatusCode:
            if known.value[0] == code:
                return known.name
    return default.name

