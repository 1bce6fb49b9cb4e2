"""A local HTTP server playing Azure's instance metadata service on loopback: THIM's VCEK
answer and the TD quote endpoint, or a chosen failure (status, body, delay)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    """What the server answers: ``body(request_body)`` with ``status`` after ``delay`` s."""

    body: Callable[[bytes], bytes]
    status: int = 200
    delay: float = 0.0


@dataclass
class FakeImds:
    """Answers per path, and the requests seen (method, path, headers, body)."""

    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


def json_answer(doc: object) -> Callable[[bytes], bytes]:
    return lambda _body: json.dumps(doc).encode()


@contextmanager
def imds_server() -> Iterator[FakeImds]:
    """A running server (``url``); stopped on exit."""
    state = FakeImds()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append((self.command, self.path, dict(self.headers), body))
            answer = state.answers.get(self.path)
            if answer is None:
                self.send_error(404)
                return
            time.sleep(answer.delay)
            payload = answer.body(body)
            with suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up
                self.send_response(answer.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
