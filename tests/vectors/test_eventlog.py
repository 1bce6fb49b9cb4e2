"""TCG crypto-agile / CCEL event logs: the real logs parse, rebuild and replay to the quoted or
published RTMRs; hostile rows 5 (oversize), 47 (tampered) and 49 (NO_ACTION / coverage)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import VECTORS

from keybroker.errors import Category, EventLogMismatch, KeybrokerError, Malformed
from keybroker.evidence.ccel import (
    CCEL_TABLE_SIZE,
    build_ccel_table,
    parse_ccel_log,
    parse_ccel_table,
)
from keybroker.evidence.dcap_quote import parse_tdx_quote
from keybroker.evidence.tcg_log import (
    ALG_SHA256,
    ALG_SHA384,
    EV_NO_ACTION,
    MAX_LOG_SIZE,
    DigestAlgorithm,
    EventLog,
    SpecIdEvent,
    TcgEvent,
    build_event_log,
    parse_event_log,
)
from verifier.eventlog.rtmr import check_rtmrs, replay_rtmrs, rtmr_events

README = (VECTORS / "README.md").read_text()
CLOUD_DIR = VECTORS / "tdx/gotdx-gce-spr-v4-ccel"
LOGS = ["CCEL_data_ovmf", "CCEL_data_grub", "CCEL_data_grub_gke", "CCEL_AAEL_alibabacloud"]
EV_EFI_ACTION = 0x80000007


def cloud_log() -> tuple[bytes, EventLog, tuple[bytes, ...]]:
    """The cloud CCEL log area, its parse and the RTMRs of the quote taken on that TD."""
    raw = (CLOUD_DIR / "ccel_data.dat").read_bytes()
    table = parse_ccel_table((CLOUD_DIR / "ccel_table.dat").read_bytes())
    quote = parse_tdx_quote((CLOUD_DIR / "cos-113-tdx-quote.dat").read_bytes())
    return raw, parse_ccel_log(raw, table), quote.td_report.rtmrs


def readme_rtmrs(name: str) -> list[bytes]:
    """The 'replayed RTMR0..3 = a, b, c, d' values of a ccel-eventlogs README entry."""
    section = README.split(f"#### `tdx/ccel-eventlogs/{name}`", 1)[1].split("\n#### ", 1)[0]
    match = re.search(r"replayed RTMR0\.\.3 = ([0-9a-f, ]+);", section)
    assert match is not None
    return [bytes.fromhex(v) for v in match.group(1).split(", ")]


def mismatch(events: tuple[TcgEvent, ...], quoted: tuple[bytes, ...]) -> EventLogMismatch:
    """Run check_rtmrs and return the EventLogMismatch it must raise."""
    with pytest.raises(EventLogMismatch) as exc:
        check_rtmrs(events, quoted)
    assert exc.value.category is Category.EVENT_LOG
    return exc.value


def test_cloud_ccel_replays_to_the_quote_rtmrs() -> None:
    """The cloud TD CCEL replays to RTMR0-3 of the quote from the same TD."""
    raw, log, quoted = cloud_log()
    table = parse_ccel_table((CLOUD_DIR / "ccel_table.dat").read_bytes())
    assert table.cc_type == 2
    assert table.laml == len(raw) == 0x40000
    assert len(log.events) == 43
    assert log.length == 18101
    replayed = check_rtmrs(log.events, quoted)
    assert replay_rtmrs(log.events) == list(quoted)
    assert len(replayed) == sum(1 for e in log.events if e.event_type != EV_NO_ACTION)
    assert {e.rtmr for e in replayed} == {0, 1, 2}
    assert all(e.rtmr == e.mr_index - 1 and len(e.digest) == 48 for e in replayed)


@pytest.mark.parametrize("name", LOGS)
def test_ccel_logs_match_published_parse_and_replay(name: str) -> None:
    """Each ccel-eventlogs file parses to its *_out.json records and replays to the README."""
    raw = (VECTORS / "tdx/ccel-eventlogs" / name).read_bytes()
    log = parse_ccel_log(raw)
    published = json.loads((VECTORS / f"tdx/ccel-eventlogs/{name}_out.json").read_text())
    records = published["uefi_event_logs"]
    assert len(log.events) == len(records)
    for ev, rec in zip(log.events, records, strict=True):
        assert ev.index == rec["index"]
        assert ev.data == base64.b64decode(rec["event"])
        assert ev.digest(ALG_SHA384) == bytes.fromhex(rec["digests"][0]["digest"])
        assert (ev.event_type == EV_NO_ACTION) == (rec["type_name"] == "EV_NO_ACTION")
    assert log.spec_id.algorithms == (DigestAlgorithm(ALG_SHA384, 48),)
    assert replay_rtmrs(log.events) == readme_rtmrs(name)
    assert check_rtmrs(log.events, tuple(readme_rtmrs(name)))


@pytest.mark.parametrize("path", [*(f"tdx/ccel-eventlogs/{n}" for n in LOGS),
                                  "tdx/gotdx-gce-spr-v4-ccel/ccel_data.dat"])
def test_logs_rebuild_byte_for_byte(path: str) -> None:
    """build_event_log(parse_event_log(raw), pad_to=len(raw)) == raw."""
    raw = (VECTORS / path).read_bytes()
    log = parse_event_log(raw)
    assert build_event_log(log, pad_to=len(raw)) == raw
    assert parse_event_log(build_event_log(log)) == log


def test_row47_tampered_digest_is_event_log() -> None:
    """Row 47: one edited digest byte in the log (quote untouched) is EVENT_LOG naming RTMR1."""
    raw, log, quoted = cloud_log()
    target = next(e for e in log.events if e.index == 2 and e.event_type != EV_NO_ACTION)
    digest = target.digest(ALG_SHA384)
    assert digest is not None
    at = raw.index(digest)
    tampered = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]
    err = mismatch(parse_ccel_log(tampered).events, quoted)
    assert "RTMR1" in err.reason
    assert err.expected == quoted[1].hex()
    assert err.actual == replay_rtmrs(parse_ccel_log(tampered).events)[1].hex()
    assert err.actual != err.expected


def test_row47_reordered_or_dropped_events_are_event_log() -> None:
    """Row 47: swapping two events of one RTMR or dropping one is EVENT_LOG."""
    _, log, quoted = cloud_log()
    events = list(log.events)
    same = [i for i, e in enumerate(events) if e.index == 1 and e.event_type != EV_NO_ACTION]
    events[same[0]], events[same[1]] = events[same[1]], events[same[0]]
    assert "RTMR0" in mismatch(tuple(events), quoted).reason
    dropped = log.events[:same[-1]] + log.events[same[-1] + 1:]
    assert "RTMR0" in mismatch(dropped, quoted).reason


def test_row49_no_action_events_never_extend() -> None:
    """Row 49: inserted EV_NO_ACTION events (any index) leave the replay unchanged."""
    _, log, quoted = cloud_log()
    noise = TcgEvent(2, EV_NO_ACTION, ((ALG_SHA384, b"\x42" * 48),), b"StartupLocality\x00\x03")
    noise0 = dataclasses.replace(noise, index=0)
    events = (noise, *log.events[:5], noise0, *log.events[5:], noise)
    assert replay_rtmrs(events) == list(quoted)
    assert check_rtmrs(events, quoted) == check_rtmrs(log.events, quoted)
    rebuilt = parse_ccel_log(build_event_log(dataclasses.replace(log, events=events)))
    assert check_rtmrs(rebuilt.events, quoted)


def test_row49_event_turned_into_no_action_is_event_log() -> None:
    """Row 49: relabelling an extended event as EV_NO_ACTION changes the replay (EVENT_LOG)."""
    _, log, quoted = cloud_log()
    i = next(i for i, e in enumerate(log.events) if e.index == 3 and e.event_type != EV_NO_ACTION)
    events = list(log.events)
    events[i] = dataclasses.replace(events[i], event_type=EV_NO_ACTION)
    assert "RTMR2" in mismatch(tuple(events), quoted).reason


def test_row49_extra_event_after_the_last_is_event_log() -> None:
    """Row 49: an extra extended event after the last replayed one is covered (EVENT_LOG)."""
    _, log, quoted = cloud_log()
    extra = TcgEvent(4, EV_EFI_ACTION, ((ALG_SHA384, b"\x01" * 48),), b"extra")
    rebuilt = parse_ccel_log(build_event_log(dataclasses.replace(log,
                                                                 events=(*log.events, extra))))
    err = mismatch(rebuilt.events, quoted)
    assert "RTMR3" in err.reason
    assert err.expected == bytes(48).hex()


@pytest.mark.parametrize("index", [0, 5, 0xFFFF_FFFE])
def test_row49_event_outside_rtmrs_is_event_log(index: int) -> None:
    """Row 49: an extended event for MR index 0 (MRTD) or beyond RTMR3 cannot be covered."""
    _, log, quoted = cloud_log()
    stray = TcgEvent(index, EV_EFI_ACTION, ((ALG_SHA384, bytes(48)),), b"")
    with pytest.raises(EventLogMismatch) as exc:
        check_rtmrs((*log.events, stray), quoted)
    assert exc.value.category is Category.EVENT_LOG
    with pytest.raises(EventLogMismatch):
        rtmr_events((stray,))


def test_row5_oversized_log_is_malformed_before_parsing() -> None:
    """Row 5: a 64 MiB log (valid records, then padding) is MALFORMED by the size limit."""
    raw = (CLOUD_DIR / "ccel_data.dat").read_bytes()
    huge = raw + b"\xff" * ((64 << 20) - len(raw))
    with pytest.raises(Malformed) as exc:
        parse_event_log(huge)
    assert exc.value.category is Category.MALFORMED
    assert exc.value.rule == "eventlog.max_size"
    assert exc.value.expected == f"<= {MAX_LOG_SIZE} bytes"
    with pytest.raises(Malformed):
        parse_ccel_log(huge)


def small_log(*events: TcgEvent) -> bytes:
    """A SHA-384-only log (Spec ID at index 1, as in CCEL) holding ``events``."""
    spec = SpecIdEvent(1, 0, 0, 2, 0, 2, (DigestAlgorithm(ALG_SHA384, 48),), b"")
    return build_event_log(EventLog(spec, events, 0))


def test_structural_faults_are_malformed() -> None:
    """No Spec ID, unknown digest, lying event size, data behind padding: all MALFORMED."""
    good = small_log(TcgEvent(1, EV_EFI_ACTION, ((ALG_SHA384, bytes(48)),), b"abc"))
    assert len(parse_event_log(good).events) == 1
    cases = [
        b"",
        good[:40],
        good.replace(b"Spec ID Event03", b"Spec ID Event00"),
        good[:-1],                                           # truncated event data
        good[:-7] + struct.pack("<I", 0xFFFF_FFFF) + b"abc",  # lying event size
        good + b"\xff" * 16 + b"\x01",                       # data hidden behind padding
        good + b"\x00" * 16 + b"\x01",
        small_log(TcgEvent(1, 3, ((ALG_SHA256, bytes(32)),), b"")),  # alg not in Spec ID
        small_log(TcgEvent(1, 3, (), b"")),                          # no digest
    ]
    for raw in cases:
        with pytest.raises(Malformed):
            parse_event_log(raw)
    assert parse_event_log(good + b"\xff" * 100).events == parse_event_log(good).events
    assert parse_event_log(good + b"\x00" * 100).events == parse_event_log(good).events


def test_ccel_table_and_area_faults_are_malformed() -> None:
    """A CCEL table with a bad size, signature or checksum, or a log beyond LAML, is MALFORMED."""
    table = (CLOUD_DIR / "ccel_table.dat").read_bytes()
    bad = [table[:-1], b"XCEL" + table[4:], table[:9] + bytes([table[9] ^ 1]) + table[10:]]
    for raw in bad:
        with pytest.raises(Malformed):
            parse_ccel_table(raw)
    parsed = parse_ccel_table(table)
    assert len(table) == CCEL_TABLE_SIZE
    with pytest.raises(Malformed):
        parse_ccel_log((CLOUD_DIR / "ccel_data.dat").read_bytes() + b"\xff",
                       parsed)
    with pytest.raises(Malformed):
        parse_ccel_log(small_log(), dataclasses.replace(parsed, laml=8))


def test_replay_requires_sha384_digest() -> None:
    """An extended event without a SHA-384 digest cannot be replayed (MALFORMED)."""
    ev = TcgEvent(1, EV_EFI_ACTION, ((ALG_SHA256, bytes(32)),), b"")
    with pytest.raises(Malformed):
        replay_rtmrs((ev,))


def test_check_rtmrs_refuses_wrong_quoted_shape() -> None:
    """Quoted RTMRs must be four 48-byte values."""
    _, log, quoted = cloud_log()
    with pytest.raises(Malformed):
        check_rtmrs(log.events, quoted[:3])


events_strategy = st.lists(st.builds(
    TcgEvent, index=st.integers(1, 4),
    event_type=st.sampled_from([EV_NO_ACTION, 0x1, 0xD, EV_EFI_ACTION, 0x8000000B]),
    digests=st.tuples(st.tuples(st.just(ALG_SHA384), st.binary(min_size=48, max_size=48))),
    data=st.binary(max_size=64)), max_size=12)


@given(events_strategy)
@settings(max_examples=100, deadline=None)
def test_hypothesis_round_trip_and_self_replay(events: list[TcgEvent]) -> None:
    """Random logs rebuild exactly and always match their own replay."""
    raw = small_log(*events)
    log = parse_ccel_log(raw + b"\xff" * 32)
    assert log.events == tuple(events)
    assert len(check_rtmrs(log.events, tuple(replay_rtmrs(events)))) == sum(
        1 for e in events if e.event_type != EV_NO_ACTION)


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_hypothesis_arbitrary_bytes_raise_only_malformed(tail: bytes) -> None:
    """Arbitrary bytes, alone or after a valid Spec ID event, raise only Malformed."""
    for raw in (tail, small_log() + tail):
        try:
            parse_event_log(raw)
        except KeybrokerError as exc:
            assert exc.category is Category.MALFORMED


def test_ccel_table_builds_back_byte_exact() -> None:
    """The real cloud CCEL table parses and builds back to the same 56 bytes (checksum
    recomputed), and a changed LAML gets a new, valid checksum."""
    raw = (CLOUD_DIR / "ccel_table.dat").read_bytes()
    table = parse_ccel_table(raw)
    assert build_ccel_table(table) == raw
    bigger = parse_ccel_table(build_ccel_table(dataclasses.replace(table, laml=0x80000)))
    assert bigger.laml == 0x80000
    assert bigger.checksum != table.checksum
