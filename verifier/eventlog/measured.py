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
- Interpretation only reads replayed events, in log order, up to the "Exit Boot Services
  Invocation" action; the first event that identifies a claim wins (a later extension cannot
  override it). Event text is trusted only where the digest is recomputed from it: GRUB
  commands and the kernel command line (``grub_cmd``, ``kernel_cmdline``,
  ``grub_kernel_cmdline``; digest of the text, with or without its NUL). Digests of external
  content (firmware volumes, boot applications, kernel, initrd) are the recorded digests, which
  the replay proves were extended; which event is the kernel or the initrd is read from
  untrusted labels (GRUB file names and loader labels, systemd-stub section names, Linux EFI
  stub tagged events), so these claims are informational: a policy that must pin the boot
  chain pins RTMR1 / RTMR2.
- Runtime images are exactly the ``image`` values of the runtime log, in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import construct as c

from keybroker.errors import EventLogMismatch, Malformed
from keybroker.evidence.ccel import CC_TYPE_TDX, parse_ccel_log, parse_ccel_table
from keybroker.evidence.runtime_log import KIND_IMAGE, RuntimeEvent, extend, parse_runtime_log
from keybroker.evidence.uefi_event import (
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_PLATFORM_FIRMWARE_BLOB,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    EV_EVENT_TAG,
    EV_IPL,
    LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
    TAGGED_EVENT,
)
from verifier.eventlog.rtmr import RTMR_COUNT, RTMR_SIZE, RtmrEvent, rtmr_events

FIRMWARE_BLOBS = frozenset({EV_EFI_PLATFORM_FIRMWARE_BLOB, EV_EFI_PLATFORM_FIRMWARE_BLOB2})
EXIT_BOOT_SERVICES = b"Exit Boot Services Invocation"
_CMDLINE_PREFIXES = (b"kernel_cmdline: ", b"grub_kernel_cmdline ")
_GRUB_CMD_PREFIXES = (b"grub_cmd: ", b"grub_cmd ")
_KERNEL_COMMANDS = frozenset({"linux", "linuxefi", "linux16"})
_INITRD_COMMANDS = frozenset({"initrd", "initrdefi", "initrd16"})
_LOADER_KERNEL = b"grub_linuxefi Kernel"
_LOADER_INITRD = b"grub_linuxefi Initrd"
_UKI_KERNEL, _UKI_INITRD = ".linux", ".initrd"


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


def _verified_text(ev: RtmrEvent, prefixes: Sequence[bytes]) -> str | None:
    """The text after one of ``prefixes`` (up to the first NUL) when the recorded digest is the
    SHA-384 of that text, with or without a terminating NUL; else None."""
    text = ev.data.split(b"\0", 1)[0]
    for prefix in prefixes:
        if text.startswith(prefix):
            body = text[len(prefix):]
            if ev.digest in (_sha384(body), _sha384(body + b"\0")):
                try:
                    return body.decode("utf-8")
                except UnicodeDecodeError:
                    return None
    return None


def _label(ev: RtmrEvent) -> bytes:
    """The event data up to its first NUL (an untrusted label)."""
    return ev.data.split(b"\0", 1)[0]


def _utf16_name(data: bytes) -> str | None:
    """A NUL-terminated UTF-16LE name such as systemd-stub's ".linux", else None."""
    if len(data) < 4 or len(data) % 2 or not data.endswith(b"\0\0"):
        return None
    try:
        return data[:-2].decode("utf-16-le")
    except UnicodeDecodeError:
        return None


