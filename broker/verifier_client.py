"""The broker's client of the verifier (keybroker.v1.Verifier): appraisals and TPM AK
enrolment, over mutual TLS with a deadline on every call.

Invariants:
- A failure that carries a verifier Denial keeps its category (``error_from_rpc``); any other
  failure (refused, deadline, closed channel) is UNAVAILABLE. Nothing is retried here.
- The channel is created lazily on the serving event loop; ``reconnect`` re-reads the client
  certificate and retires the old channel, which ``close`` closes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keybroker.errors import KeybrokerError, Unavailable
from keybroker.logs import REQUEST_ID_METADATA
from keybroker.rpc_errors import error_from_rpc
from keybroker.tracing import Tracing
from keybroker.v1 import evidence_pb2, verifier_pb2, verifier_pb2_grpc

_log = logging.getLogger(__name__)

_M = TypeVar("_M")


@runtime_checkable
class TpmEnroller(Protocol):
    """A verifier client that forwards TPM AK enrolment (``GrpcAppraiser``)."""

    async def enrol_tpm(self, request: evidence_pb2.EnrolTpmRequest
                        ) -> evidence_pb2.EnrolTpmChallenge: ...

    async def activate_tpm(self, request: evidence_pb2.ActivateTpmRequest
                           ) -> evidence_pb2.TpmEnrolment: ...


class Appraiser(Protocol):
    """Something that appraises evidence and returns an EAR JWT (the verifier)."""

    async def appraise(self, request: verifier_pb2.AppraiseRequest) -> str:
        """Return the result token or raise a typed error (Unavailable when unreachable)."""
        ...


class GrpcAppraiser:
    """The keybroker.v1.Verifier service over gRPC (mutual TLS unless ``credentials`` is None,
    the insecure plaintext mode), with a deadline on every call."""

    def __init__(self, target: str, *, timeout_seconds: float,
                 credentials: Callable[[], grpc.ChannelCredentials] | None = None,
                 server_name: str = "") -> None:
        self.target = target
        self._timeout = timeout_seconds
        self._credentials = credentials
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []
        self.tracing = Tracing()  # the server's, once started

    def _open(self) -> grpc.aio.Channel:
        # Created lazily so the channel belongs to the event loop that serves requests.
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials(),
                                                        options=self._options)
        return self._channel

    def _stub(self) -> verifier_pb2_grpc.VerifierAsyncStub:
        return verifier_pb2_grpc.VerifierStub(self._open())

    async def probe(self, timeout: float = 2.0) -> None:
        """Health probe: the verifier's gRPC health is SERVING (``Unavailable`` otherwise)."""
        try:
            reply = await health_pb2_grpc.HealthStub(self._open()).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"verifier {self.target} unreachable", rule="health.verifier",
                              actual=f"{exc.code().name}: {exc.details() or ''}"[:200]
                              ) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise Unavailable(f"verifier {self.target} is not serving", rule="health.verifier",
                              actual=health_pb2.HealthCheckResponse.ServingStatus.Name(
                                  reply.status))

    def reconnect(self) -> None:
        """Re-read the client certificate: the next call opens a new channel (the old one is
        closed at ``close``, letting calls in flight finish). A bad file keeps the old one."""
        if self._credentials is None or self._channel is None:
            return
        try:
            self._credentials()
        except KeybrokerError as exc:
            _log.error("verifier client certificate not reloaded: %s", exc.detail)
            return
        self._retired.append(self._channel)
        self._channel = None

    async def appraise(self, request: verifier_pb2.AppraiseRequest) -> str:
        """Call Appraise; failures without a Denial (refused, deadline) are Unavailable."""
        try:
            with self.tracing.span("keybroker.v1.Verifier/Appraise", kind="client"):
                response = await self._stub().Appraise(
                    request, timeout=self._timeout,
                    metadata=((REQUEST_ID_METADATA, request.request_id),
                              *self.tracing.outgoing()))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "verifier") from exc
        except (grpc.RpcError, OSError) as exc:
            raise Unavailable("verifier unavailable", actual=type(exc).__name__) from exc
        return response.result_token

    async def _forward(self, call: Callable[[], Awaitable[_M]]) -> _M:
        """One call to the verifier; failures without a Denial are Unavailable."""
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "verifier") from exc
        except (grpc.RpcError, OSError) as exc:
            raise Unavailable("verifier unavailable", actual=type(exc).__name__) from exc

    async def enrol_tpm(self, request: evidence_pb2.EnrolTpmRequest
                        ) -> evidence_pb2.EnrolTpmChallenge:
        """Forward TPM enrolment step 1 to the verifier (typed errors as for ``appraise``)."""
        metadata = ((REQUEST_ID_METADATA, request.request_id),)
        return await self._forward(lambda: self._stub().EnrolTpm(
            request, timeout=self._timeout, metadata=metadata))

    async def activate_tpm(self, request: evidence_pb2.ActivateTpmRequest
                           ) -> evidence_pb2.TpmEnrolment:
        """Forward TPM enrolment step 2 to the verifier (typed errors as for ``appraise``)."""
        metadata = ((REQUEST_ID_METADATA, request.request_id),)
        return await self._forward(lambda: self._stub().ActivateTpm(
            request, timeout=self._timeout, metadata=metadata))

    async def close(self) -> None:
        """Close the channel (and any retired by ``reconnect``)."""
        for channel in [*self._retired, *([self._channel] if self._channel else [])]:
            await channel.close()
        self._retired.clear()
        self._channel = None
