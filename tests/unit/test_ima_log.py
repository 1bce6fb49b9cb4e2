"""The IMA measurement list: the template-hash formula on the real boot_aggregate line quoted in
evidence-formats.md, replay into PCR 10 per bank (violations, entries logged after the quote),
the refusals (a template hash that does not cover its data, an entry off PCR 10, a log that
does not reach the quoted value), and parser properties."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.evidence.ima_log import ImaEntry, format_ima_entry, parse_ima_log
from verifier.eventlog.ima import replay_ima

REAL_BOOT_AGGREGATE = ("10 0adefe762c149c7cec19da62f0da1297fcfbffff ima-ng sha256:" + "00" * 32
                       + " boot_aggregate")
SHA1, SHA256 = 0x0004, 0x000B


def entry(path: str, content: bytes, *, template: str = "ima-ng", signature: bytes = b"",
          violation: bool = False) -> ImaEntry:
    draft = ImaEntry(10, bytes(20), template, "sha256", hashlib.sha256(content).digest(),
                     path, signature)
    if violation:
        return draft
    return ImaEntry(10, hashlib.sha1(draft.template_data).digest(), template, "sha256",
                    draft.digest, path, signature)


LOG = [entry("boot_aggregate", b"pcrs"), entry("/usr/bin/bash", b"bash"),
       entry("/usr/lib/libc.so.6", b"libc", template="ima-sig", signature=b"\x03\x02" * 8),
       entry("/tmp/x", b"", violation=True), entry("/usr/bin/python3", b"py")]


def pcr10(entries: list[ImaEntry], bank: int) -> bytes:
    name, size = {SHA1: ("sha1", 20), SHA256: ("sha256", 32)}[bank]
    value = bytes(size)
    for e in entries:
        extend = (b"\xff" * size if e.violation else e.template_hash if bank == SHA1
                  else hashlib.new(name, e.template_data).digest())
        value = hashlib.new(name, value + extend).digest()
    return value


def test_real_boot_aggregate_line_has_the_kernels_template_hash() -> None:
    (parsed,) = parse_ima_log(REAL_BOOT_AGGREGATE.encode())
    assert parsed.matches_data() and parsed.path == "boot_aggregate"
    assert format_ima_entry(parsed) == REAL_BOOT_AGGREGATE


@pytest.mark.parametrize("bank", [SHA1, SHA256])
def test_replay_covers_up_to_the_quote(bank: int) -> None:
    """The log replays to PCR 10 in both banks; entries after the quoted value are pending
    (logged after the quote), never claimed; the violation extends 0xFF."""
    text = "\n".join(format_ima_entry(e) for e in LOG).encode()
    entries = parse_ima_log(text)
    full = replay_ima(entries, pcr10(LOG, bank), bank)
    assert len(full.covered) == 5 and full.pending == ()
    assert full.files()["/usr/lib/libc.so.6"] == ("sha256", hashlib.sha256(b"libc").hexdigest())
    assert "/tmp/x" not in full.files()  # a violation proves no content
    early = replay_ima(entries, pcr10(LOG[:2], bank), bank)
    assert [e.path for e in early.covered] == ["boot_aggregate", "/usr/bin/bash"]
    assert "/usr/bin/python3" not in early.files() and len(early.pending) == 3


@pytest.mark.parametrize(("case", "rule"), [("digest", "ima.template-hash"),
                                            ("pcr", "ima.pcr"), ("quote", "ima.replay")])
def test_refusals_are_event_log(case: str, rule: str) -> None:
    entries = list(LOG)
    quoted = pcr10(LOG, SHA256)
    if case == "digest":  # the file digest changed, the template hash kept: data not covered
        bad = entries[1]
        entries[1] = ImaEntry(10, bad.template_hash, bad.template, bad.algorithm,
                              hashlib.sha256(b"evil").digest(), bad.path)
    elif case == "pcr":
        bad = entries[1]
        entries[1] = ImaEntry(11, bad.template_hash, bad.template, bad.algorithm, bad.digest,
                              bad.path)
    else:
        quoted = hashlib.sha256(b"another machine").digest()
    with pytest.raises(KeybrokerError) as exc:
        replay_ima(entries, quoted, SHA256)
    assert (exc.value.category, exc.value.rule) == (Category.EVENT_LOG, rule)


@pytest.mark.parametrize("line", [
    "10 abc ima-ng sha256:00 /x",                                       # short template hash
    "99 " + "00" * 20 + " ima-ng sha256:" + "00" * 32 + " /x",          # PCR out of range
    "10 " + "00" * 20 + " ima sha1:" + "00" * 20 + " /x",              # legacy template
    "10 " + "00" * 20 + " ima-ng md5:" + "00" * 16 + " /x",             # unknown algorithm
    "10 " + "00" * 20 + " ima-ng sha256:" + "00" * 31 + " /x",          # wrong digest size
    "10 " + "00" * 20 + " ima-ng sha256:" + "00" * 32,                  # no path
])
def test_malformed_lines(line: str) -> None:
    with pytest.raises(Malformed):
        parse_ima_log(line.encode())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                  min_size=1, max_size=40),
                          st.binary(max_size=8), st.booleans()), min_size=1, max_size=6))
def test_format_parse_round_trip(items: list[tuple[str, bytes, bool]]) -> None:
    entries = [entry(path, data, template="ima-sig" if sig else "ima-ng",
                     signature=b"\x01\x02" if sig else b"") for path, data, sig in items]
    text = "\n".join(format_ima_entry(e) for e in entries).encode()
    assert list(parse_ima_log(text)) == entries


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_malformed(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        parse_ima_log(data)


def test_claims_name_only_the_files_the_quote_covers() -> None:
    """Through the TPM claims: a quote whose PCR 10 equals the replay of the first two
    entries claims those files, and counts the rest as pending."""
    from verifier.tpm.claims import TpmClaims  # noqa: PLC0415

    replay = replay_ima(LOG, pcr10(LOG[:2], SHA256), SHA256)
    claims = TpmClaims(ak_name=b"", ak_key="RSA-2048", signature="RSASSA-SHA256",
                       extra_data=b"", nonce_checked=False, clock=0, reset_count=0,
                       restart_count=0, firmware_version=0, pcrs={}, eventlog_pcrs={},
                       ima_files={p: f"{a}:{d}" for p, (a, d) in replay.files().items()},
                       ima_pending=len(replay.pending))
    assert claims.as_dict()["ima"] == {
        "files": {"boot_aggregate": "sha256:" + hashlib.sha256(b"pcrs").hexdigest(),
                  "/usr/bin/bash": "sha256:" + hashlib.sha256(b"bash").hexdigest()},
        "pending": 3}