@dataclass
class _Boot:
    """Accumulates boot claims while walking the replayed CCEL events."""

    firmware: list[str] = field(default_factory=list)
    applications: list[str] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    kernel_path: str | None = None
    initrd_path: str | None = None
    uki_section: str | None = None

    def set_kernel(self, digest: bytes) -> None:
        if self.kernel is None:
            self.kernel = digest.hex()

    def set_initrd(self, digest: bytes) -> None:
        if self.initrd is None:
            self.initrd = digest.hex()

    def grub_command(self, command: str) -> None:
        words = command.split()
        if len(words) >= 2 and words[0] in _KERNEL_COMMANDS and self.kernel_path is None:
            self.kernel_path = words[1]
        if len(words) == 2 and words[0] in _INITRD_COMMANDS and self.initrd_path is None:
            self.initrd_path = words[1]

    def ipl(self, ev: RtmrEvent) -> None:
        cmdline = _verified_text(ev, _CMDLINE_PREFIXES)
        if cmdline is not None:
            if self.cmdline is None:
                self.cmdline = cmdline
            return
        command = _verified_text(ev, _GRUB_CMD_PREFIXES)
        if command is not None:
            self.grub_command(command)
            return
        label = _label(ev)
        if label == _LOADER_KERNEL:
            self.set_kernel(ev.digest)
        elif label == _LOADER_INITRD:
            self.set_initrd(ev.digest)
        elif self.kernel_path is not None and label == self.kernel_path.encode():
            self.set_kernel(ev.digest)
        elif self.initrd_path is not None and label == self.initrd_path.encode():
            self.set_initrd(ev.digest)
        else:
            self.uki(ev)

    def uki(self, ev: RtmrEvent) -> None:
        """systemd-stub measures each UKI section twice: its name, then its contents."""
        name = _utf16_name(ev.data)
        if name is None:
            self.uki_section = None
        elif ev.digest == _sha384(name.encode() + b"\0"):
            self.uki_section = name
        elif name == self.uki_section:
            if name == _UKI_KERNEL:
                self.set_kernel(ev.digest)
            elif name == _UKI_INITRD:
                self.set_initrd(ev.digest)
            self.uki_section = None

    def tag(self, ev: RtmrEvent) -> None:
        """Linux EFI stub tagged events: the stub is part of the last boot application."""
        try:
            tagged = TAGGED_EVENT.parse(ev.data)
        except c.ConstructError:
            return
        if tagged.tag not in (LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG):
            return
        if self.applications:
            self.set_kernel(bytes.fromhex(self.applications[-1]))
        if tagged.tag == LINUX_INITRD_TAG:
            self.set_initrd(ev.digest)


def _boot_claims(events: Sequence[RtmrEvent]) -> _Boot:
    boot = _Boot()
    for ev in events:
        if ev.event_type == EV_EFI_ACTION and ev.data == EXIT_BOOT_SERVICES:
            break
        if ev.event_type in FIRMWARE_BLOBS:
            boot.firmware.append(ev.digest.hex())
        elif ev.event_type == EV_EFI_BOOT_SERVICES_APPLICATION:
            boot.applications.append(ev.digest.hex())
        elif ev.event_type == EV_IPL:
            boot.ipl(ev)
        elif ev.event_type == EV_EVENT_TAG:
            boot.tag(ev)
    return boot


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
    """Parsed CCEL events by SHA-256 of (table, log data): a TD's CCEL is the same on every
    request until it reboots, and parsing it is most of the event-log cost. Only successful
    parses are kept; the replay against the quote is never cached. Bounded: the whole cache
    is dropped when full."""

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._events: dict[bytes, tuple[RtmrEvent, ...]] = {}

    def events(self, ccel_table: bytes | None, ccel_data: bytes | None) -> tuple[RtmrEvent, ...]:
        """The CCEL's extending events (see ``_ccel_events``), parsed once per content."""
        if not ccel_data:
            return _ccel_events(ccel_table, ccel_data)
        table = ccel_table or b""
        key = hashlib.sha256(len(table).to_bytes(4, "big") + table + ccel_data).digest()
        found = self._events.get(key)
        if found is None:
            found = _ccel_events(ccel_table, ccel_data)
            if len(self._events) >= self._limit:
                self._events.clear()
            self._events[key] = found
        return found


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
    boot = _boot_claims(ccel)
    return TdEventClaims(
        firmware=tuple(boot.firmware),
        boot_applications=tuple(boot.applications),
        kernel=boot.kernel,
        initrd=boot.initrd,
        kernel_cmdline=boot.cmdline,
        images=tuple(ev.value for ev in runtime if ev.kind == KIND_IMAGE),
        event_count=len(ccel) + len(runtime),
    )
