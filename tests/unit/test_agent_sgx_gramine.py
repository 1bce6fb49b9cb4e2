"""SGX inside Gramine: the /dev/attestation pseudo-files, modelled on a temporary directory.

``GramineModel`` adds what Gramine does on its own: a write to ``user_report_data`` makes the
next read of ``quote`` return a DCAP quote for it (here a simulated, test-CA-signed SGX quote).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from attester_agent.collectors.gramine import GramineSgxCollector
from attester_agent.collectors.registry import GRAMINE, create, detect
from attester_agent.simulator.dcap import DcapTestCa, SgxSimulator, TdxSimulator
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.dcap_quote import MAX_QUOTE_SIZE, parse_sgx_quote
from keybroker.v1 import evidence_pb2

REPORT_DATA = hashlib.sha512(b"gramine").digest()
MR_ENCLAVE = hashlib.sha256(b"my enclave").digest()


@pytest.fixture(scope="module")
def ca() -> DcapTestCa:
    """A DCAP test CA."""
    return DcapTestCa.generate()


@pytest.fixture(scope="module")
def enclave(ca: DcapTestCa) -> SgxSimulator:
    """The simulated enclave Gramine runs."""
    return SgxSimulator(ca, mr_enclave=MR_ENCLAVE)


def attestation_dir(root: Path, kind: str = "dcap") -> Path:
    """A /dev/attestation tree with the given attestation_type."""
    root.mkdir(parents=True)
    (root / "attestation_type").write_text(kind)
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "quote").write_bytes(b"")
    return root


class GramineModel(GramineSgxCollector):
    """The collector on a plain directory, with Gramine's quote generation emulated."""

    def __init__(self, root: Path, enclave: SgxSimulator, *, interfere: int = 0,
                 quote: bytes | None = None, **kw: int) -> None:
        super().__init__(root, **kw)
        self.enclave = enclave
        self.interfere = interfere
        self.fixed_quote = quote
        self.writes: list[bytes] = []

    def _write_file(self, path: Path, data: bytes) -> None:
        super()._write_file(path, data)
        self.writes.append(data)
        if self.interfere:  # another thread of the enclave wrote its own report data
            self.interfere -= 1
            data = bytes(64)
        quote = self.fixed_quote if self.fixed_quote is not None else self.enclave.quote(data)
        (path.parent / "quote").write_bytes(quote)


def test_quote_for_report_data(tmp_path: Path, enclave: SgxSimulator) -> None:
    """One 64-byte write, one quote read: an SGX v3 quote carrying exactly our report_data."""
    root = attestation_dir(tmp_path / "attestation")
    collector = GramineModel(root, enclave)
    assert collector.available()
    evidence = collector.collect(REPORT_DATA)
    assert evidence.WhichOneof("kind") == "sgx"
    quote = parse_sgx_quote(evidence.sgx.quote)
    assert quote.header.version == 3
    assert quote.sgx_report.report_data == REPORT_DATA
    assert quote.sgx_report.mr_enclave == MR_ENCLAVE
    assert collector.writes == [REPORT_DATA]
    assert (root / "user_report_data").read_bytes() == REPORT_DATA
    assert collector.tee == evidence_pb2.TEE_TYPE_SGX
    assert collector.name == "gramine"


def test_interfering_writer_is_retried(tmp_path: Path, enclave: SgxSimulator) -> None:
    """A quote for someone else's report data costs one retry."""
    collector = GramineModel(attestation_dir(tmp_path / "a"), enclave, interfere=1)
    evidence = collector.collect(REPORT_DATA)
    assert parse_sgx_quote(evidence.sgx.quote).sgx_report.report_data == REPORT_DATA
    assert collector.writes == [REPORT_DATA, REPORT_DATA]


def test_foreign_report_data_every_time_is_binding(tmp_path: Path, enclave: SgxSimulator) -> None:
    """Interference on every attempt ends in BINDING after the bounded retries."""
    collector = GramineModel(attestation_dir(tmp_path / "a"), enclave, interfere=100,
                             max_attempts=3)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.BINDING
    assert len(collector.writes) == 3


@pytest.mark.parametrize("kind", ["none", "epid", "", "dcap-ish"])
def test_other_attestation_types_are_unavailable(
    tmp_path: Path, enclave: SgxSimulator, kind: str
) -> None:
    """Only attestation_type "dcap" is used; nothing is written otherwise."""
    collector = GramineModel(attestation_dir(tmp_path / "a", kind), enclave)
    assert collector.available() is False
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert collector.writes == []


def test_outside_gramine_is_unavailable(tmp_path: Path) -> None:
    """Without /dev/attestation the collector is unavailable and collect says so."""
    collector = GramineSgxCollector(tmp_path / "absent")
    assert collector.available() is False
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE


def test_tdx_quote_is_malformed(tmp_path: Path, enclave: SgxSimulator, ca: DcapTestCa) -> None:
    """A TDX quote where an SGX quote belongs is type confusion: MALFORMED."""
    tdx = TdxSimulator(ca).quote(REPORT_DATA)
    collector = GramineModel(attestation_dir(tmp_path / "a"), enclave, quote=tdx)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED


@pytest.mark.parametrize("quote", [b"", b"\x03\x00\x02\x00" + bytes(60)], ids=["empty", "short"])
def test_unparsable_quote_is_malformed(tmp_path: Path, enclave: SgxSimulator,
                                       quote: bytes) -> None:
    """An empty or truncated quote is MALFORMED."""
    collector = GramineModel(attestation_dir(tmp_path / "a"), enclave, quote=quote)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED


def test_oversized_quote_is_malformed(tmp_path: Path, enclave: SgxSimulator) -> None:
    """A quote file larger than any quote is MALFORMED, never read whole."""
    collector = GramineModel(attestation_dir(tmp_path / "a"), enclave,
                             quote=bytes(MAX_QUOTE_SIZE + 1))
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(REPORT_DATA)
    assert exc.value.category is Category.MALFORMED


@pytest.mark.parametrize("size", [0, 32, 65])
def test_report_data_must_be_64_bytes(tmp_path: Path, enclave: SgxSimulator, size: int) -> None:
    """Anything but 64 bytes of report_data is MALFORMED before touching the files."""
    collector = GramineModel(attestation_dir(tmp_path / "a"), enclave)
    with pytest.raises(KeybrokerError) as exc:
        collector.collect(bytes(size))
    assert exc.value.category is Category.MALFORMED
    assert collector.writes == []


def test_symlinked_user_report_data_is_not_followed(
    tmp_path: Path, enclave: SgxSimulator
) -> None:
    """Pseudo-files are opened with O_NOFOLLOW: a symlinked user_report_data is UNAVAILABLE."""
    root = attestation_dir(tmp_path / "a")
    (root / "user_report_data").unlink()
    (tmp_path / "elsewhere").write_bytes(b"")
    (root / "user_report_data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeybrokerError) as exc:
        GramineModel(root, enclave).collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE
    assert (tmp_path / "elsewhere").read_bytes() == b""


def test_registry_knows_gramine(tmp_path: Path) -> None:
    """The registry creates the Gramine collector and detects a dcap attestation directory."""
    root = attestation_dir(tmp_path / "a")
    collector = create(GRAMINE, attestation_dir=root)
    assert isinstance(collector, GramineSgxCollector)
    found = detect(tsm_root=tmp_path / "tsm", sev_guest_device=tmp_path / "sev",
                   tdx_guest_device=tmp_path / "tdx", attestation_dir=root)
    assert [(d.name, d.detail) for d in found] == [(GRAMINE, f"{root} attestation_type=dcap")]
