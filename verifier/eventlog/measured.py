"""What a TD measured: replay the CCEL and the agent's runtime log against the quoted RTMRs,
then turn the replayed events into ``TdEventClaims``.

Invariants:
- Replay first, interpret after. The CCEL (``keybroker.evidence.ccel``) is replayed from zero
  into RTMR0..3, then every runtime-log event (``keybroker.evidence.runtime_log``) extends its
  register (RTMR3) after the CCEL's RTMR3 events. The result must equal the quoted RTMRs:
  all four when a CCEL is given, RTMR3 alone when only a runtime log is given (RTMR0..2 are
  then not covered by any log and nothing is claimed about them). Any difference is
  ``EventLogMismatch`` (EVENT_LOG) naming the register, with the quoted value as expected and
  the replayed one as actual. An extra, missing or edited event therefore never passes.
- A CCEL table without log data, or a table for another CC type than TDX, is ``Malformed``.
- Interpretation (``verifier.eventlog.boot``) only reads the replayed CCEL events, with
  SHA-384 digests; its claims are informational: a policy that must pin the boot chain pins
  RTMR1 / RTMR2.
- Runtime images are exactly the ``image`` values of the runtime log, in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from keybroker.errors import EventLogMismatch, Malformed
from keybroker.evidence.ccel import CC_TYPE_TDX, parse_ccel_log, parse_ccel_table
from keybroker.evidence.runtime_log import KIND_IMAGE, RuntimeEvent, extend, parse_runtime_log
from verifier.eventlog.boot import boot_claims
from verifier.eventlog.cache import ParsedCache
from verifier.eventlog.rtmr import RTMR_COUNT, RTMR_SIZE, RtmrEvent, rtmr_events


@dataclass(frozen=True)
class TdEventClaims:
    """What the replayed CCEL and runtime log say (digests as lowercase hex strings)."""

    firmware: tuple[str, ...]  # EV_EFI_PLATFORM_FIRMWARE_BLOB(2) digests, in log order
    boot_applications: tuple[str, ...]  # EV_EFI_BOOT_SERVICES_APPLICATION digests (shim, grub,
    # kernel), in log order
    kernel: str | None  # SHA-384 digest of the kernel image, when the log identifies it
    initrd: str | None  # SHA-384 digest of the initrd, when the log identifies it
    kernel_cmdline: str | None  # command line text, when the log carries it
    images: tuple[str, ...]  # "sha256:<64 hex>" image digests measured into RTMR3, in order
    event_count: int  # replayed (extending) events across the CCEL and the runtime log

    def as_dict(self) -> dict[str, object]:
        return {
            "firmware": list(self.firmware),
            "boot_applications": list(self.boot_applications),
            "kernel": self.kernel,
            "initrd": self.initrd,
            "kernel_cmdline": self.kernel_cmdline,
            "images": list(self.images),
            "event_count": self.event_count,
        }


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def _replay(ccel: Sequence[RtmrEvent], runtime: Sequence[RuntimeEvent]) -> list[bytes]:
    registers = [bytes(RTMR_SIZE)] * RTMR_COUNT
    for ev in ccel:
        registers[ev.rtmr] = _sha384(registers[ev.rtmr] + ev.digest)
    for rt in runtime:
        registers[rt.mr] = extend(registers[rt.mr], rt)
    return registers


def _ccel_events(ccel_table: bytes | None, ccel_data: bytes | None) -> tuple[RtmrEvent, ...]:
    if not ccel_data:
        if ccel_table:
            raise Malformed("CCEL table given without the CCEL log data",
                            rule="eventlog.ccel", expected="table and log data",
                            actual="table only")
        return ()
    table = parse_ccel_table(ccel_table) if ccel_table else None
    if table is not None and table.cc_type != CC_TYPE_TDX:
        raise Malformed("CCEL table is not for a TDX guest", rule="eventlog.ccel",
                        expected=f"CC type {CC_TYPE_TDX} (TDX)", actual=f"CC type {table.cc_type}")
    return rtmr_events(parse_ccel_log(ccel_data, table).events)


class CcelCache:
    """Parsed CCEL events by content (``verifier.eventlog.cache``): a TD's CCEL is the same on
    every request until it reboots. The replay against the quote is never cached."""

    def __init__(self, limit: int = 256) -> None:
        self._cache: ParsedCache[tuple[RtmrEvent, ...]] = ParsedCache(limit)

    def events(self, ccel_table: bytes | None, ccel_data: bytes | None) -> tuple[RtmrEvent, ...]:
        """The CCEL's extending events (see ``_ccel_events``), parsed once per content."""
        if not ccel_data:
            return _ccel_events(ccel_table, ccel_data)
        table = ccel_table or b""
        return self._cache.get(len(table).to_bytes(4, "big") + table + ccel_data,
                               lambda: _ccel_events(ccel_table, ccel_data))


def td_event_claims(
    rtmrs: Sequence[bytes],
    *,
    ccel_table: bytes | None,
    ccel_data: bytes | None,
    runtime_log: bytes | None,
    cache: CcelCache | None = None,
) -> TdEventClaims:
    """Replay the CCEL and the runtime log against the quoted ``rtmrs`` and interpret them.
    Callers call this only when a CCEL or a runtime log was presented; a long-lived caller
    passes a ``CcelCache``."""
    if len(rtmrs) != RTMR_COUNT or any(len(r) != RTMR_SIZE for r in rtmrs):
        raise Malformed("quoted RTMRs must be four 48-byte values", rule="eventlog.rtmrs",
                        expected=f"{RTMR_COUNT} x {RTMR_SIZE} bytes",
                        actual=str([len(r) for r in rtmrs]))
    ccel = (cache.events(ccel_table, ccel_data) if cache is not None
            else _ccel_events(ccel_table, ccel_data))
    runtime = parse_runtime_log(runtime_log) if runtime_log else ()
    replayed = _replay(ccel, runtime)
    checked = range(RTMR_COUNT) if ccel_data else (RTMR_COUNT - 1,)
    for i in checked:
        if replayed[i] != bytes(rtmrs[i]):
            raise EventLogMismatch(
                f"RTMR{i} does not match the replay of the CCEL and the runtime log",
                rule="eventlog.rtmr_replay", expected=bytes(rtmrs[i]).hex(),
                actual=replayed[i].hex())
    boot = boot_claims(ccel, "sha384")
    return TdEventClaims(
        firmware=boot.firmware,
        boot_applications=boot.boot_applications,
        kernel=boot.kernel,
        initrd=boot.initrd,
        kernel_cmdline=boot.kernel_cmdline,
        images=tuple(ev.value for ev in runtime if ev.kind == KIND_IMAGE),
        event_count=len(ccel) + len(runtime),
    )
