"""A simulated TDX CCEL (ACPI table + TCG crypto-agile event log) as TDVF/OVMF writes it for a
direct kernel boot. INSECURE: simulated measurements, for tests and demos only.

Invariants:
- The log is a crypto-agile TCG log with one SHA-384 bank (Spec ID event with CC MR index 1,
  uintnSize 2, as real CCELs have), built with ``keybroker.evidence.tcg_log.build_event_log`` and
  padded with 0xFF to ``LOG_AREA_SIZE`` (the table's LAML).
- Events follow the OVMF sequence seen in real logs: CC MR 1 (RTMR0) TD HOB handoff table,
  EV_EFI_PLATFORM_FIRMWARE_BLOB2 (digest = SHA-384 of the firmware volume), Secure Boot variables
  (digest = SHA-384 of the event data), separator, ACPI data; CC MR 2 (RTMR1)
  EV_EFI_BOOT_SERVICES_APPLICATION for ``File(kernel)`` (digest = SHA-384 of the kernel image),
  EV_EFI_ACTION events; CC MR 3 (RTMR2) EV_EVENT_TAG "LOADED_IMAGE::LoadOptions" (digest =
  SHA-384 of the command line as UTF-16LE with its NUL, what OVMF hands the kernel) and
  EV_EVENT_TAG "Linux initrd" (digest = SHA-384 of the initrd). No event targets RTMR3.
- ``SimulatedCcel.rtmrs`` is computed here by extending SHA-384 from zero, independently of the
  verifier's replay code, so tests compare two implementations.
- The ACPI table is 56 bytes, signature "CCEL", CC type 2 (TDX), with a correct checksum.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from keybroker.evidence.ccel import CC_TYPE_TDX, CcelTable, build_ccel_table
from keybroker.evidence.tcg_log import (
    ALG_SHA384,
    DigestAlgorithm,
    EventLog,
    SpecIdEvent,
    TcgEvent,
    build_event_log,
)
from keybroker.evidence.uefi_event import (
    DEVICE_PATH_NODE,
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_HANDOFF_TABLES2,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_EVENT_TAG,
    EV_PLATFORM_CONFIG_FLAGS,
    EV_SEPARATOR,
    FIRMWARE_BLOB2,
    HANDOFF_TABLES2,
    IMAGE_LOAD,
    LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
    TAGGED_EVENT,
    VARIABLE_DATA,
)

LOG_AREA_SIZE = 0x10000
LOG_AREA_ADDRESS = 0x7F5E_0000
_EFI_GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c").bytes_le
_EFI_SECURITY_DB = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f").bytes_le
_TD_HOB_GUID = uuid.UUID("93bb96af-b9f2-4eb8-9462-e0ba74564236").bytes_le
_QEMU_KERNEL_FS = uuid.UUID("1428f772-b64a-441e-b8c3-9ebdd7f893c7").bytes_le
_FIRMWARE_BASE = 0xFFC0_0000


@dataclass(frozen=True)
class TdBoot:
    """What the simulated TD boots: firmware volume, kernel, initrd and command line."""

    firmware: bytes = b"keybroker simulated TDVF firmware volume"
    kernel: bytes = b"keybroker simulated Linux kernel image"
    initrd: bytes = b"keybroker simulated initramfs"
    cmdline: str = "console=hvc0 root=/dev/vda1 ro"

    @property
    def firmware_digest(self) -> bytes:
        """SHA-384 of the firmware volume (the EV_EFI_PLATFORM_FIRMWARE_BLOB2 digest)."""
        return hashlib.sha384(self.firmware).digest()

    @property
    def kernel_digest(self) -> bytes:
        """SHA-384 of the kernel image (the boot application digest)."""
        return hashlib.sha384(self.kernel).digest()

    @property
    def initrd_digest(self) -> bytes:
        """SHA-384 of the initrd (the "Linux initrd" tag digest)."""
        return hashlib.sha384(self.initrd).digest()

    @property
    def cmdline_digest(self) -> bytes:
        """SHA-384 of the command line as UTF-16LE with its NUL (OVMF's LoadOptions)."""
        return hashlib.sha384((self.cmdline + "\x00").encode("utf-16-le")).digest()


@dataclass(frozen=True)
class SimulatedCcel:
    """The ACPI table, the log area (LAML bytes) and RTMR0..3 the log extends to."""

    table: bytes
    data: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]


def _event(index: int, event_type: int, data: bytes, digest: bytes | None = None) -> TcgEvent:
    value = digest if digest is not None else hashlib.sha384(data).digest()
    return TcgEvent(index, event_type, ((ALG_SHA384, value),), data)


