"""keybroker.logs: JSON lines unless a terminal is attached, the request id in every line
logged inside a request scope (and only there), third-party noise held back."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from keybroker.logs import (
    JsonFormatter,
    TextFormatter,
    configure,
    current_request_id,
    request_scope,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def bare_root() -> Iterator[logging.Logger]:
    """A logger tree of its own standing in for a fresh process's root (the test runner's
    capture handlers sit on the real root)."""
    root = logging.getLogger(f"kbtest{uuid.uuid4().hex}")  # propagating: pytest leaves it bare
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        logging.getLogger("celpy").setLevel(logging.NOTSET)


def test_json_lines_when_not_a_terminal(bare_root: logging.Logger) -> None:
    stream = io.StringIO()
    configure("INFO", "auto", stream, logger=bare_root)
    log = bare_root.getChild("test")
    log.info("outside")
    with request_scope("req-1"):
        log.warning("inside %s", "a request")
    log.debug("below the level")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "outside" and "request_id" not in first
    assert (second["level"], second["logger"], second["message"], second["request_id"]) == (
        "WARNING", f"{bare_root.name}.test", "inside a request", "req-1")
    assert second["time"].endswith("Z")


def test_text_on_a_terminal(bare_root: logging.Logger) -> None:
    stream = Terminal()
    configure("INFO", "auto", stream, logger=bare_root)
    with request_scope("req-2"):
        bare_root.getChild("test").info("hello")
    line = stream.getvalue().strip()
    assert line.endswith(f"INFO {bare_root.name}.test: hello [req-2]")
    assert not line.startswith("{")
    assert isinstance(bare_root.handlers[0].formatter, TextFormatter)


def test_explicit_format_wins_and_noise_is_debug_only(bare_root: logging.Logger) -> None:
    configure("INFO", "json", Terminal(), logger=bare_root)
    assert isinstance(bare_root.handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("celpy").level == logging.WARNING
    for handler in list(bare_root.handlers):
        bare_root.removeHandler(handler)
    configure("DEBUG", "text", io.StringIO(), logger=bare_root)
    assert logging.getLogger("celpy").level == logging.DEBUG


def test_existing_handlers_are_kept(bare_root: logging.Logger) -> None:
    """A host that set up logging (a test runner, an embedding program) keeps its handlers."""
    mine = logging.StreamHandler(io.StringIO())
    bare_root.addHandler(mine)
    configure("INFO", "json", io.StringIO(), logger=bare_root)
    assert bare_root.handlers == [mine]


def test_request_scope_follows_tasks_and_does_not_leak() -> None:
    async def one(rid: str) -> tuple[str, str]:
        with request_scope(rid):
            await asyncio.sleep(0)
            inner = await asyncio.create_task(asyncio.sleep(0, result=current_request_id()))
            return current_request_id(), inner

    async def both() -> list[tuple[str, str]]:
        return list(await asyncio.gather(one("a"), one("b")))

    assert asyncio.run(both()) == [("a", "a"), ("b", "b")]
    assert current_request_id() == ""


def test_exceptions_are_one_json_line(bare_root: logging.Logger) -> None:
    stream = io.StringIO()
    configure("INFO", "json", stream, logger=bare_root)
    try:
        raise ValueError("boom")
    except ValueError:
        bare_root.getChild("test").exception("failed")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["error"] == "ValueError: boom" and "Traceback" in record["traceback"]
