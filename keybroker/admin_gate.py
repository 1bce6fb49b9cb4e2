"""The one path every admin RPC takes: authenticate, authorise, audit, then act.

Invariants:
- Order: principal from the channel (``keybroker.admin_auth``), role check, an ``admin`` audit
  record written durably, then the action; so nothing happens that is not on record. A refused
  call is recorded too (principal if known, category, reason), and an action that fails after
  it was allowed gets a second record with its category. The one exception is a read-only
  diagnostic (``Status``): when the audit sink itself is down it still answers an authorised
  caller (so an operator can see that), and the unrecorded call is logged at CRITICAL.
- Refusals travel as the category's gRPC status plus a Denial: identity failures without
  detail (an unknown caller learns nothing), every other error with rule, expected and actual
  (the caller is an authenticated administrator).
- Blocking work (SQLite, HSM) runs in a worker thread, never on the event loop; anything the
  action did not type is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from keybroker.admin_auth import Authenticator, CallContext, Principal
from keybroker.audit_log import AuditEntry, AuditLog
from keybroker.errors import KeybrokerError, Unavailable
from keybroker.rpc_errors import abort
from keybroker.server_limits import MAX_CONCURRENT_RPCS, server_options
from keybroker.tls import ServerTls

_log = logging.getLogger(__name__)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class _Call:
    request_id: str
    rpc: str
    target: str


class AdminGate:
    """Authentication, authorisation and audit for one admin service."""

    def __init__(self, service: str, auth: Authenticator, audit: AuditLog) -> None:
        self.service = service
        self.auth = auth
        self.audit = audit

    def _record(self, call: _Call, principal: str, outcome: str,
                error: KeybrokerError | None = None) -> None:
        reason = f"{self.service}.{call.rpc} {outcome}" + (f" {call.target}" if call.target
                                                           else "")
        if error is not None:
            reason += f": {error.detail}"
        self.audit.append(AuditEntry(request_id=call.request_id, kind="admin",
                                     category=error.category.value if error else "",
                                     reason=reason[:2000], principal=principal))

    async def call(self, context: Context, rpc: str, role: str,
                   work: Callable[[Principal], T], *, target: str = "",
                   diagnostic: bool = False) -> T:
        """Run ``work`` for the authenticated caller if it holds ``role`` (module invariants);
        ``diagnostic`` marks a read-only status call that still answers when the audit sink
        is down (the unrecorded call is logged at CRITICAL)."""
        request_id = str(uuid.uuid4())
        call = _Call(request_id, rpc, target)
        ctx: CallContext = context
        try:
            principal = self.auth.principal(ctx)
        except KeybrokerError as err:
            _log.warning("admin %s.%s refused (identity): %s", self.service, rpc, err.detail)
            await self._record_async(call, "", "refused", err)
            await abort(context, err, request_id, with_detail=False)
        try:
            self.auth.authorize(principal, role)
        except KeybrokerError as err:
            _log.warning("admin %s.%s refused for %s: %s", self.service, rpc, principal.name,
                         err.detail)
            await self._record_async(call, principal.name, "refused", err)
            await abort(context, err, request_id, with_detail=True)
        try:
            await self._record_async(call, principal.name, "allowed", None)
        except KeybrokerError as err:
            if not diagnostic:
                await abort(context, err, request_id, with_detail=True)
        try:
            return await asyncio.to_thread(work, principal)
        except KeybrokerError as err:
            failure = err
        except Exception as exc:
            _log.exception("admin %s.%s failed unexpectedly", self.service, rpc)
            failure = Unavailable("internal error", rule="admin.internal",
                                  actual=type(exc).__name__)
        await self._record_async(call, principal.name, "failed", failure)
        await abort(context, failure, request_id, with_detail=True)

    async def _record_async(self, call: _Call, principal: str, outcome: str,
                            error: KeybrokerError | None) -> None:
        try:
            await asyncio.to_thread(self._record, call, principal, outcome, error)
        except KeybrokerError as exc:  # nothing happens off the record
            _log.critical("admin audit record not written: %s", exc.detail)
            raise


async def start_admin_server(add: Callable[[grpc.aio.Server], None], listen: str,
                             tls: ServerTls) -> tuple[grpc.aio.Server, int]:
    """An admin gRPC server on ``listen`` over ``tls`` (mutual when it has a client CA)."""
    server = grpc.aio.server(options=server_options(4 << 20, 4 << 20),
                             maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
    add(server)
    try:
        port = server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {listen}", rule="config.admin_listen",
                          actual=str(exc)) from None
    if port == 0:
        raise Unavailable(f"cannot listen on {listen}", rule="config.admin_listen")
    await server.start()
    _log.info("%s admin API listening on %s (%s)", tls.what, listen,
              "mutual TLS" if tls.mutual else "TLS + bearer JWT")
    return server, port


def admin_enabled(service: str, listen: str, admins: Mapping[str, object], *,
                  plaintext: bool) -> bool:
    """Whether to start the admin API (logged when it is off and why)."""
    if not listen:
        return False
    if not admins:
        _log.warning("%s admin API disabled: no admin principal is configured (admins)",
                     service)
        return False
    if plaintext:
        _log.warning("%s admin API disabled: it needs TLS (--insecure-plaintext given)",
                     service)
        return False
    return True
