"""TD event claims: the CCEL and the runtime log replay against the quoted RTMRs (rows 47, 49)
and are interpreted into firmware, boot application, kernel, initrd, command line and image
claims. Real logs are checked against their published parses (*_out.json) and the quote taken
on the same TD; runtime logs are synthetic."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import struct

import pytest
from support.paths import VECTORS

from keybroker.errors import Category, EventLogMismatch, Malformed
from keybroker.evidence.ccel import parse_ccel_log
from keybroker.evidence.dcap_quote import parse_tdx_quote
from keybroker.evidence.runtime_log import encode_log, extend, image_event
from keybroker.evidence.tcg_log import ALG_SHA384, EV_NO_ACTION, TcgEvent, build_event_log
from verifier.eventlog.measured import CcelCache, TdEventClaims, td_event_claims

README = (VECTORS / "README.md").read_text()
CLOUD = VECTORS / "tdx/gotdx-gce-spr-v4-ccel"
LOGS = VECTORS / "tdx/ccel-eventlogs"
IMAGE_A = "sha256:" + "a1" * 32
IMAGE_B = "sha256:" + "b2" * 32
EBS = "Exit Boot Services Invocation"


def cloud() -> tuple[tuple[bytes, ...], bytes, bytes]:
    """The cloud quote's RTMRs, its CCEL table and its CCEL log area."""
    quote = parse_tdx_quote((CLOUD / "cos-113-tdx-quote.dat").read_bytes())
    return (tuple(quote.td_report.rtmrs), (CLOUD / "ccel_table.dat").read_bytes(),
            (CLOUD / "ccel_data.dat").read_bytes())


def published(name: str) -> list[dict[str, object]]:
    """The published parse of a ccel-eventlogs file (EV_NO_ACTION records dropped)."""
    records = json.loads((LOGS / f"{name}_out.json").read_text())["uefi_event_logs"]
    return [r for r in records if r["type_name"] != "EV_NO_ACTION"]


def digest_of(record: dict[str, object]) -> str:
    digests = record["digests"]
    assert isinstance(digests, list)
    return str(digests[0]["digest"])


def label(record: dict[str, object]) -> str:
    details = record["details"]
    assert isinstance(details, dict)
    return str(details.get("string", ""))


def before_ebs(name: str) -> list[dict[str, object]]:
    records = published(name)
    end = next(i for i, r in enumerate(records) if label(r) == EBS)
    return records[:end]


def readme_rtmrs(name: str) -> list[bytes]:
    section = README.split(f"#### `tdx/ccel-eventlogs/{name}`", 1)[1].split("\n#### ", 1)[0]
    match = re.search(r"replayed RTMR0\.\.3 = ([0-9a-f, ]+);", section)
    assert match is not None
    return [bytes.fromhex(v) for v in match.group(1).split(", ")]


def claims_of(name: str) -> TdEventClaims:
    return td_event_claims(readme_rtmrs(name), ccel_table=None,
                           ccel_data=(LOGS / name).read_bytes(), runtime_log=None)


def test_cloud_ccel_replays_to_its_quote_and_names_kernel_and_cmdline() -> None:
    """The GCE CCEL replays to the quote's RTMR0-3; GRUB's verified `linux` command names the
    kernel file event, and the kernel_cmdline text is taken because its digest recomputes."""
    rtmrs, table, data = cloud()
    c = td_event_claims(rtmrs, ccel_table=table, ccel_data=data, runtime_log=None)
    log = parse_ccel_log(data)
    extended = [e for e in log.events if e.event_type != EV_NO_ACTION]
    assert c.event_count == len(extended) == 43
    assert c.images == () and c.initrd is None
    kernel = next(e for e in extended if e.data == b"/syslinux/vmlinuz.A\0")
    assert c.kernel == kernel.digest(ALG_SHA384).hex()  # type: ignore[union-attr]
    cmdline_event = next(e for e in extended if e.data.startswith(b"kernel_cmdline: "))
    assert c.kernel_cmdline is not None
    assert hashlib.sha384(c.kernel_cmdline.encode()).digest() == \
        cmdline_event.digest(ALG_SHA384)
    assert c.kernel_cmdline.startswith("/syslinux/vmlinuz.A init=/usr/lib/systemd/systemd ")
    assert c.firmware == tuple(e.digest(ALG_SHA384).hex()  # type: ignore[union-attr]
                               for e in extended if e.event_type == 0x8000000A)
    assert len(c.boot_applications) == 2 and len(c.firmware) == 1


