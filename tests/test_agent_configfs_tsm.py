"""configfs-tsm collector against a temporary directory tree that models the kernel's report.c.

The tree is a real directory; ``KernelModelCollector`` only adds what configfs does on its own
(populating a new instance, bumping ``generation`` on writes, dropping attributes on rmdir).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from attester_agent.collectors.configfs_tsm import ConfigfsTsmCollector
from attester_agent.collectors.registry import detect
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_report import build_report, parse_report
from keybroker.v1 import evidence_pb2

BASE_REPORT = Path(__file__).parent / "vectors/sev-snp/teekit-gcp-milan-v5/sev-gcp.bin"
AUX = b"\x01" * 24 + bytes(24) + b"certificate-bytes"


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
        **kw: object,
    ) -> None:
        super().__init__(root, **kw)  # type: ignore[arg-type]
        self.model_provider = provider
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
            base = parse_report(BASE_REPORT.read_bytes())
            report = build_report(base.with_changes(report_data=data))
            if self.outblob_size is not None:
                report = (report * 2)[: self.outblob_size]
            (path.parent / "outblob").write_bytes(report)
            if self.with_auxblob:
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
    assert len(collector.instances) == 1
    assert list(tmp_path.iterdir()) == []  # instance removed


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
    evidence = collector.collect(REPORT_DATA)
    assert parse_report(evidence.snp.report).report_data == REPORT_DATA
    assert len(collector.instances) == 2
    assert list(tmp_path.iterdir()) == []


def test_generation_mismatch_every_time_is_unavailable(tmp_path: Path) -> None:
    """Interference on every attempt ends in UNAVAILABLE after the bounded retries."""
    collector = KernelModelCollector(tmp_path, interfere=100, max_attempts=3)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert len(collector.instances) == 3
    assert list(tmp_path.iterdir()) == []


def test_wrong_provider_is_unavailable(tmp_path: Path) -> None:
    """A tdx_guest provider is not used for SNP evidence."""
    collector = KernelModelCollector(tmp_path, provider="tdx_guest")
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert exc.value.actual == "tdx_guest"
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


def test_collector_identity() -> None:
    """The collector names itself configfs-tsm and produces SEV-SNP evidence."""
    collector = ConfigfsTsmCollector()
    assert collector.name == "configfs-tsm"
    assert collector.tee == evidence_pb2.TEE_TYPE_SEV_SNP


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
