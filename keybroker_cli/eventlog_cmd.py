"""``keybroker eventlog FILE``: the events of a TCG binary event log and the registers they
replay to, per bank (PCRs; with ``--ccel`` the TDX RTMRs): how operators derive reference
values from a known-good machine.

Invariants:
- The log is parsed by the verifier's own parser and replayed by its own replay
  (``verifier.eventlog.pcr``, ``verifier.eventlog.rtmr``): what this prints is what the
  verifier would compute. Nothing here checks the log against a quote.
- Event data is shown as a short printable preview or hex prefix, never interpreted as proof.
- Exit codes: 0 printed, 1 the log does not parse or replay (category and reason), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keybroker.errors import KeybrokerError
from keybroker.evidence.tcg_log import HASH_NAMES
from keybroker_cli.evidence_input import UsageError, read_input

HELP = """\
Print a TCG binary event log (for example /sys/kernel/security/tpm0/binary_bios_measurements,
or a TDX CCEL with --ccel): every event with its register, type and digests, then the value
each register replays to in every bank the log records. Use it on a known-good machine to
derive the PCR (or RTMR) reference values a policy should accept.

examples:
  keybroker eventlog binary_bios_measurements
  keybroker eventlog ccel.data --ccel --json

exit codes: 0 printed, 1 the log does not parse or replay, 2 usage error"""

_BANKS = HASH_NAMES
_TYPES = {0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x3: "EV_NO_ACTION",
          0x4: "EV_SEPARATOR", 0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG",
          0x7: "EV_S_CRTM_CONTENTS", 0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE",
          0xA: "EV_PLATFORM_CONFIG_FLAGS", 0xB: "EV_TABLE_OF_DEVICES", 0xC: "EV_COMPACT_HASH",
          0xD: "EV_IPL", 0xE: "EV_IPL_PARTITION_DATA", 0xF: "EV_NONHOST_CODE",
          0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO", 0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
          0x8000_0001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x8000_0002: "EV_EFI_VARIABLE_BOOT",
          0x8000_0003: "EV_EFI_BOOT_SERVICES_APPLICATION",
          0x8000_0004: "EV_EFI_BOOT_SERVICES_DRIVER",
          0x8000_0005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x8000_0006: "EV_EFI_GPT_EVENT",
          0x8000_0007: "EV_EFI_ACTION", 0x8000_0008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
          0x8000_0009: "EV_EFI_HANDOFF_TABLES", 0x8000_000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
          0x8000_000B: "EV_EFI_HANDOFF_TABLES2", 0x8000_000C: "EV_EFI_VARIABLE_BOOT2",
          0x8000_00E0: "EV_EFI_VARIABLE_AUTHORITY", 0x8000_00E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
          0x8000_00E2: "EV_EFI_SPDM_FIRMWARE_CONFIG"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``eventlog`` command."""
    parser = sub.add_parser("eventlog", help="print a TCG event log and the PCRs (or RTMRs) "
                                             "it replays to", description=HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="the binary event log")
    parser.add_argument("--ccel", action="store_true",
                        help="the log is a TDX CCEL: replay into RTMR0-3 instead of PCRs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def _preview(data: bytes) -> str:
    text = data.rstrip(b"\x00")
    if text and len(text) <= 80 and all(32 <= b < 127 for b in text):
        return text.decode("ascii")
    return data[:16].hex() + ("..." if len(data) > 16 else "") + f" ({len(data)} bytes)"


def run(args: argparse.Namespace) -> int:
    """Execute ``keybroker eventlog``; the exit code."""
    from keybroker.evidence.tcg_log import parse_event_log  # noqa: PLC0415 - light start-up
    from verifier.eventlog.pcr import replay_pcrs  # noqa: PLC0415
    from verifier.eventlog.rtmr import replay_rtmrs  # noqa: PLC0415

    try:
        raw = read_input(args.file) or b""
    except UsageError as exc:
        print(f"keybroker eventlog: error: {exc}", file=sys.stderr)
        return 2
    try:
        log = parse_event_log(raw)
        if args.ccel:
            registers = {"sha384": {f"RTMR{i}": v.hex()
                                    for i, v in enumerate(replay_rtmrs(log.events))}}
        else:
            registers = {_BANKS[alg]: {f"PCR{i}": v.hex() for i, v in sorted(values.items())}
                         for alg, values in replay_pcrs(log).items()}
    except KeybrokerError as exc:
        print(f"error {exc.category.value}: {exc.detail}", file=sys.stderr)
        return 1
    events = [{"index": ev.index, "type": _TYPES.get(ev.event_type, f"{ev.event_type:#x}"),
               "digests": {_BANKS.get(a, f"{a:#06x}"): d.hex() for a, d in ev.digests},
               "data": _preview(ev.data)} for ev in log.events]
    if args.json:
        print(json.dumps({"banks": [_BANKS.get(a.alg_id, f"{a.alg_id:#06x}")
                                    for a in log.spec_id.algorithms],
                          "events": events, "replayed": registers}, indent=2))
        return 0
    for number, ev in enumerate(events):
        first = next(iter(ev["digests"].values()), "")  # type: ignore[attr-defined]
        print(f"{number:4d}  {'MR' if args.ccel else 'PCR'}{ev['index']:<3} {ev['type']:<34} "
              f"{first[:16]}  {ev['data']}")
    for bank, values in registers.items():
        print(f"replayed {bank}:")
        for name, value in values.items():
            print(f"  {name}: {value}")
    return 0
