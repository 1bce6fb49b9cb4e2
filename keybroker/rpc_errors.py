"""The one place where error categories meet gRPC status codes (architecture section 7).

Invariants:
- Each category maps to exactly one status code (``STATUS_FOR``); the one refinement is
  ``Exhausted`` (category UNAVAILABLE), sent as RESOURCE_EXHAUSTED.
- A rejection travels as that status code plus a serialized ``keybroker.v1.Denial`` in the
  binary trailing metadata entry ``keybroker-denial-bin``; ``error_from_rpc`` turns it back
  into the typed error on the client side.
- An RPC failure without a Denial (connection refused, deadline, crash) is UNAVAILABLE:
  never a release.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from keybroker.errors import Category, Exhausted, KeybrokerError, Unavailable, error_for
from keybroker.v1 import errors_pb2

DENIAL_KEY = "keybroker-denial-bin"

STATUS_FOR: dict[Category, grpc.StatusCode] = {
    Category.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Category.SIG_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    Category.CHAIN_UNTRUSTED: grpc.StatusCode.PERMISSION_DENIED,
    Category.COLLATERAL_STALE: grpc.StatusCode.UNAVAILABLE,
    Category.PLATFORM_POLICY: grpc.StatusCode.PERMISSION_DENIED,
    Category.TCB_POLICY: grpc.StatusCode.PERMISSION_DENIED,
    Category.MEASUREMENT: grpc.StatusCode.PERMISSION_DENIED,
    Category.EVENT_LOG: grpc.StatusCode.PERMISSION_DENIED,
    Category.FRESHNESS: grpc.StatusCode.FAILED_PRECONDITION,
    Category.BINDING: grpc.StatusCode.PERMISSION_DENIED,
    Category.TOKEN_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    Category.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

_PROTO_FOR = {
    cat: errors_pb2.ErrorCategory.Value(f"ERROR_CATEGORY_{cat.value}") for cat in Category
}
_CATEGORY_FOR = {v: k for k, v in _PROTO_FOR.items()}


def to_denial(err: KeybrokerError, request_id: str, *, with_detail: bool) -> errors_pb2.Denial:
    """The Denial message for ``err``; rule/expected/actual only when ``with_detail``."""
    denial = errors_pb2.Denial(
        category=_PROTO_FOR[err.category], message=err.safe_message, request_id=request_id
    )
    if with_detail:
        denial.rule = err.rule
        denial.expected = err.expected
        denial.actual = err.actual
        denial.message = f"{err.category.value}: {err.reason}"
    return denial


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    err: KeybrokerError,
    request_id: str,
    *,
    with_detail: bool = False,
) -> NoReturn:
    """Abort the current RPC with the status code and Denial for ``err``."""
    denial = to_denial(err, request_id, with_detail=with_detail)
    context.set_trailing_metadata(((DENIAL_KEY, denial.SerializeToString()),))
    status = (grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(err, Exhausted)
              else STATUS_FOR[err.category])
    await context.abort(status, denial.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def denial_from_rpc(exc: grpc.RpcError) -> errors_pb2.Denial | None:
    """The Denial carried by a failed call, if any."""
    trailing: tuple[tuple[str, str | bytes], ...] = (
        tuple(exc.trailing_metadata() or ())
        if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else ()
    )
    for key, value in trailing:
        if key == DENIAL_KEY and isinstance(value, bytes):
            denial = errors_pb2.Denial()
            denial.ParseFromString(value)
            return denial
    return None


def error_from_rpc(exc: grpc.RpcError, peer: str) -> KeybrokerError:
    """Typed error for a failed call: the peer's Denial, or UNAVAILABLE when there is none."""
    denial = denial_from_rpc(exc)
    if denial is None or denial.category not in _CATEGORY_FOR:
        code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
        return Unavailable(f"{peer} unavailable", actual=str(code))
    category = _CATEGORY_FOR[denial.category]
    reason = denial.message.split(": ", 1)[-1]
    return error_for(category, reason, rule=denial.rule, expected=denial.expected,
                     actual=denial.actual)


def metadata_value(context: grpc.aio.ServicerContext[object, object], key: str) -> str:
    """The caller's text metadata ``key`` ("" if absent or binary)."""
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return ""
