"""The boot chain a replayed TCG log shows (a TDX CCEL in SHA-384, a TPM boot log in any PCR
bank): firmware volumes, boot applications, the kernel, the initrd and the command line.

Invariants:
- Interpretation only reads events a replay already proved (the caller replays first), in log
  order, up to the "Exit Boot Services Invocation" action; the first event that identifies a
  claim wins (a later extension cannot override it).
- Event text is trusted only where the digest is recomputed from it with the log's hash: GRUB
  commands and the kernel command line (``grub_cmd``, ``kernel_cmdline``,
  ``grub_kernel_cmdline``; digest of the text, with or without its NUL). Digests of external
  content (firmware volumes, boot applications, kernel, initrd) are the recorded digests, which
  the replay proves were extended; which event is the kernel or the initrd is read from
  untrusted labels (GRUB file names and loader labels, systemd-stub section names, Linux EFI
  stub tagged events), so these claims are informational: a policy that must pin the boot
  chain pins the registers (RTMR1/2, PCR 4/8/9).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import construct as c

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

FIRMWARE_BLOBS = frozenset({EV_EFI_PLATFORM_FIRMWARE_BLOB, EV_EFI_PLATFORM_FIRMWARE_BLOB2})
EXIT_BOOT_SERVICES = b"Exit Boot Services Invocation"
_CMDLINE_PREFIXES = (b"kernel_cmdline: ", b"grub_kernel_cmdline ")
_GRUB_CMD_PREFIXES = (b"grub_cmd: ", b"grub_cmd ")
_KERNEL_COMMANDS = frozenset({"linux", "linuxefi", "linux16"})
_INITRD_COMMANDS = frozenset({"initrd", "initrdefi", "initrd16"})
_LOADER_KERNEL = b"grub_linuxefi Kernel"
_LOADER_INITRD = b"grub_linuxefi Initrd"
_UKI_KERNEL, _UKI_INITRD = ".linux", ".initrd"

class MeasuredEvent(Protocol):
    """An extending event of one bank: its type, recorded digest and (unproven) data."""

    @property
    def event_type(self) -> int: ...

    @property
    def digest(self) -> bytes: ...

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True)
class BootClaims:
    """What a replayed log says about the boot chain (digests as lowercase hex strings)."""

    firmware: tuple[str, ...]  # EV_EFI_PLATFORM_FIRMWARE_BLOB(2) digests, in log order
    boot_applications: tuple[str, ...]  # EV_EFI_BOOT_SERVICES_APPLICATION digests, in order
    kernel: str | None  # digest of the kernel image, when the log identifies it
    initrd: str | None  # digest of the initrd, when the log identifies it
    kernel_cmdline: str | None  # command line text, when its digest recomputes

    def as_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"firmware": list(self.firmware), "boot_applications": list(self.boot_applications),
                "kernel": self.kernel, "initrd": self.initrd,
                "kernel_cmdline": self.kernel_cmdline}


def _verified_text(ev: MeasuredEvent, prefixes: Sequence[bytes], hash_name: str) -> str | None:
    """The text after one of ``prefixes`` (up to the first NUL) when the recorded digest is the
    hash of that text, with or without a terminating NUL; else None."""
    text = ev.data.split(b"\0", 1)[0]
    for prefix in prefixes:
        if text.startswith(prefix):
            body = text[len(prefix):]
            if ev.digest in (hashlib.new(hash_name, body).digest(),
                             hashlib.new(hash_name, body + b"\0").digest()):
                try:
                    return body.decode("utf-8")
                except UnicodeDecodeError:
                    return None
    return None


def _label(ev: MeasuredEvent) -> bytes:
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
    hash_name: str = "sha384"

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

    def ipl(self, ev: MeasuredEvent) -> None:
        cmdline = _verified_text(ev, _CMDLINE_PREFIXES, self.hash_name)
        if cmdline is not None:
            if self.cmdline is None:
                self.cmdline = cmdline
            return
        command = _verified_text(ev, _GRUB_CMD_PREFIXES, self.hash_name)
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

    def uki(self, ev: MeasuredEvent) -> None:
        """systemd-stub measures each UKI section twice: its name, then its contents."""
        name = _utf16_name(ev.data)
        if name is None:
            self.uki_section = None
        elif ev.digest == hashlib.new(self.hash_name, name.encode() + b"\0").digest():
            self.uki_section = name
        elif name == self.uki_section:
            if name == _UKI_KERNEL:
                self.set_kernel(ev.digest)
            elif name == _UKI_INITRD:
                self.set_initrd(ev.digest)
            self.uki_section = None

    def tag(self, ev: MeasuredEvent) -> None:
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


def boot_claims(events: Sequence[MeasuredEvent], hash_name: str) -> BootClaims:
    """What the replayed ``events`` (their ``hash_name`` digests) say about the boot chain."""
    boot = _Boot(hash_name=hash_name)
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
    return BootClaims(tuple(boot.firmware), tuple(boot.applications), boot.kernel,
                      boot.initrd, boot.cmdline)
