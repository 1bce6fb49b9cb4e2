"""Bounds every keybroker gRPC server applies, so load and slow clients cannot queue work
without limit (hostile-evidence section 2, "Overload / slowloris").

Invariants:
- At most ``MAX_CONCURRENT_RPCS`` calls run or wait in one server; the next is refused at
  once with RESOURCE_EXHAUSTED by gRPC itself (no queue grows behind it).
- A connection must finish its TLS handshake within ``HANDSHAKE_TIMEOUT_MS``; one that does
  not (a slowloris client) is closed without holding a call slot.
- Request sizes are bounded per service (``max_request_bytes``), checked by gRPC before any
  parsing.
"""

from __future__ import annotations

MAX_CONCURRENT_RPCS = 512
HANDSHAKE_TIMEOUT_MS = 5_000


def server_options(max_receive: int, max_send: int) -> list[tuple[str, int]]:
    """The channel arguments of a keybroker gRPC server."""
    return [("grpc.max_receive_message_length", max_receive),
            ("grpc.max_send_message_length", max_send),
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
            ("grpc.so_reuseport", 0)]
