"""Category <-> gRPC status mapping, carried across a real loopback RPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from keybroker.errors import Category, KeybrokerError, error_for
from keybroker.rpc_errors import STATUS_FOR, abort, error_from_rpc
from keybroker.v1 import verifier_pb2, verifier_pb2_grpc


class _Refusing(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, category: Category) -> None:
        self.category = category

    async def Appraise(
        self, request: verifier_pb2.AppraiseRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> verifier_pb2.AppraiseResponse:
        err = error_for(self.category, "refused", rule="r", expected="e", actual="a")
        await abort(context, err, request.request_id, with_detail=True)


async def _call(category: Category) -> tuple[grpc.StatusCode, KeybrokerError]:
    server = grpc.aio.server()
    verifier_pb2_grpc.add_VerifierServicer_to_server(_Refusing(category), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = verifier_pb2_grpc.VerifierStub(channel)
            try:
                await stub.Appraise(verifier_pb2.AppraiseRequest(request_id="rid"))
            except grpc.aio.AioRpcError as exc:
                return exc.code(), error_from_rpc(exc, "verifier")
    finally:
        await server.stop(None)
    raise AssertionError("call succeeded")


@pytest.mark.parametrize("category", list(Category))
def test_category_survives_the_wire(category: Category) -> None:
    """Every category arrives with its status code and its rule/expected/actual detail."""
    code, err = asyncio.run(_call(category))
    assert code == STATUS_FOR[category]
    assert err.category is category
    assert (err.reason, err.rule, err.expected, err.actual) == ("refused", "r", "e", "a")


def test_no_server_is_unavailable() -> None:
    """A call to an address where nothing listens is UNAVAILABLE, not a verdict."""
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Appraise(verifier_pb2.AppraiseRequest(), timeout=2)
    assert error_from_rpc(exc.value, "verifier").category is Category.UNAVAILABLE