def test_ovmf_direct_boot_claims_match_published_parse() -> None:
    """OVMF direct boot: the kernel is the boot application the Linux EFI stub's tagged
    events follow; the initrd is the 'Linux initrd' tagged event; no command line text."""
    c = claims_of("CCEL_data_ovmf")
    records = before_ebs("CCEL_data_ovmf")
    apps = [r for r in records if r["type_name"] == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert c.boot_applications == tuple(digest_of(r) for r in apps)
    assert "File(kernel)" in json.dumps(apps[-1]["details"])
    assert c.kernel == digest_of(apps[-1])
    assert c.initrd == digest_of(next(r for r in records if label(r) == "Linux initrd"))
    assert c.kernel_cmdline is None
    assert c.firmware == tuple(digest_of(r) for r in records
                               if r["type_name"] == "EV_EFI_PLATFORM_FIRMWARE_BLOB2")


def test_shim_grub_efi_stub_claims_match_published_parse() -> None:
    """shim + GRUB + EFI stub: kernel = the last boot application before the stub's tagged
    events; initrd from the 'Linux initrd' tag."""
    c = claims_of("CCEL_data_grub")
    records = before_ebs("CCEL_data_grub")
    apps = [digest_of(r) for r in records if r["type_name"] == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert c.boot_applications == tuple(apps) and len(apps) == 5
    assert c.kernel == apps[-1]
    assert c.initrd == digest_of(next(r for r in records if label(r) == "Linux initrd"))


def test_uki_sections_name_kernel_and_initrd() -> None:
    """systemd-stub UKI (GKE): each section is measured as its name, then its contents; the
    kernel and initrd are the contents measurements of .linux and .initrd."""
    c = claims_of("CCEL_data_grub_gke")
    records = before_ebs("CCEL_data_grub_gke")
    linux = [digest_of(r) for r in records if label(r) == "linux"]
    initrd = [digest_of(r) for r in records if label(r) == "initrd"]
    assert linux[0] == hashlib.sha384(b".linux\0").hexdigest()
    assert c.kernel == linux[1] and c.initrd == initrd[1]
    assert c.kernel_cmdline is None


def test_redhat_grub_loader_events_and_cmdline() -> None:
    """RH-style GRUB: 'grub_linuxefi Kernel/Initrd' events name the kernel and initrd; the
    grub_kernel_cmdline text is verified against its digest; CCEL RTMR3 events are counted."""
    c = claims_of("CCEL_AAEL_alibabacloud")
    records = before_ebs("CCEL_AAEL_alibabacloud")
    assert c.kernel == digest_of(next(r for r in records
                                      if label(r) == "grub_linuxefi Kernel"))
    assert c.initrd == digest_of(next(r for r in records
                                      if label(r) == "grub_linuxefi Initrd"))
    text = next(label(r) for r in records if label(r).startswith("grub_kernel_cmdline "))
    assert c.kernel_cmdline == text.removeprefix("grub_kernel_cmdline ")
    assert c.event_count == 87


def test_event_text_not_matching_its_digest_is_not_trusted() -> None:
    """Editing the kernel_cmdline text (digest untouched) still replays, but the text is not
    recomputable any more, so no command line is claimed."""
    rtmrs, table, data = cloud()
    log = parse_ccel_log(data)
    events = [dataclasses.replace(e, data=e.data.replace(b"ro noresume", b"rw  resume"))
              if e.data.startswith(b"kernel_cmdline: ") else e for e in log.events]
    forged = build_event_log(dataclasses.replace(log, events=tuple(events)), pad_to=len(data))
    c = td_event_claims(rtmrs, ccel_table=table, ccel_data=forged, runtime_log=None)
    assert c.kernel_cmdline is None


def test_events_after_exit_boot_services_are_not_interpreted() -> None:
    """Boot claims stop at 'Exit Boot Services Invocation': a later 'grub_linuxefi Kernel'
    extension is replayed but does not become the kernel claim."""
    rtmrs, table, data = cloud()
    log = parse_ccel_log(data)
    late = TcgEvent(3, 0x0D, ((ALG_SHA384, b"\x66" * 48),), b"grub_linuxefi Kernel\0")
    events = (*log.events, late)
    rtmr2 = hashlib.sha384(rtmrs[2] + b"\x66" * 48).digest()
    quoted = (rtmrs[0], rtmrs[1], rtmr2, rtmrs[3])
    log_bytes = build_event_log(dataclasses.replace(log, events=events), pad_to=len(data))
    c = td_event_claims(quoted, ccel_table=table, ccel_data=log_bytes, runtime_log=None)
    assert c.kernel == td_event_claims(rtmrs, ccel_table=table, ccel_data=data,
                                       runtime_log=None).kernel
    assert c.event_count == 44


# --- runtime log ------------------------------------------------------------------------------

def runtime(*images: str) -> tuple[bytes, bytes]:
    """A runtime log for ``images`` and the RTMR3 it extends to from zero."""
    events = [image_event(i) for i in images]
    rtmr3 = bytes(48)
    for ev in events:
        rtmr3 = extend(rtmr3, ev)
    return encode_log(events), rtmr3


def test_runtime_log_extends_rtmr3_after_the_ccel() -> None:
    """CCEL + runtime log replay to all four RTMRs; images are listed in order."""
    rtmrs, table, data = cloud()
    log, rtmr3 = runtime(IMAGE_A, IMAGE_B)
    quoted = (*rtmrs[:3], rtmr3)
    c = td_event_claims(quoted, ccel_table=table, ccel_data=data, runtime_log=log)
    assert c.images == (IMAGE_A, IMAGE_B) and c.event_count == 45


def test_runtime_log_after_ccel_rtmr3_events() -> None:
    """When the CCEL already extended RTMR3 (AAEL), runtime events extend after them."""
    name = "CCEL_AAEL_alibabacloud"
    registers = readme_rtmrs(name)
    log = encode_log([image_event(IMAGE_A)])
    rtmr3 = extend(registers[3], image_event(IMAGE_A))
    c = td_event_claims((*registers[:3], rtmr3), ccel_table=None,
                        ccel_data=(LOGS / name).read_bytes(), runtime_log=log)
    assert c.images == (IMAGE_A,)
    with pytest.raises(EventLogMismatch):
        td_event_claims((*registers[:3], runtime(IMAGE_A)[1]), ccel_table=None,
                        ccel_data=(LOGS / name).read_bytes(), runtime_log=log)


def test_runtime_log_alone_checks_rtmr3_only() -> None:
    """Without a CCEL only RTMR3 is replayed and compared; boot claims are empty."""
    log, rtmr3 = runtime(IMAGE_B)
    c = td_event_claims((b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, rtmr3), ccel_table=None,
                        ccel_data=None, runtime_log=log)
    assert c.images == (IMAGE_B,) and c.firmware == () and c.kernel is None
    assert c.event_count == 1


@pytest.mark.parametrize("case", ["extra", "missing", "reordered", "other-image"])
def test_row47_49_runtime_log_not_matching_rtmr3_is_event_log(case: str) -> None:
    """A runtime log with an extra, missing, reordered or substituted event is EVENT_LOG."""
    rtmrs, table, data = cloud()
    _, rtmr3 = runtime(IMAGE_A, IMAGE_B)
    presented = {"extra": (IMAGE_A, IMAGE_B, IMAGE_A), "missing": (IMAGE_A,),
                 "reordered": (IMAGE_B, IMAGE_A), "other-image": (IMAGE_A, "sha256:" + "c3" * 32)}
    log, _ = runtime(*presented[case])
    with pytest.raises(EventLogMismatch) as exc:
        td_event_claims((*rtmrs[:3], rtmr3), ccel_table=table, ccel_data=data, runtime_log=log)
    assert exc.value.category is Category.EVENT_LOG
    assert "RTMR3" in exc.value.reason and exc.value.expected == rtmr3.hex()


def test_row46_runtime_log_claiming_images_against_zero_rtmr3() -> None:
    """Row 46: a log claiming an image while RTMR3 is zero (nothing measured) is EVENT_LOG."""
    rtmrs, table, data = cloud()
    log, _ = runtime(IMAGE_A)
    assert rtmrs[3] == bytes(48)
    with pytest.raises(EventLogMismatch):
        td_event_claims(rtmrs, ccel_table=table, ccel_data=data, runtime_log=log)


def test_row47_tampered_ccel_is_event_log_naming_register() -> None:
    """Row 47: one digest byte edited in the CCEL is EVENT_LOG naming the RTMR."""
    rtmrs, table, data = cloud()
    log = parse_ccel_log(data)
    target = next(e for e in log.events if e.index == 3)
    digest = target.digest(ALG_SHA384)
    assert digest is not None
    at = data.index(digest)
    tampered = data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1:]
    with pytest.raises(EventLogMismatch) as exc:
        td_event_claims(rtmrs, ccel_table=table, ccel_data=tampered, runtime_log=None)
    assert "RTMR2" in exc.value.reason and exc.value.expected == rtmrs[2].hex()


def test_row49_extended_event_relabelled_no_action_is_event_log() -> None:
    """Row 49: an extended event turned into EV_NO_ACTION no longer extends: EVENT_LOG."""
    rtmrs, table, data = cloud()
    log = parse_ccel_log(data)
    i = next(i for i, e in enumerate(log.events) if e.index == 2)
    events = list(log.events)
    events[i] = dataclasses.replace(events[i], event_type=EV_NO_ACTION)
    forged = build_event_log(dataclasses.replace(log, events=tuple(events)), pad_to=len(data))
    with pytest.raises(EventLogMismatch) as exc:
        td_event_claims(rtmrs, ccel_table=table, ccel_data=forged, runtime_log=None)
    assert "RTMR1" in exc.value.reason


def test_table_without_data_and_wrong_cc_type_are_malformed() -> None:
    """A CCEL table without log data, or a table for SEV, is MALFORMED; so are bad RTMRs."""
    rtmrs, table, data = cloud()
    with pytest.raises(Malformed):
        td_event_claims(rtmrs, ccel_table=table, ccel_data=None, runtime_log=None)
    sev = bytearray(table)
    sev[36] = 1
    sev[9] = (sev[9] + 1) % 256  # keep the ACPI checksum at zero
    assert sum(sev) % 256 == 0
    with pytest.raises(Malformed) as exc:
        td_event_claims(rtmrs, ccel_table=bytes(sev), ccel_data=data, runtime_log=None)
    assert "TDX" in exc.value.expected
    with pytest.raises(Malformed):
        td_event_claims(rtmrs[:3], ccel_table=table, ccel_data=data, runtime_log=None)


def test_malformed_runtime_log_is_malformed() -> None:
    """A runtime log line that is not the strict format is MALFORMED, not a mismatch."""
    rtmrs, table, data = cloud()
    bad = b'{"mr":3,"kind":"image","value":"sha256:XYZ"}\n'
    with pytest.raises(Malformed):
        td_event_claims(rtmrs, ccel_table=table, ccel_data=data, runtime_log=bad)


def test_published_records_decode_like_ours() -> None:
    """Sanity: the published event bytes are the ones we interpret (no parser drift)."""
    log = parse_ccel_log((LOGS / "CCEL_data_ovmf").read_bytes())
    records = published("CCEL_data_ovmf")
    tags = [e for e in log.events if e.event_type == 0x6]
    tag_records = [r for r in records if r["type_name"] == "EV_EVENT_TAG"]
    for ev, rec in zip(tags, tag_records, strict=True):
        assert ev.data == base64.b64decode(str(rec["event"]))
        assert struct.unpack_from("<I", ev.data)[0] in (0x8F3B22EC, 0x8F3B22ED)


def test_ccel_cache_parses_once_and_still_checks_every_replay() -> None:
    """A cached CCEL is reused across requests, but each request's replay is still checked:
    a tampered copy (new content) and a quote with other RTMRs are EVENT_LOG."""
    rtmrs, table, data = cloud()
    cache = CcelCache()
    first = td_event_claims(rtmrs, ccel_table=table, ccel_data=data, runtime_log=None,
                            cache=cache)
    again = td_event_claims(rtmrs, ccel_table=table, ccel_data=bytes(data), runtime_log=None,
                            cache=cache)
    assert first == again
    assert cache.events(table, data) is cache.events(table, bytes(data))
    tampered = bytearray(data)
    tampered[data.find(b"\x0c\x00", 200) + 2] ^= 1
    with pytest.raises(EventLogMismatch) as exc:
        td_event_claims(rtmrs, ccel_table=table, ccel_data=bytes(tampered), runtime_log=None,
                        cache=cache)
    assert exc.value.category is Category.EVENT_LOG
    other = (rtmrs[0], rtmrs[1], bytes(48), rtmrs[3])
    with pytest.raises(EventLogMismatch):
        td_event_claims(other, ccel_table=table, ccel_data=data, runtime_log=None, cache=cache)
