"""The INSECURE SGX simulator collector: opt-in, enclave identity options, exact report_data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from attester_agent.collectors.simulator import InsecureSimulatorRefused
from attester_agent.collectors.simulator_dcap import SgxSimulatorCollector, SimulatorLayout
from attester_agent.simulator.dcap import DEFAULT_MR_ENCLAVE, DEFAULT_MR_SIGNER, DcapTestCa
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.dcap_quote import parse_sgx_quote
from keybroker.v1 import evidence_pb2

REPORT_DATA = hashlib.sha512(b"simulated sgx").digest()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulator directory with the DCAP CA saved at DIR/dcap."""
    directory = tmp_path_factory.mktemp("sim")
    DcapTestCa.generate().save(SimulatorLayout(directory).dcap_ca)
    return directory


@pytest.mark.parametrize("flag", [None, False, 1, "yes"])
def test_refused_without_explicit_insecure_flag(sim_dir: Path, flag: object) -> None:
    """Only insecure=True (the literal) enables the SGX simulator."""
    with pytest.raises(InsecureSimulatorRefused):
        if flag is None:
            SgxSimulatorCollector(sim_dir)
        else:
            SgxSimulatorCollector(sim_dir, insecure=flag)  # type: ignore[arg-type]


def test_quote_carries_report_data(sim_dir: Path) -> None:
    """An SGX v3 quote for exactly our report_data, production attributes by default."""
    collector = SgxSimulatorCollector(sim_dir, insecure=True)
    assert collector.name == "simulator"
    assert collector.tee == evidence_pb2.TEE_TYPE_SGX
    evidence = collector.collect(REPORT_DATA)
    assert evidence.WhichOneof("kind") == "sgx"
    quote = parse_sgx_quote(evidence.sgx.quote)
    assert quote.header.version == 3
    body = quote.sgx_report
    assert body.report_data == REPORT_DATA
    assert (body.mr_enclave, body.mr_signer) == (DEFAULT_MR_ENCLAVE, DEFAULT_MR_SIGNER)
    assert (body.isv_prod_id, body.isv_svn) == (1, 1)
    assert not body.debug


def test_identity_options_shape_the_quote(sim_dir: Path) -> None:
    """MRENCLAVE, MRSIGNER, ISVPRODID, ISVSVN and debug reach the report body."""
    collector = SgxSimulatorCollector(sim_dir, insecure=True, mr_enclave=b"\x01" * 32,
                                      mr_signer=b"\x02" * 32, isv_prod_id=7, isv_svn=9,
                                      debug=True)
    body = parse_sgx_quote(collector.collect(REPORT_DATA).sgx.quote).sgx_report
    assert body.mr_enclave == b"\x01" * 32
    assert body.mr_signer == b"\x02" * 32
    assert (body.isv_prod_id, body.isv_svn) == (7, 9)
    assert body.debug


@pytest.mark.parametrize("kw", [{"tcb": "Great"}, {"mr_enclave": bytes(31)},
                                {"mr_signer": bytes(48)}])
def test_bad_options_are_value_errors(sim_dir: Path, kw: dict[str, object]) -> None:
    """Unknown TCB names and wrong sizes are refused at construction."""
    with pytest.raises(ValueError):
        SgxSimulatorCollector(sim_dir, insecure=True, **kw)  # type: ignore[arg-type]


def test_missing_ca_is_unavailable(tmp_path: Path) -> None:
    """Without DIR/dcap the simulator cannot sign: UNAVAILABLE."""
    with pytest.raises(KeybrokerError) as exc:
        SgxSimulatorCollector(tmp_path, insecure=True)
    assert exc.value.category is Category.UNAVAILABLE


@pytest.mark.parametrize("size", [0, 63, 65])
def test_report_data_must_be_64_bytes(sim_dir: Path, size: int) -> None:
    """Anything but 64 bytes of report_data is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        SgxSimulatorCollector(sim_dir, insecure=True).collect(bytes(size))
    assert exc.value.category is Category.MALFORMED
