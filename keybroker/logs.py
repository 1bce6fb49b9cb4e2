"""Process logging: JSON lines for machines, a short text form for terminals, and the request
id of the request being served in every line.

Invariants:
- ``configure`` is the only place that installs a handler, and only when the process has
  none yet (as ``logging.basicConfig``); importing this module changes nothing.
- The request id lives in a ``ContextVar`` (``request_scope``), so it follows asyncio tasks
  and never leaks from one request into another; a line logged outside a request has none.
- JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
  ``request_id`` when there is one, and ``error`` (type and text) for exceptions. Nothing here
  adds request payloads: callers log identifiers, categories and digests, never secrets,
  keys, tokens or evidence bytes.
- Third-party libraries that log at INFO what only a developer needs (the CEL library prints
  every compiled expression) are held at WARNING unless the level is DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NOISY_LIBRARIES = ("celpy",)
REQUEST_ID_METADATA = "x-request-id"  # gRPC metadata key carrying the request id between services

_request_id: ContextVar[str] = ContextVar("keybroker_request_id", default="")


def current_request_id() -> str:
    """The request id of the request being served in this context ("" outside one)."""
    return _request_id.get()


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Every line logged inside the block (and in tasks it starts) names ``request_id``."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id:
            line["request_id"] = request_id
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["error"] = f"{type(exc).__name__}: {exc}"
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message [request id]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = _request_id.get()
        return f"{text} [{request_id}]" if request_id else text


def configure(level: str, log_format: LogFormat = "auto", stream: TextIO | None = None, *,
              logger: logging.Logger | None = None) -> None:
    """Install one stderr handler at ``level`` on ``logger`` (default: the root): JSON lines
    unless ``log_format`` is "text" or "auto" with a terminal attached."""
    out = stream if stream is not None else sys.stderr
    use_text = log_format == "text" or (log_format == "auto" and _is_terminal(out))
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter() if use_text else JsonFormatter())
    root = logger if logger is not None else logging.getLogger()
    if not root.handlers:  # like logging.basicConfig: a host that set up logging keeps it
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
