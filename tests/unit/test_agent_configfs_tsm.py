"""configfs-tsm collector against a temporary directory tree that models the kernel's report.c.

The tree is a real directory; ``KernelModelCollector`` only adds what configfs does on its own
(populating a new instance, bumping ``generation`` on writes, dropping attributes on rmdir, and
producing the outblob: an SNP report from a real GCP report, or for ``tdx_guest`` a real GCE
TDX quote with the written report_data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from support.paths import VECTORS

from attester_agent.collectors.ccel import CcelReader
from attester_agent.collectors.configfs_tsm import ConfigfsTsmCollector
from attester_agent.collectors.registry import detect
from attester_agent.collectors.tdx_evidence import TdxSources
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.dcap_quote import build_quote, parse_quote, parse_tdx_quote
from keybroker.evidence.snp_report import build_report, parse_report
from keybroker.v1 import evidence_pb2

BASE_REPORT = VECTORS / "sev-snp/teekit-gcp-milan-v5/sev-gcp.bin"
GCE_TDX = VECTORS / "tdx/gotdx-gce-spr-v4-ccel"
SGX_QUOTE = VECTORS / "sgx/dcapqvl-sgx-v3/sgx_quote"
AUX = b"\x01" * 24 + bytes(24) + b"certificate-bytes"


def tdx_quote_for(report_data: bytes) -> bytes:
    """The real GCE TDX quote with its REPORTDATA replaced (unsigned: the agent checks shape)."""
    quote = parse_quote((GCE_TDX / "cos-113-tdx-quote.dat").read_bytes())
    body = dataclasses.replace(quote.td_report, report_data=report_data)
    return build_quote(quote.with_changes(body=body))


class KernelModelCollector(ConfigfsTsmCollector):
    """The collector on a plain directory, with configfs' own side effects emulated."""

    def __init__(
        self,
        root: Path,
        *,
        provider: str = "sev_guest",
        interfere: int = 0,
        outblob_size: int | None = None,
        with_auxblob: bool = True,
        outblob: bytes | None = None,
        **kw: object,
    ) -> None:
        super().__init__(root, **kw)  # type: ignore[arg-type]
        self.model_provider = provider
        self.fixed_outblob = outblob
        self.interfere = interfere  # how many attempts see a foreign write
        self.outblob_size = outblob_size
        self.with_auxblob = with_auxblob
        self.instances: list[Path] = []
        self.writes: list[tuple[str, bytes]] = []

    def _make_instance(self, instance: Path) -> None:
        super()._make_instance(instance)
        self.instances.append(instance)
        (instance / "provider").write_text(self.model_provider + "\n")
        (instance / "generation").write_text("7\n")
        for name in ("inblob", "privlevel"):
            (instance / name).write_bytes(b"")

    def _remove_instance(self, instance: Path) -> None:
        for child in instance.iterdir():
            child.unlink()
        super()._remove_instance(instance)

    def _write_attr(self, path: Path, data: bytes) -> None:
        super()._write_attr(path, data)
        self.writes.append((path.name, data))
        bump = 1
        if self.interfere:
            self.interfere -= 1
            bump = 2
        gen = path.parent / "generation"
        gen.write_text(f"{int(gen.read_text()) + bump}\n")
        if path.name == "inblob":
            if self.fixed_outblob is not None:
                report = self.fixed_outblob
            elif self.model_provider == "tdx_guest":
                report = tdx_quote_for(data)
            else:
                base = parse_report(BASE_REPORT.read_bytes())
                report = build_report(base.with_changes(report_data=data))
            if self.outblob_size is not None:
                report = (report * 2)[: self.outblob_size]
            (path.parent / "outblob").write_bytes(report)
            if self.with_auxblob and self.model_provider == "sev_guest":
                (path.parent / "auxblob").write_bytes(AUX)


REPORT_DATA = hashlib.sha512(b"configfs").digest()


def test_happy_path_returns_report_and_cert_table(tmp_path: Path) -> None:
    """A clean attempt yields outblob as the report and auxblob as the cert table."""
    collector = KernelModelCollector(tmp_path)
    evidence = collector.collect(REPORT_DATA)
    assert evidence.WhichOneof("kind") == "snp"
    assert parse_report(evidence.snp.report).report_data == REPORT_DATA
    assert evidence.snp.cert_table == AUX
    assert collector.writes == [("inblob", REPORT_DATA)]
    assert len(collector.instances) == 2  # the provider probe (fixes the TEE) + one attempt
    assert list(tmp_path.iterdir()) == []  # instances removed


