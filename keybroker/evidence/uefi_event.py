"""TCG PC Client event types and the UEFI event data layouts that boot firmware logs
(TCG PC Client Platform Firmware Profile, section 10), in construct: parsed by the verifier's
event-log interpretation, built by the simulators.

Invariants:
- Each layout is declared once, here; parsing ``TAGGED_EVENT`` requires the event data to end
  with the tagged event (``Terminated``), so trailing bytes never pass unnoticed.
- Nothing here trusts event data: a log's digests are what the replay proves; which event
  data a claim may use is the verifier's decision (``verifier.eventlog.measured``).
"""

from __future__ import annotations

from typing import Final

import construct as c

EV_SEPARATOR: Final = 0x4
EV_EVENT_TAG: Final = 0x6
EV_PLATFORM_CONFIG_FLAGS: Final = 0xA
EV_IPL: Final = 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG: Final = 0x8000_0001
EV_EFI_BOOT_SERVICES_APPLICATION: Final = 0x8000_0003
EV_EFI_ACTION: Final = 0x8000_0007
EV_EFI_PLATFORM_FIRMWARE_BLOB: Final = 0x8000_0008
EV_EFI_PLATFORM_FIRMWARE_BLOB2: Final = 0x8000_000A
EV_EFI_HANDOFF_TABLES2: Final = 0x8000_000B
LINUX_INITRD_TAG: Final = 0x8F3B_22EC  # Linux EFI stub: initrd contents
LINUX_LOAD_OPTIONS_TAG: Final = 0x8F3B_22ED  # Linux EFI stub: command line (digest only)

# TCG_PCClientTaggedEvent
TAGGED_EVENT = c.Struct("tag" / c.Int32ul, "data" / c.Prefixed(c.Int32ul, c.GreedyBytes),
                        c.Terminated)
# UEFI_PLATFORM_FIRMWARE_BLOB2
FIRMWARE_BLOB2 = c.Struct("description" / c.PascalString(c.Int8ul, "ascii"),
                          "base" / c.Int64ul, "length" / c.Int64ul)
# UEFI_HANDOFF_TABLE_POINTERS2 with one table
HANDOFF_TABLES2 = c.Struct("description" / c.PascalString(c.Int8ul, "ascii"),
                           "count" / c.Int64ul, "guid" / c.Bytes(16), "pointer" / c.Int64ul)
# UEFI_VARIABLE_DATA (name in UTF-16LE code units)
VARIABLE_DATA = c.Struct("guid" / c.Bytes(16), "name_length" / c.Int64ul,
                         "data_length" / c.Int64ul, "name" / c.Bytes(c.this.name_length * 2),
                         "data" / c.Bytes(c.this.data_length))
# UEFI_IMAGE_LOAD_EVENT
IMAGE_LOAD = c.Struct("location" / c.Int64ul, "length" / c.Int64ul, "link_time" / c.Int64ul,
                      "device_path" / c.Prefixed(c.Int64ul, c.GreedyBytes))
# EFI_DEVICE_PATH_PROTOCOL node (the length field counts its 4-byte header)
DEVICE_PATH_NODE = c.Struct("type" / c.Int8ul, "subtype" / c.Int8ul,
                            "data" / c.Prefixed(c.ExprAdapter(c.Int16ul, c.obj_ - 4, c.obj_ + 4),
                                                c.GreedyBytes))