def _variable(guid: bytes, name: str) -> bytes:
    out: bytes = VARIABLE_DATA.build({"guid": guid, "name_length": len(name),
                                       "data_length": 0, "name": name.encode("utf-16-le"),
                                       "data": b""})
    return out


def _kernel_load_event(boot: TdBoot) -> bytes:
    nodes = [(4, 3, _QEMU_KERNEL_FS), (4, 4, "kernel\x00".encode("utf-16-le")), (0x7F, 0xFF, b"")]
    path = b"".join(DEVICE_PATH_NODE.build({"type": t, "subtype": s, "data": d})
                    for t, s, d in nodes)
    out: bytes = IMAGE_LOAD.build({"location": 0x7CB3_0018, "length": len(boot.kernel),
                                    "link_time": 0, "device_path": path})
    return out


def _events(boot: TdBoot) -> list[TcgEvent]:
    handoff = HANDOFF_TABLES2.build({"description": "TdxTable\x00", "count": 1,
                                      "guid": _TD_HOB_GUID, "pointer": 0x809000})
    blob = FIRMWARE_BLOB2.build({"description": "Fv(XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)\x00",
                                  "base": _FIRMWARE_BASE, "length": len(boot.firmware)})
    variables = [(_EFI_GLOBAL, "SecureBoot"), (_EFI_GLOBAL, "PK"), (_EFI_GLOBAL, "KEK"),
                 (_EFI_SECURITY_DB, "db"), (_EFI_SECURITY_DB, "dbx")]

    def action(text: str) -> TcgEvent:
        return _event(2, EV_EFI_ACTION, text.encode())

    return [
        _event(1, EV_EFI_HANDOFF_TABLES2, handoff,
               hashlib.sha384(b"keybroker simulated TD HOB").digest()),
        _event(1, EV_EFI_PLATFORM_FIRMWARE_BLOB2, blob, boot.firmware_digest),
        *(_event(1, EV_EFI_VARIABLE_DRIVER_CONFIG, _variable(g, n)) for g, n in variables),
        _event(1, EV_SEPARATOR, bytes(4)),
        _event(1, EV_PLATFORM_CONFIG_FLAGS, b"ACPI DATA",
               hashlib.sha384(b"keybroker simulated ACPI tables").digest()),
        _event(2, EV_EFI_BOOT_SERVICES_APPLICATION, _kernel_load_event(boot),
               boot.kernel_digest),
        action("Calling EFI Application from Boot Option"),
        _event(1, EV_SEPARATOR, bytes(4)),
        _event(3, EV_EVENT_TAG, TAGGED_EVENT.build({"tag": LINUX_LOAD_OPTIONS_TAG,
                                                    "data": b"LOADED_IMAGE::LoadOptions\x00"}),
               boot.cmdline_digest),
        _event(3, EV_EVENT_TAG, TAGGED_EVENT.build({"tag": LINUX_INITRD_TAG,
                                                    "data": b"Linux initrd\x00"}),
               boot.initrd_digest),
        action("Exit Boot Services Invocation"),
        action("Exit Boot Services Returned with Success"),
    ]


def ccel_table(laml: int = LOG_AREA_SIZE, lasa: int = LOG_AREA_ADDRESS) -> bytes:
    """The 56-byte CCEL ACPI table (TDX, as EDK2 writes it) with a correct checksum."""
    return build_ccel_table(CcelTable(
        revision=1, checksum=0, oem_id=b"INTEL ", oem_table_id=b"EDK2    ", oem_revision=2,
        creator_id=b"    ", creator_revision=0x01000013, cc_type=CC_TYPE_TDX, cc_subtype=0,
        laml=laml, lasa=lasa))


def simulate_ccel(boot: TdBoot) -> SimulatedCcel:
    """The CCEL of a TD booting ``boot`` and the RTMRs it extends to."""
    spec = SpecIdEvent(pcr_index=1, platform_class=0, spec_version_minor=0,
                       spec_version_major=2, spec_errata=0, uintn_size=2,
                       algorithms=(DigestAlgorithm(ALG_SHA384, 48),), vendor_info=b"")
    events = _events(boot)
    data = build_event_log(EventLog(spec, tuple(events), 0), pad_to=LOG_AREA_SIZE)
    registers = [bytes(48)] * 4
    for ev in events:
        digest = dict(ev.digests)[ALG_SHA384]
        registers[ev.index - 1] = hashlib.sha384(registers[ev.index - 1] + digest).digest()
    return SimulatedCcel(table=ccel_table(), data=data,
                         rtmrs=(registers[0], registers[1], registers[2], registers[3]))