def test_privlevel_written_and_counted(tmp_path: Path) -> None:
    """With privlevel the generation must advance by two writes."""
    collector = KernelModelCollector(tmp_path, privlevel=2)
    evidence = collector.collect(REPORT_DATA)
    assert collector.writes == [("privlevel", b"2\n"), ("inblob", REPORT_DATA)]
    assert len(evidence.snp.report) == 1184


def test_missing_auxblob_gives_empty_cert_table(tmp_path: Path) -> None:
    """A provider without auxblob yields an empty certificate table."""
    evidence = KernelModelCollector(tmp_path, with_auxblob=False).collect(REPORT_DATA)
    assert evidence.snp.cert_table == b""


def test_generation_mismatch_retries_then_succeeds(tmp_path: Path) -> None:
    """One interfering writer costs one retry in a new instance."""
    collector = KernelModelCollector(tmp_path, interfere=1)
    assert collector.available()
    evidence = collector.collect(REPORT_DATA)
    assert parse_report(evidence.snp.report).report_data == REPORT_DATA
    assert len(collector.instances) == 3  # probe + two attempts
    assert list(tmp_path.iterdir()) == []


def test_generation_mismatch_every_time_is_unavailable(tmp_path: Path) -> None:
    """Interference on every attempt ends in UNAVAILABLE after the bounded retries."""
    collector = KernelModelCollector(tmp_path, interfere=100, max_attempts=3)
    assert collector.tee == evidence_pb2.TEE_TYPE_SEV_SNP
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert len(collector.instances) == 4  # probe + three attempts
    assert list(tmp_path.iterdir()) == []


def test_wrong_provider_is_unavailable(tmp_path: Path) -> None:
    """An unsupported provider (arm_cca_guest) is UNAVAILABLE, never guessed at."""
    collector = KernelModelCollector(tmp_path, provider="arm_cca_guest")
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert exc.value.actual == "arm_cca_guest"
    assert collector.writes == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [0, 1000, 1185, 4000])
def test_wrong_outblob_size_is_malformed(tmp_path: Path, size: int) -> None:
    """An outblob that is not exactly 1184 bytes is MALFORMED."""
    collector = KernelModelCollector(tmp_path, outblob_size=size)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED
    assert list(tmp_path.iterdir()) == []


def test_report_with_foreign_report_data_is_binding(tmp_path: Path) -> None:
    """A report that does not carry our report_data is refused (BINDING)."""

    class Swapping(KernelModelCollector):
        def _write_attr(self, path: Path, data: bytes) -> None:
            super()._write_attr(path, data)
            if path.name == "inblob":
                base = parse_report(BASE_REPORT.read_bytes())
                (path.parent / "outblob").write_bytes(
                    build_report(base.with_changes(report_data=bytes(64)))
                )

    with pytest.raises(KeybrokerError) as exc:
        Swapping(tmp_path).collect(REPORT_DATA)
    assert exc.value.category is Category.BINDING


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_must_be_64_bytes(tmp_path: Path, size: int) -> None:
    """inblob is exactly 64 bytes: other sizes are MALFORMED before touching the tree."""
    collector = KernelModelCollector(tmp_path)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(bytes(size))
    assert exc.value.category is Category.MALFORMED
    assert collector.instances == []


def test_missing_root_is_unavailable(tmp_path: Path) -> None:
    """Without the configfs directory the collector is unavailable and collect says so."""
    collector = ConfigfsTsmCollector(tmp_path / "absent")
    assert collector.available() is False
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE


