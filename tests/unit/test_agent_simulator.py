"""The INSECURE simulator collector: explicit opt-in, loud warnings, exact report_data."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path

import pytest

from attester_agent.collectors import registry
from attester_agent.collectors.simulator import InsecureSimulatorRefused, SimulatorCollector
from attester_agent.simulator.snp import SnpTestCa
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_certs import GUID_ASK, GUID_VCEK, parse_cert_table
from keybroker.evidence.snp_report import SIGNING_KEY_VCEK, parse_report
from keybroker.v1 import evidence_pb2
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

REPORT_DATA = hashlib.sha512(b"simulated").digest()


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulator test CA saved to a directory (generated once per module)."""
    directory = tmp_path_factory.mktemp("sim-ca")
    SnpTestCa.generate("Milan").save(directory)
    return directory


@pytest.mark.parametrize("flag", [None, False, 1, "yes"])
def test_refused_without_explicit_insecure_flag(ca_dir: Path, flag: object) -> None:
    """Only insecure=True (the literal) enables the simulator."""
    with pytest.raises(InsecureSimulatorRefused):
        if flag is None:
            SimulatorCollector(ca_dir)
        else:
            SimulatorCollector(ca_dir, insecure=flag)  # type: ignore[arg-type]


def test_report_carries_requested_report_data(ca_dir: Path) -> None:
    """The simulated report carries exactly the 64 requested bytes, with its cert table."""
    collector = SimulatorCollector(ca_dir, insecure=True)
    evidence = collector.collect(REPORT_DATA)
    assert evidence.WhichOneof("kind") == "snp"
    report = parse_report(evidence.snp.report)
    assert report.report_data == REPORT_DATA
    assert report.signing_key == SIGNING_KEY_VCEK
    table = parse_cert_table(evidence.snp.cert_table)
    assert table.get(GUID_VCEK) is not None
    assert table.get(GUID_ASK) is not None
    assert collector.tee == evidence_pb2.TEE_TYPE_SEV_SNP
    assert collector.name == "simulator"


def test_options_shape_the_report(ca_dir: Path) -> None:
    """measurement, policy, vmpl and version reach the report."""
    measurement = bytes(range(48))
    collector = SimulatorCollector(ca_dir, insecure=True, measurement=measurement,
                                   policy=0x31000, vmpl=2, version=5)
    report = parse_report(collector.collect(REPORT_DATA).snp.report)
    assert report.measurement == measurement
    assert report.policy == 0x31000
    assert report.vmpl == 2
    assert report.version == 5


def test_host_data_defaults_to_sha256_of_init_data(ca_dir: Path) -> None:
    """HOST_DATA is SHA-256 of the init-data unless given explicitly."""
    init_data = b'{"workload": "demo"}'
    report = parse_report(SimulatorCollector(ca_dir, insecure=True, init_data=init_data)
                          .collect(REPORT_DATA).snp.report)
    assert report.host_data == hashlib.sha256(init_data).digest()
    explicit = bytes([7]) * 32
    report = parse_report(SimulatorCollector(ca_dir, insecure=True, init_data=init_data,
                                             host_data=explicit).collect(REPORT_DATA).snp.report)
    assert report.host_data == explicit
    report = parse_report(SimulatorCollector(ca_dir, insecure=True)
                          .collect(REPORT_DATA).snp.report)
    assert report.host_data == bytes(32)


@pytest.mark.parametrize("kwargs", [{"version": 4}, {"measurement": bytes(47)},
                                    {"host_data": bytes(33)}])
def test_bad_options_refused(ca_dir: Path, kwargs: dict[str, object]) -> None:
    """Out-of-range options are refused at construction."""
    with pytest.raises(ValueError):
        SimulatorCollector(ca_dir, insecure=True, **kwargs)  # type: ignore[arg-type]


def test_warns_loudly(ca_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Construction and every collection log an INSECURE warning."""
    with caplog.at_level(logging.WARNING):
        collector = SimulatorCollector(ca_dir, insecure=True)
        collector.collect(REPORT_DATA)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("INSECURE" in r.getMessage() for r in warnings)


def test_report_data_must_be_64_bytes(ca_dir: Path) -> None:
    """Anything but 64 bytes of report_data is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        SimulatorCollector(ca_dir, insecure=True).collect(b"short")
    assert exc.value.category is Category.MALFORMED


def test_missing_ca_is_unavailable(tmp_path: Path) -> None:
    """A directory without a test CA is UNAVAILABLE."""
    with pytest.raises(KeybrokerError) as exc:
        SimulatorCollector(tmp_path, insecure=True)
    assert exc.value.category is Category.UNAVAILABLE


def test_never_detected_or_created_by_registry(tmp_path: Path) -> None:
    """The registry knows no simulator: not detected, not creatable by name."""
    assert "simulator" not in registry.HARDWARE_COLLECTORS
    assert registry.detect(tsm_root=tmp_path / "t", sev_guest_device=tmp_path / "d") == []
    with pytest.raises(ValueError, match="unknown collector"):
        registry.create("simulator")
    with pytest.raises(KeybrokerError) as exc:
        registry.auto_select(tsm_root=tmp_path / "t", sev_guest_device=tmp_path / "d")
    assert exc.value.category is Category.UNAVAILABLE


def test_evidence_verifies_only_under_the_simulator_root(ca_dir: Path) -> None:
    """The verifier accepts simulated evidence only when the insecure test root is trusted."""
    evidence = SimulatorCollector(ca_dir, insecure=True).collect(REPORT_DATA)
    at = dt.datetime.now(dt.UTC)
    trusting = AmdTrustStore.pinned().with_simulator_roots([ca_dir / "ark.pem"])
    claims = SnpVerifier(trusting).verify(evidence.snp.report, evidence.snp.cert_table, at=at,
                                          allow_missing_crl=True)
    assert claims.as_dict()["report_data"] == REPORT_DATA.hex()
    assert claims.as_dict()["insecure_root"] is True
    with pytest.raises(KeybrokerError) as exc:
        SnpVerifier(AmdTrustStore.pinned()).verify(evidence.snp.report,
                                                   evidence.snp.cert_table, at=at)
    assert exc.value.category is Category.CHAIN_UNTRUSTED
