"""The broker's client of the verifiers (keybroker.v1.Verifier): appraisals and TPM AK
enrolment, over mutual TLS with a deadline on every call, to one or several verifier replicas.

Invariants:
- A failure that carries a verifier Denial keeps its category (``error_from_rpc``); any other
  failure (refused, deadline, closed channel) is UNAVAILABLE.
- Failover: each call goes to the next healthy replica (round robin); an UNAVAILABLE answer
  marks that replica unhealthy and the same call goes to the next one, each replica at most
  once per call, each attempt with its own deadline. Any other denial is the verdict and is
  never retried elsewhere. Appraisal has no side effect the broker relies on, so asking a
  second replica is safe; the broker's challenge was consumed once, before the first try.
- Health: ``probe`` checks every replica; it fails only when none is SERVING. A replica
  marked unhealthy is still tried last, and becomes healthy again at its next good probe or
  answer.
- One channel per replica, created lazily on the serving event loop; ``reconnect`` re-reads
  the client certificate and retires the old channels, which ``close`` closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
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


class _Replica:
    """One verifier replica: its channel and its last known health."""

    def __init__(self, target: str, credentials: Callable[[], grpc.ChannelCredentials] | None,
                 options: list[tuple[str, str]]) -> None:
        self.target = target
        self.healthy = True
        self._credentials = credentials
        self._options = options
        self._channel: grpc.aio.Channel | None = None
        self.retired: list[grpc.aio.Channel] = []

    def channel(self) -> grpc.aio.Channel:
        # Created lazily so the channel belongs to the event loop that serves requests.
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials(),
                                                        options=self._options)
        return self._channel

    def stub(self) -> verifier_pb2_grpc.VerifierAsyncStub:
        return verifier_pb2_grpc.VerifierStub(self.channel())

    def retire(self) -> None:
        if self._channel is not None:
            self.retired.append(self._channel)
            self._channel = None

    async def probe(self, timeout: float) -> None:
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel()).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            self.healthy = False
            raise Unavailable(f"verifier {self.target} unreachable", rule="health.verifier",
                              actual=f"{exc.code().name}: {exc.details() or ''}"[:200]
                              ) from None
        self.healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
        if not self.healthy:
            raise Unavailable(f"verifier {self.target} is not serving", rule="health.verifier",
                              actual=health_pb2.HealthCheckResponse.ServingStatus.Name(
                                  reply.status))

    async def close(self) -> None:
        self.retire()
        for channel in self.retired:
            await channel.close()
        self.retired.clear()


class GrpcAppraiser:
    """The keybroker.v1.Verifier service of one or more replicas over gRPC (mutual TLS unless
    ``credentials`` is None, the insecure plaintext mode), with a deadline on every call."""

    def __init__(self, targets: str | Sequence[str], *, timeout_seconds: float,
                 credentials: Callable[[], grpc.ChannelCredentials] | None = None,
                 server_name: str = "") -> None:
        names = (targets,) if isinstance(targets, str) else tuple(targets)
        if not names:
            raise ValueError("at least one verifier")
        self.target = ",".join(names)
        self._timeout = timeout_seconds
        self._credentials = credentials
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.replicas = tuple(_Replica(name, credentials, options) for name in names)
        self._next = 0
        self.failovers = 0  # calls answered by another replica after an UNAVAILABLE one
        self.tracing = Tracing()  # the server's, once started

    def _order(self) -> list[_Replica]:
        """Healthy replicas first, starting at the next in turn; unhealthy ones last."""
        start = self._next % len(self.replicas)
        self._next += 1
        turn = [*self.replicas[start:], *self.replicas[:start]]
        return [r for r in turn if r.healthy] + [r for r in turn if not r.healthy]

    async def probe(self, timeout: float = 2.0) -> None:
        """Health probe of every replica: ``Unavailable`` only when none is SERVING (the first
        failure names it); a partial outage is logged."""
        results = await asyncio.gather(*(r.probe(timeout) for r in self.replicas),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == len(self.replicas):
            first = failures[0]
            raise first if isinstance(first, Unavailable) else Unavailable(
                "verifiers unreachable", rule="health.verifier", actual=repr(first)[:200])
        for failure in failures:
            _log.warning("verifier replica down (others serve): %s", failure)

    def reconnect(self) -> None:
        """Re-read the client certificate: the next calls open new channels (old ones are
        closed at ``close``, letting calls in flight finish). A bad file keeps the old ones."""
        if self._credentials is None:
            return
        try:
            self._credentials()
        except KeybrokerError as exc:
            _log.error("verifier client certificate not reloaded: %s", exc.detail)
            return
        for replica in self.replicas:
            replica.retire()

    async def _call(self, call: Callable[[verifier_pb2_grpc.VerifierAsyncStub],
                                         Awaitable[_M]]) -> _M:
        """``call`` on the replicas in turn until one answers or denies (module docstring)."""
        last: KeybrokerError | None = None
        for attempt, replica in enumerate(self._order()):
            try:
                result = await call(replica.stub())
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc(exc, "verifier")
            except (grpc.RpcError, OSError) as exc:
                error = Unavailable("verifier unavailable", actual=type(exc).__name__)
            else:
                replica.healthy = True
                if attempt:
                    self.failovers += 1
                return result
            if not isinstance(error, Unavailable):
                raise error
            replica.healthy = False
            last = error
            if len(self.replicas) > 1:
                _log.warning("verifier %s unavailable (%s); trying the next replica",
                             replica.target, error.detail)
        assert last is not None
        raise last

    async def appraise(self, request: verifier_pb2.AppraiseRequest) -> str:
        """Call Appraise; failures without a Denial (refused, deadline) are Unavailable."""
        with self.tracing.span("keybroker.v1.Verifier/Appraise", kind="client"):
            # Inside the client span: the verifier's span is its child.
            metadata = ((REQUEST_ID_METADATA, request.request_id), *self.tracing.outgoing())
            response = await self._call(lambda stub: stub.Appraise(
                request, timeout=self._timeout, metadata=metadata))
        return response.result_token

    async def enrol_tpm(self, request: evidence_pb2.EnrolTpmRequest
                        ) -> evidence_pb2.EnrolTpmChallenge:
        """Forward TPM enrolment step 1 to the verifier (typed errors as for ``appraise``)."""
        metadata = ((REQUEST_ID_METADATA, request.request_id),)
        return await self._call(lambda stub: stub.EnrolTpm(
            request, timeout=self._timeout, metadata=metadata))

    async def activate_tpm(self, request: evidence_pb2.ActivateTpmRequest
                           ) -> evidence_pb2.TpmEnrolment:
        """Forward TPM enrolment step 2 to the verifier (typed errors as for ``appraise``)."""
        metadata = ((REQUEST_ID_METADATA, request.request_id),)
        return await self._call(lambda stub: stub.ActivateTpm(
            request, timeout=self._timeout, metadata=metadata))

    async def close(self) -> None:
        """Close every channel (and any retired by ``reconnect``)."""
        for replica in self.replicas:
            await replica.close()
