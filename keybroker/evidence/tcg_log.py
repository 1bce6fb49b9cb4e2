"""TCG PC Client crypto-agile binary event log (evidence-formats.md section 5.9), in construct.

Invariants enforced by ``parse_event_log``:
- at most ``MAX_LOG_SIZE`` bytes, refused before any parsing;
- the first record is a TCG_PCClientPCREvent of type EV_NO_ACTION with a zero SHA-1 digest
  whose data is exactly a ``Spec ID Event03`` structure: 1..``MAX_ALGORITHMS`` distinct
  algorithms, known algorithms with their standard digest size, others 1..64 bytes, uintnSize
  1 or 2, and nothing after the vendor info;
- every later record is a TCG_PCR_EVENT2 carrying 1..N digests of distinct algorithms from the
  Spec ID table, each of the table's size; a declared event size larger than the bytes left is
  refused before it is read; at most ``MAX_EVENTS`` records;
- the log ends at the end of the buffer, or at a record whose index or type is 0xFFFFFFFF
  followed only by 0xFF bytes, or where only zero bytes remain (log-area padding). Any other
  byte after the end marker is refused (nothing can hide behind the padding).
Any violation raises ``Malformed`` (only ``Malformed``, whatever the input bytes).
``build_event_log`` is the exact inverse (plus 0xFF padding up to ``pad_to``).
Digests are carried as recorded: nothing here proves that an event's data matches its digest.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, TypeVar

import construct as c

from keybroker.errors import Malformed

MAX_LOG_SIZE = 16 << 20
MAX_EVENTS = 65536
MAX_ALGORITHMS = 8
EV_NO_ACTION = 0x3
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_SM3_256 = 0x0012
KNOWN_DIGEST_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64,
                      ALG_SM3_256: 32}
# TCG algorithm ids of the hashes hashlib computes (event-log banks, TPM structures).
HASH_NAMES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384",
              ALG_SHA512: "sha512"}
_T = TypeVar("_T")
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
END_MARKER = 0xFFFF_FFFF

_PCR_EVENT = c.Struct(
    "pcr_index" / c.Int32ul,
    "event_type" / c.Int32ul,
    "digest" / c.Bytes(20),
    "data" / c.Prefixed(c.Int32ul, c.GreedyBytes),
)
_SPEC_ID_HEAD = c.Struct(
    "signature" / c.Bytes(16),
    "platform_class" / c.Int32ul,
    "spec_version_minor" / c.Int8ul,
    "spec_version_major" / c.Int8ul,
    "spec_errata" / c.Int8ul,
    "uintn_size" / c.Int8ul,
    "algorithm_count" / c.Int32ul,
)
_ALGORITHM = c.Struct("alg_id" / c.Int16ul, "digest_size" / c.Int16ul)
_SPEC_ID = c.Struct(
    "head" / _SPEC_ID_HEAD,
    "algorithms" / c.Array(c.this.head.algorithm_count, _ALGORITHM),
    "vendor_info" / c.Prefixed(c.Int8ul, c.GreedyBytes),
    c.Terminated,
)
_EVENT2_HEAD = c.Struct("index" / c.Int32ul, "event_type" / c.Int32ul, "digest_count" / c.Int32ul)
_EVENT_DATA = c.Prefixed(c.Int32ul, c.GreedyBytes)


@dataclass(frozen=True)
class DigestAlgorithm:
    """One entry of the Spec ID algorithm table."""

    alg_id: int
    digest_size: int


@dataclass(frozen=True)
class SpecIdEvent:
    """The Spec ID header event (``pcr_index`` as recorded; CCEL logs use 1, not 0)."""

    pcr_index: int
    platform_class: int
    spec_version_minor: int
    spec_version_major: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[DigestAlgorithm, ...]
    vendor_info: bytes


@dataclass(frozen=True)
class TcgEvent:
    """A TCG_PCR_EVENT2 record. ``index`` is the PCR index (CCEL: the CC MR index)."""

    index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes

    def digest(self, alg_id: int) -> bytes | None:
        """The recorded digest for ``alg_id``, or None if the event carries none."""
        for alg, value in self.digests:
            if alg == alg_id:
                return value
        return None


@dataclass(frozen=True)
class EventLog:
    """A parsed log; ``length`` is the byte length of the records (padding excluded)."""

    spec_id: SpecIdEvent
    events: tuple[TcgEvent, ...]
    length: int


def _read(stream: io.BytesIO, what: c.Construct[_T, Any], total: int, name: str) -> _T:
    try:
        value = what.parse_stream(stream)
    except c.ConstructError as exc:
        raise Malformed(f"event log truncated in {name}", expected="a complete record",
                        actual=f"{total - stream.tell()} bytes left") from exc
    return value


def _parse_spec_id(stream: io.BytesIO, total: int) -> SpecIdEvent:
    first = _read(stream, _PCR_EVENT, total, "the Spec ID event")
    if first.event_type != EV_NO_ACTION or any(first.digest):
        raise Malformed("first event is not an EV_NO_ACTION Spec ID event",
                        expected="type 3 with a zero digest",
                        actual=f"type {first.event_type:#x}")
    head = _read(io.BytesIO(first.data), _SPEC_ID_HEAD, len(first.data), "the Spec ID header")
    if head.signature != SPEC_ID_SIGNATURE:
        raise Malformed("not a crypto-agile event log", expected=repr(SPEC_ID_SIGNATURE),
                        actual=repr(bytes(head.signature)))
    if not 1 <= head.algorithm_count <= MAX_ALGORITHMS:
        raise Malformed("Spec ID algorithm count out of range", expected=f"1..{MAX_ALGORITHMS}",
                        actual=str(head.algorithm_count))
    if head.uintn_size not in (1, 2):
        raise Malformed("Spec ID uintnSize invalid", expected="1 or 2", actual=str(head.uintn_size))
    spec = _read(io.BytesIO(first.data), _SPEC_ID, len(first.data), "the Spec ID event data")
    algorithms = tuple(DigestAlgorithm(a.alg_id, a.digest_size) for a in spec.algorithms)
    if len({a.alg_id for a in algorithms}) != len(algorithms):
        raise Malformed("Spec ID lists an algorithm twice", expected="distinct algorithms",
                        actual=str([a.alg_id for a in algorithms]))
    for alg in algorithms:
        known = KNOWN_DIGEST_SIZES.get(alg.alg_id)
        if (known is not None and alg.digest_size != known) or not 1 <= alg.digest_size <= 64:
            raise Malformed("Spec ID digest size is wrong for its algorithm",
                            expected=str(known or "1..64"),
                            actual=f"alg {alg.alg_id:#06x} size {alg.digest_size}")
    return SpecIdEvent(
        pcr_index=first.pcr_index, platform_class=head.platform_class,
        spec_version_minor=head.spec_version_minor, spec_version_major=head.spec_version_major,
        spec_errata=head.spec_errata, uintn_size=head.uintn_size, algorithms=algorithms,
        vendor_info=spec.vendor_info,
    )


def _parse_event(stream: io.BytesIO, total: int, sizes: dict[int, int]) -> TcgEvent:
    head = _read(stream, _EVENT2_HEAD, total, "an event header")
    if not 1 <= head.digest_count <= len(sizes):
        raise Malformed("event digest count out of range", expected=f"1..{len(sizes)}",
                        actual=str(head.digest_count))
    digests: list[tuple[int, bytes]] = []
    for _ in range(head.digest_count):
        alg = _read(stream, c.Int16ul, total, "a digest algorithm")
        if alg not in sizes or any(alg == seen for seen, _d in digests):
            raise Malformed("event digest algorithm not in the Spec ID table or repeated",
                            expected=str(sorted(sizes)), actual=f"{alg:#06x}")
        digests.append((alg, _read(stream, c.Bytes(sizes[alg]), total, "a digest")))
    declared = _read(stream, c.Int32ul, total, "an event size")
    if declared > total - stream.tell():
        raise Malformed("event size exceeds the log", expected=f"<= {total - stream.tell()}",
                        actual=str(declared))
    data: bytes = _read(stream, c.Bytes(declared), total, "event data")
    return TcgEvent(head.index, head.event_type, tuple(digests), data)


def _at_end(raw: bytes, stream: io.BytesIO) -> bool:
    """True at a padding marker or where only zero bytes remain; refuses data after a marker."""
    pos = stream.tell()
    if pos == len(raw):
        return True
    rest = memoryview(raw)[pos:]
    if rest[0] == 0 and not any(rest):
        return True
    marker = len(rest) < 8 or END_MARKER in (c.Int32ul.parse(rest[:4]), c.Int32ul.parse(rest[4:8]))
    if not marker:
        return False
    if rest.tobytes().strip(b"\xff"):
        raise Malformed("data after the end-of-log padding", expected="only 0xFF bytes",
                        actual=f"{len(rest)} bytes with other values")
    return True


def parse_event_log(raw: bytes) -> EventLog:
    """Parse a crypto-agile TCG event log (or a CCEL log area); raises only ``Malformed``."""
    if len(raw) > MAX_LOG_SIZE:
        raise Malformed("event log too large", rule="eventlog.max_size",
                        expected=f"<= {MAX_LOG_SIZE} bytes", actual=f"{len(raw)} bytes")
    raw = bytes(raw)
    stream = io.BytesIO(raw)
    spec_id = _parse_spec_id(stream, len(raw))
    sizes = {a.alg_id: a.digest_size for a in spec_id.algorithms}
    events: list[TcgEvent] = []
    while not _at_end(raw, stream):
        if len(events) >= MAX_EVENTS:
            raise Malformed("too many events", expected=f"<= {MAX_EVENTS}", actual="more")
        events.append(_parse_event(stream, len(raw), sizes))
    return EventLog(spec_id, tuple(events), stream.tell())


def build_event_log(log: EventLog, *, pad_to: int = 0) -> bytes:
    """Serialize ``log``, then pad with 0xFF up to ``pad_to`` bytes (a CCEL log area)."""
    spec = log.spec_id
    try:
        spec_data = _SPEC_ID.build({
            "head": {
                "signature": SPEC_ID_SIGNATURE, "platform_class": spec.platform_class,
                "spec_version_minor": spec.spec_version_minor,
                "spec_version_major": spec.spec_version_major, "spec_errata": spec.spec_errata,
                "uintn_size": spec.uintn_size, "algorithm_count": len(spec.algorithms),
            },
            "algorithms": [{"alg_id": a.alg_id, "digest_size": a.digest_size}
                           for a in spec.algorithms],
            "vendor_info": spec.vendor_info,
        })
        parts = [_PCR_EVENT.build({"pcr_index": spec.pcr_index, "event_type": EV_NO_ACTION,
                                   "digest": bytes(20), "data": spec_data})]
        for ev in log.events:
            parts.append(_EVENT2_HEAD.build({"index": ev.index, "event_type": ev.event_type,
                                             "digest_count": len(ev.digests)}))
            parts.extend(c.Int16ul.build(alg) + value for alg, value in ev.digests)
            parts.append(_EVENT_DATA.build(ev.data))
    except (c.ConstructError, OverflowError, TypeError) as exc:
        raise Malformed(f"cannot build event log: {exc}") from exc
    out = b"".join(parts)
    return out + b"\xff" * max(0, pad_to - len(out))
