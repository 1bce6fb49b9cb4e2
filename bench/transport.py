"""The transport floor of a release (imported as ``transport`` from ``bench/``).

What the services' gRPC stack costs on its own, measured with the release's connection
pattern and message sizes but no work behind the calls: a "broker" process and a "verifier"
process, each a bare ``grpc.aio`` server with generic byte handlers (no protobuf, no
interceptors, no store, no crypto beyond TLS, which uses the services' own credentials), and
agent processes that each open a new channel per release (a mutual-TLS handshake unless
plaintext), call GetChallenge and ReleaseKey on it,
while the broker forwards each ReleaseKey to the verifier over one long-lived channel (mutual
TLS as ``broker-client``). The server CPU per release of that pair is what any Python gRPC
service with this protocol pays before doing anything; ``bench/release.py`` prints it beside
the cryptographic floor.

Sizes: GetChallenge 64 B in / 128 B out; ReleaseKey and Appraise 6 KiB in (an SNP report with
its certificate table, the init-data and the agent key); Appraise 3 KiB out (the result token);
ReleaseKey 512 B out (one sealed key).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import grpc
from timing import cpu_seconds

from keybroker.tls import ServerTls, TlsFiles, client_credentials
from keybroker_cli.launcher import free_port
from keybroker_cli.tls_cmd import DEFAULT_CLIENTS, TlsDir, init_tls

CHALLENGE_IN, CHALLENGE_OUT = 64, 128
RELEASE_IN, RELEASE_OUT = 6144, 512
TOKEN_OUT = 3072


def _same(data: bytes) -> bytes:
    return data


def _serve(role: str, port: int, upstream: int, tls: str) -> None:
    """One bare server process (``role`` broker forwards ReleaseKey to ``upstream``)."""
    async def main() -> None:
        server = grpc.aio.server()
        call = None
        if upstream:
            target = f"127.0.0.1:{upstream}"
            if tls:
                files = TlsDir(Path(tls))
                channel = grpc.aio.secure_channel(target, client_credentials(
                    files.ca, files.cert("broker-client"), files.key("broker-client")))
            else:
                channel = grpc.aio.insecure_channel(target)
            call = channel.unary_unary("/floor.Verifier/Appraise", request_serializer=_same,
                                       response_deserializer=_same)

        async def challenge(request: bytes, context: object) -> bytes:
            return b"c" * CHALLENGE_OUT

        async def release(request: bytes, context: object) -> bytes:
            assert call is not None
            await call(request)
            return b"k" * RELEASE_OUT

        async def appraise(request: bytes, context: object) -> bytes:
            return b"t" * TOKEN_OUT

        methods = ({"GetChallenge": challenge, "ReleaseKey": release} if role == "broker"
                   else {"Appraise": appraise})
        service = "floor.Broker" if role == "broker" else "floor.Verifier"
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {
            name: grpc.unary_unary_rpc_method_handler(fn, _same, _same)
            for name, fn in methods.items()})])
        if tls:  # the services' own credentials (mutual TLS, certificate rotation)
            files = TlsDir(Path(tls))
            server.add_secure_port(f"127.0.0.1:{port}", ServerTls(
                TlsFiles(files.cert(role), files.key(role), files.ca), what=role).credentials())
        else:
            server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def _agent(args: tuple[int, float, str, str]) -> int:
    """Releases (new channel each) until the deadline; returns how many."""
    port, deadline, tls, agent = args
    target = f"127.0.0.1:{port}"
    credentials = None
    if tls:
        files = TlsDir(Path(tls))
        credentials = client_credentials(files.ca, files.cert(agent), files.key(agent))
    count = 0
    while time.time() < deadline:
        channel = (grpc.secure_channel(target, credentials) if credentials
                   else grpc.insecure_channel(target))
        with channel:
            channel.unary_unary("/floor.Broker/GetChallenge", request_serializer=_same,
                                response_deserializer=_same)(b"g" * CHALLENGE_IN, timeout=10)
            channel.unary_unary("/floor.Broker/ReleaseKey", request_serializer=_same,
                                response_deserializer=_same)(b"r" * RELEASE_IN, timeout=10)
        count += 1
    return count


def transport_floor(*, agents: int, seconds: float, tls_dir: Path | None,
                    agent_name: str) -> dict[str, float]:
    """Server CPU seconds per release of the bare pair: {"broker", "verifier", "per_s"}."""
    ctx = mp.get_context("spawn")
    tls = str(tls_dir) if tls_dir is not None else ""
    verifier_port, broker_port = free_port(), free_port()
    verifier = ctx.Process(target=_serve, args=("verifier", verifier_port, 0, tls), daemon=True)
    verifier.start()
    broker = ctx.Process(target=_serve, args=("broker", broker_port, verifier_port, tls),
                         daemon=True)
    broker.start()
    try:
        ready = time.time() + 30
        while True:  # the warm-up doubles as the readiness wait
            try:
                _agent((broker_port, time.time() + 1.0, tls, agent_name))
                break
            except grpc.RpcError:
                if time.time() > ready:
                    raise
                time.sleep(0.2)
        assert verifier.pid is not None and broker.pid is not None
        v0, b0 = cpu_seconds(verifier.pid), cpu_seconds(broker.pid)
        start = time.perf_counter()
        deadline = time.time() + seconds
        with ctx.Pool(agents) as pool:
            count = sum(pool.map(_agent, [(broker_port, deadline, tls, agent_name)] * agents))
        wall = time.perf_counter() - start
        v_cpu, b_cpu = cpu_seconds(verifier.pid) - v0, cpu_seconds(broker.pid) - b0
    finally:
        broker.kill()
        verifier.kill()
        broker.join()
        verifier.join()
    return {"broker": b_cpu / count, "verifier": v_cpu / count, "per_s": count / wall}


def throwaway_tls(agent_name: str) -> Path:
    """A fresh CA with the broker, verifier, broker-client and ``agent_name`` certificates
    (the ``keybroker tls init`` layout), in a new temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="keybroker-transport-"))
    init_tls(root, clients=(*DEFAULT_CLIENTS, agent_name))
    return root