def test_available_checks_provider(tmp_path: Path) -> None:
    """available() is true for sev_guest and false for an unsupported provider."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert KernelModelCollector(tmp_path / "a").available() is True
    assert KernelModelCollector(tmp_path / "b", provider="arm_cca_guest").available() is False
    assert list((tmp_path / "a").iterdir()) == []


def test_plain_directory_is_not_detected(tmp_path: Path) -> None:
    """A directory that does not behave like configfs-tsm is not listed by detect()."""
    found = detect(tsm_root=tmp_path, sev_guest_device=tmp_path / "sev-guest")
    assert found == []
    assert list(tmp_path.iterdir()) == []


def test_collector_identity(tmp_path: Path) -> None:
    """The collector names itself configfs-tsm; its TEE follows the provider."""
    (tmp_path / "snp").mkdir()
    (tmp_path / "tdx").mkdir()
    assert ConfigfsTsmCollector().name == "configfs-tsm"
    assert KernelModelCollector(tmp_path / "snp").tee == evidence_pb2.TEE_TYPE_SEV_SNP
    assert KernelModelCollector(tmp_path / "tdx", provider="tdx_guest").tee == (
        evidence_pb2.TEE_TYPE_TDX)


def test_tee_of_missing_root_is_unavailable(tmp_path: Path) -> None:
    """Without the configfs directory the TEE cannot be known: UNAVAILABLE."""
    with pytest.raises(KeybrokerError) as exc:
        _ = ConfigfsTsmCollector(tmp_path / "absent").tee
    assert exc.value.category is Category.UNAVAILABLE


def test_symlinked_attribute_is_not_followed(tmp_path: Path) -> None:
    """Attributes are opened with O_NOFOLLOW: a symlinked inblob is UNAVAILABLE."""

    class Linked(KernelModelCollector):
        def _make_instance(self, instance: Path) -> None:
            super()._make_instance(instance)
            (instance / "inblob").unlink()
            os.symlink(tmp_path / "elsewhere", instance / "inblob")

    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "root").mkdir()
    with pytest.raises(KeybrokerError) as exc:
        Linked(tmp_path / "root").collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert (tmp_path / "elsewhere").read_bytes() == b""


# --- tdx_guest provider: DCAP quotes with the CCEL and the runtime log -------------------------

IMAGE = "sha256:" + "ab" * 32


def acpi_tree(root: Path) -> CcelReader:
    """An ACPI tables directory holding the real GCE CCEL table and log area."""
    (root / "data").mkdir(parents=True)
    (root / "CCEL").write_bytes((GCE_TDX / "ccel_table.dat").read_bytes())
    (root / "data" / "CCEL").write_bytes((GCE_TDX / "ccel_data.dat").read_bytes())
    return CcelReader(root)


def tdx_collector(tmp_path: Path, *, interfere: int = 0,
                  outblob: bytes | None = None) -> KernelModelCollector:
    """A tdx_guest model with CCEL and runtime log sources in ``tmp_path``."""
    (tmp_path / "tsm").mkdir()
    sources = TdxSources(ccel=acpi_tree(tmp_path / "acpi"),
                         runtime_log=tmp_path / "run" / "runtime-events.jsonl")
    return KernelModelCollector(tmp_path / "tsm", provider="tdx_guest", tdx_sources=sources,
                                interfere=interfere, outblob=outblob)


def write_log(collector: ConfigfsTsmCollector, content: bytes) -> Path:
    """Put ``content`` at the collector's runtime log path."""
    path = collector.tdx_sources.runtime_log
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_tdx_quote_with_ccel_and_runtime_log(tmp_path: Path) -> None:
    """tdx_guest: the outblob quote, the CCEL and the runtime log form TdxEvidence."""
    collector = tdx_collector(tmp_path)
    log = b'{"mr":3,"kind":"image","value":"' + IMAGE.encode() + b'"}\n'
    write_log(collector, log)
    assert collector.available()
    assert collector.tee == evidence_pb2.TEE_TYPE_TDX
    evidence = collector.collect(REPORT_DATA)
    assert evidence.WhichOneof("kind") == "tdx"
    assert parse_tdx_quote(evidence.tdx.quote).td_report.report_data == REPORT_DATA
    assert evidence.tdx.ccel_table == (GCE_TDX / "ccel_table.dat").read_bytes()
    assert evidence.tdx.ccel_data == (GCE_TDX / "ccel_data.dat").read_bytes()
    assert evidence.tdx.runtime_log == log
    assert collector.writes == [("inblob", REPORT_DATA)]
    assert list((tmp_path / "tsm").iterdir()) == []


def test_tdx_ccel_replays_to_the_quoted_rtmrs(tmp_path: Path) -> None:
    """The CCEL sent with the (real GCE) quote replays to its RTMRs on the verifier side."""
    from keybroker.evidence.ccel import parse_ccel_log, parse_ccel_table  # noqa: PLC0415
    from verifier.eventlog.rtmr import check_rtmrs  # noqa: PLC0415

    evidence = tdx_collector(tmp_path).collect(REPORT_DATA)
    table = parse_ccel_table(evidence.tdx.ccel_table)
    events = parse_ccel_log(evidence.tdx.ccel_data, table).events
    check_rtmrs(events, parse_tdx_quote(evidence.tdx.quote).td_report.rtmrs)


def test_tdx_without_ccel_or_runtime_log(tmp_path: Path) -> None:
    """No CCEL table and no runtime log: a quote alone, with empty CCEL and log fields."""
    (tmp_path / "tsm").mkdir()
    sources = TdxSources(ccel=CcelReader(tmp_path / "no-acpi"),
                         runtime_log=tmp_path / "absent.jsonl")
    collector = KernelModelCollector(tmp_path / "tsm", provider="tdx_guest", tdx_sources=sources)
    evidence = collector.collect(REPORT_DATA)
    assert evidence.tdx.quote
    assert evidence.tdx.ccel_table == b""
    assert evidence.tdx.ccel_data == b""
    assert evidence.tdx.runtime_log == b""


