"""The agent's runtime event log: what the attester agent measured into a runtime register
(TDX RTMR3 today; the format is platform-neutral so a TPM PCR slots in later).

Format: UTF-8 JSON Lines, one event per line, each exactly
``{"mr": <int>, "kind": "image", "value": "sha256:<64 lowercase hex>"}`` (key order free, no
other keys). The 48 bytes extended into the register for an event are
``SHA-384("keybroker/v1/runtime-event" || 0x00 || kind || 0x00 || value)``: the digest is always
recomputed from the content, never carried, so an event cannot claim one image and extend
another.

Invariants enforced by ``parse_runtime_log``:
- at most ``MAX_LOG_BYTES`` bytes and ``MAX_EVENTS`` events, refused before parsing;
- every line is a JSON object with exactly the keys above, ``mr`` an integer in
  ``RUNTIME_REGISTERS``, ``kind`` in ``KINDS``, ``value`` well formed for its kind; a blank line
  or a missing final newline is refused (a torn append is never half-read);
Any violation raises ``Malformed``. ``encode_event`` is the exact inverse for one event.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from keybroker.errors import Malformed

MAX_LOG_BYTES = 256 * 1024
MAX_EVENTS = 1024
RUNTIME_REGISTERS = frozenset({3})
KIND_IMAGE = "image"
KINDS = frozenset({KIND_IMAGE})
DOMAIN = b"keybroker/v1/runtime-event"
_IMAGE_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_KEYS = frozenset({"mr", "kind", "value"})


@dataclass(frozen=True)
class RuntimeEvent:
    """One measured runtime event."""

    mr: int
    kind: str
    value: str

    @property
    def digest(self) -> bytes:
        """The 48 bytes extended into the register (SHA-384 of the domain-separated content)."""
        return hashlib.sha384(DOMAIN + b"\x00" + self.kind.encode() + b"\x00"
                              + self.value.encode()).digest()


def check_image_digest(value: str) -> str:
    """``value`` if it is ``sha256:<64 lowercase hex>``; else ``Malformed``."""
    if not _IMAGE_RE.fullmatch(value):
        raise Malformed("image digest is not sha256:<64 lowercase hex digits>",
                        rule="runtime_log.value", expected="sha256:<64 hex>",
                        actual=value[:80])
    return value


def image_event(value: str, mr: int = 3) -> RuntimeEvent:
    """The event for measuring container image ``value`` into register ``mr``."""
    if mr not in RUNTIME_REGISTERS:
        raise Malformed("runtime register not allowed", rule="runtime_log.mr",
                        expected=str(sorted(RUNTIME_REGISTERS)), actual=str(mr))
    return RuntimeEvent(mr=mr, kind=KIND_IMAGE, value=check_image_digest(value))


def encode_event(event: RuntimeEvent) -> bytes:
    """One log line (with its newline) for ``event``."""
    return (json.dumps({"mr": event.mr, "kind": event.kind, "value": event.value},
                       separators=(",", ":")) + "\n").encode()


def encode_log(events: Sequence[RuntimeEvent]) -> bytes:
    """A whole log."""
    return b"".join(encode_event(e) for e in events)


def _event(line: str, number: int) -> RuntimeEvent:
    try:
        doc = json.loads(line)
    except ValueError:
        raise Malformed(f"runtime log line {number} is not JSON", rule="runtime_log.syntax",
                        expected="one JSON object per line", actual=line[:80]) from None
    if not isinstance(doc, dict) or set(doc) != _KEYS:
        raise Malformed(f"runtime log line {number} has the wrong keys",
                        rule="runtime_log.schema", expected="mr, kind, value",
                        actual=", ".join(sorted(map(str, doc))) if isinstance(doc, dict)
                        else type(doc).__name__)
    mr, kind, value = doc["mr"], doc["kind"], doc["value"]
    if isinstance(mr, bool) or not isinstance(mr, int) or mr not in RUNTIME_REGISTERS:
        raise Malformed(f"runtime log line {number}: register not allowed",
                        rule="runtime_log.mr", expected=str(sorted(RUNTIME_REGISTERS)),
                        actual=repr(mr)[:40])
    if kind not in KINDS:
        raise Malformed(f"runtime log line {number}: unknown event kind",
                        rule="runtime_log.kind", expected=" | ".join(sorted(KINDS)),
                        actual=repr(kind)[:40])
    if not isinstance(value, str):
        raise Malformed(f"runtime log line {number}: value is not a string",
                        rule="runtime_log.value", expected="string", actual=repr(value)[:40])
    check_image_digest(value)
    return RuntimeEvent(mr=mr, kind=kind, value=value)


def parse_runtime_log(raw: bytes) -> tuple[RuntimeEvent, ...]:
    """Parse a runtime log strictly (see the module invariants); empty input is no events."""
    if len(raw) > MAX_LOG_BYTES:
        raise Malformed("runtime log too large", rule="runtime_log.size",
                        expected=f"<= {MAX_LOG_BYTES} bytes", actual=str(len(raw)))
    if not raw:
        return ()
    if not raw.endswith(b"\n"):
        raise Malformed("runtime log does not end with a newline (torn write?)",
                        rule="runtime_log.syntax", expected="newline-terminated lines",
                        actual=repr(raw[-20:]))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("runtime log is not UTF-8", rule="runtime_log.syntax",
                        expected="UTF-8 JSON Lines", actual="undecodable bytes") from None
    lines = text[:-1].split("\n")
    if len(lines) > MAX_EVENTS:
        raise Malformed("too many runtime events", rule="runtime_log.size",
                        expected=f"<= {MAX_EVENTS}", actual=str(len(lines)))
    return tuple(_event(line, i) for i, line in enumerate(lines, start=1))


def extend(register: bytes, event: RuntimeEvent) -> bytes:
    """``SHA-384(register || event.digest)``: what extending ``event`` does to a register."""
    return hashlib.sha384(register + event.digest).digest()