def test_tdx_generation_check_still_applies(tmp_path: Path) -> None:
    """An interfering writer costs the TDX path one retry as well."""
    collector = tdx_collector(tmp_path, interfere=1)
    assert collector.available()
    evidence = collector.collect(REPORT_DATA)
    assert parse_tdx_quote(evidence.tdx.quote).td_report.report_data == REPORT_DATA
    assert len(collector.instances) == 3


@pytest.mark.parametrize("outblob", [
    b"",
    b"\x04\x00" + bytes(100),
    SGX_QUOTE.read_bytes(),
    tdx_quote_for(REPORT_DATA) + b"\x01",
], ids=["empty", "truncated", "sgx-quote", "trailing-byte"])
def test_tdx_outblob_that_is_no_tdx_quote_is_malformed(tmp_path: Path, outblob: bytes) -> None:
    """An outblob that does not parse as a TDX quote (an SGX one included) is MALFORMED."""
    collector = tdx_collector(tmp_path, outblob=outblob)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED


def test_tdx_quote_with_foreign_report_data_is_binding(tmp_path: Path) -> None:
    """A TDX quote for other report_data is refused (BINDING)."""
    collector = tdx_collector(tmp_path, outblob=tdx_quote_for(bytes(64)))
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.BINDING


def test_provider_change_after_probe_is_unavailable(tmp_path: Path) -> None:
    """A provider that changes between the probe and the attempt is UNAVAILABLE."""
    collector = KernelModelCollector(tmp_path)
    assert collector.tee == evidence_pb2.TEE_TYPE_SEV_SNP
    collector.model_provider = "tdx_guest"
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert collector.writes == []


def test_tdx_runtime_log_is_share_locked_while_quoting(tmp_path: Path) -> None:
    """While the quote is generated nobody can take the log's exclusive (measure) lock."""
    import fcntl  # noqa: PLC0415

    seen: list[bool] = []

    class Probing(KernelModelCollector):
        def _write_attr(self, path: Path, data: bytes) -> None:
            super()._write_attr(path, data)
            log = self.tdx_sources.runtime_log
            assert log is not None
            fd = os.open(log, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                seen.append(True)
            else:
                seen.append(False)
            finally:
                os.close(fd)

    (tmp_path / "tsm").mkdir()
    sources = TdxSources(ccel=CcelReader(tmp_path / "none"), runtime_log=tmp_path / "log")
    collector = Probing(tmp_path / "tsm", provider="tdx_guest", tdx_sources=sources)
    write_log(collector, b"")
    collector.collect(REPORT_DATA)
    assert seen == [True]


def test_tdx_log_appearing_while_quoting_is_retried(tmp_path: Path) -> None:
    """A runtime log created during quoting makes the collector quote again, with the log."""
    log = b'{"mr":3,"kind":"image","value":"' + IMAGE.encode() + b'"}\n'

    class Appearing(KernelModelCollector):
        def _write_attr(self, path: Path, data: bytes) -> None:
            super()._write_attr(path, data)
            if not self.writes[:-1]:
                write_log(self, log)

    (tmp_path / "tsm").mkdir()
    sources = TdxSources(ccel=CcelReader(tmp_path / "none"), runtime_log=tmp_path / "r" / "log")
    collector = Appearing(tmp_path / "tsm", provider="tdx_guest", tdx_sources=sources)
    evidence = collector.collect(REPORT_DATA)
    assert evidence.tdx.runtime_log == log
    assert len(collector.writes) == 2


@pytest.mark.parametrize("content", [
    b'{"mr":3,"kind":"image","value":"' + IMAGE.encode() + b'"}',  # torn: no newline
    b"not json\n",
], ids=["torn", "garbage"])
def test_tdx_bad_runtime_log_is_malformed(tmp_path: Path, content: bytes) -> None:
    """A runtime log that does not parse is MALFORMED before anything is quoted."""
    collector = tdx_collector(tmp_path)
    write_log(collector, content)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED
    assert collector.writes == []


def test_tdx_symlinked_runtime_log_is_refused(tmp_path: Path) -> None:
    """A runtime log path that is a symlink is refused (UNAVAILABLE), not followed."""
    collector = tdx_collector(tmp_path)
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b"")
    path = collector.tdx_sources.runtime_log
    assert path is not None
    path.parent.mkdir()
    path.symlink_to(target)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert collector.writes == []

