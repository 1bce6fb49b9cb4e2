"""The INSECURE TDX simulator collector: opt-in, layout, options, CCEL and measured RTMR3."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from attester_agent import measure
from attester_agent.cli import main
from attester_agent.collectors import registry
from attester_agent.collectors.simulator import InsecureSimulatorRefused
from attester_agent.collectors.simulator_dcap import SimulatorLayout, TdxSimulatorCollector
from attester_agent.simulator import dcap_collateral
from attester_agent.simulator.dcap import DcapTestCa
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.ccel import parse_ccel_log, parse_ccel_table
from keybroker.evidence.dcap_quote import parse_tdx_quote
from keybroker.evidence.runtime_log import extend, image_event, parse_runtime_log
from keybroker.v1 import evidence_pb2
from verifier.eventlog.rtmr import check_rtmrs

REPORT_DATA = hashlib.sha512(b"simulated tdx").digest()
IMAGE_A = "sha256:" + "a1" * 32
IMAGE_B = "sha256:" + "b2" * 32


@pytest.fixture(scope="module")
def ca() -> DcapTestCa:
    """One DCAP test CA for the module."""
    return DcapTestCa.generate()


@pytest.fixture
def sim_dir(tmp_path: Path, ca: DcapTestCa) -> Path:
    """A simulator directory with the DCAP CA saved at DIR/dcap."""
    ca.save(SimulatorLayout(tmp_path).dcap_ca)
    return tmp_path


def quote_of(evidence: evidence_pb2.Evidence) -> bytes:
    """The TDX quote in ``evidence``."""
    assert evidence.WhichOneof("kind") == "tdx"
    return evidence.tdx.quote


@pytest.mark.parametrize("flag", [None, False, 1, "yes"])
def test_refused_without_explicit_insecure_flag(sim_dir: Path, flag: object) -> None:
    """Only insecure=True (the literal) enables the TDX simulator."""
    with pytest.raises(InsecureSimulatorRefused):
        if flag is None:
            TdxSimulatorCollector(sim_dir)
        else:
            TdxSimulatorCollector(sim_dir, insecure=flag)  # type: ignore[arg-type]


def test_missing_ca_is_unavailable(tmp_path: Path) -> None:
    """Without DIR/dcap the simulator cannot sign: UNAVAILABLE."""
    with pytest.raises(KeybrokerError) as exc:
        TdxSimulatorCollector(tmp_path, insecure=True)
    assert exc.value.category is Category.UNAVAILABLE


def test_quote_carries_report_data_and_ccel_replays(sim_dir: Path) -> None:
    """A v4 TDX quote for exactly our report_data; its CCEL replays to all four RTMRs."""
    collector = TdxSimulatorCollector(sim_dir, insecure=True)
    assert collector.name == "simulator"
    assert collector.tee == evidence_pb2.TEE_TYPE_TDX
    evidence = collector.collect(REPORT_DATA)
    quote = parse_tdx_quote(quote_of(evidence))
    assert quote.header.version == 4
    assert quote.td_report.report_data == REPORT_DATA
    assert quote.td_report.mr_config_id == bytes(48)
    assert not quote.td_report.debug
    table = parse_ccel_table(evidence.tdx.ccel_table)
    check_rtmrs(parse_ccel_log(evidence.tdx.ccel_data, table).events, quote.td_report.rtmrs)
    assert quote.td_report.rtmrs[3] == bytes(48)
    assert evidence.tdx.runtime_log == b""


def test_mr_config_id_is_sha384_of_init_data(sim_dir: Path) -> None:
    """With init-data, MRCONFIGID = SHA-384(init-data), as a host sets it at TD creation."""
    init_data = b'{"policy": "demo"}'
    evidence = TdxSimulatorCollector(sim_dir, insecure=True, init_data=init_data).collect(
        REPORT_DATA)
    body = parse_tdx_quote(quote_of(evidence)).td_report
    assert body.mr_config_id == hashlib.sha384(init_data).digest()


def test_explicit_mr_config_id_wins(sim_dir: Path) -> None:
    """An explicit MRCONFIGID overrides the init-data digest (for negative tests)."""
    evidence = TdxSimulatorCollector(sim_dir, insecure=True, init_data=b"x",
                                     mr_config_id=b"\x07" * 48).collect(REPORT_DATA)
    assert parse_tdx_quote(quote_of(evidence)).td_report.mr_config_id == b"\x07" * 48


def test_options_shape_the_quote(sim_dir: Path) -> None:
    """MRTD, TD attributes, debug, quote version and TCB reach the quote."""
    mrtd = bytes(range(48))
    collector = TdxSimulatorCollector(sim_dir, insecure=True, version=5, mr_td=mrtd,
                                      td_attributes=0x40000000, debug=True, tcb="OutOfDate")
    quote = parse_tdx_quote(quote_of(collector.collect(REPORT_DATA)))
    assert quote.header.version == 5
    assert quote.td_report.mr_td == mrtd
    assert quote.td_report.td_attributes == 0x40000001
    assert quote.td_report.debug
    assert quote.td_report.tee_tcb_svn == dcap_collateral.tee_tcb_svn("OutOfDate")


def test_default_attributes_are_a_production_linux_td(sim_dir: Path) -> None:
    """Default TD attributes: SEPT_VE_DISABLE only; --sim-debug adds bit 0."""
    plain = TdxSimulatorCollector(sim_dir, insecure=True).collect(REPORT_DATA)
    debug = TdxSimulatorCollector(sim_dir, insecure=True, debug=True).collect(REPORT_DATA)
    assert parse_tdx_quote(quote_of(plain)).td_report.td_attributes == 1 << 28
    assert parse_tdx_quote(quote_of(debug)).td_report.td_attributes == (1 << 28) | 1


@pytest.mark.parametrize("kw", [{"tcb": "Great"}, {"version": 3}, {"mr_td": bytes(47)},
                                {"mr_config_id": bytes(32)}])
def test_bad_options_are_value_errors(sim_dir: Path, kw: dict[str, object]) -> None:
    """Unknown TCB names, versions and wrong sizes are refused at construction."""
    with pytest.raises(ValueError):
        TdxSimulatorCollector(sim_dir, insecure=True, **kw)  # type: ignore[arg-type]


def test_measured_images_replay_to_rtmr3(sim_dir: Path) -> None:
    """After `measure`, the quoted RTMR3 == replay of the runtime log sent with it."""
    layout = SimulatorLayout(sim_dir)
    layout.tdx_dir.mkdir()
    for image in (IMAGE_A, IMAGE_B):
        measure.measure_image(image, log_path=layout.runtime_log,
                              register=measure.SimulatedRtmr(layout.rtmr3))
    evidence = TdxSimulatorCollector(sim_dir, insecure=True).collect(REPORT_DATA)
    quote = parse_tdx_quote(quote_of(evidence))
    assert evidence.tdx.runtime_log == layout.runtime_log.read_bytes()
    events = parse_runtime_log(evidence.tdx.runtime_log)
    assert [e.value for e in events] == [IMAGE_A, IMAGE_B]
    rtmr3 = bytes(48)
    for event in events:
        rtmr3 = extend(rtmr3, event)
    assert quote.td_report.rtmrs[3] == rtmr3
    assert rtmr3 == extend(extend(bytes(48), image_event(IMAGE_A)), image_event(IMAGE_B))
    table = parse_ccel_table(evidence.tdx.ccel_table)
    ccel = parse_ccel_log(evidence.tdx.ccel_data, table).events
    check_rtmrs(ccel, (*quote.td_report.rtmrs[:3], bytes(48)))  # CCEL covers RTMR0-2 only


def test_measure_between_collections_moves_rtmr3(sim_dir: Path) -> None:
    """One collector sees each new measurement: RTMR3 is read at every quote."""
    layout = SimulatorLayout(sim_dir)
    collector = TdxSimulatorCollector(sim_dir, insecure=True)
    before = parse_tdx_quote(quote_of(collector.collect(REPORT_DATA))).td_report.rtmrs[3]
    assert main(["measure", "--image", IMAGE_A, "--insecure-simulator",
                 "--simulator-dir", str(sim_dir)]) == 0
    evidence = collector.collect(REPORT_DATA)
    after = parse_tdx_quote(quote_of(evidence)).td_report.rtmrs[3]
    assert before == bytes(48)
    assert after == extend(bytes(48), image_event(IMAGE_A)) == layout.rtmr3.read_bytes()
    assert parse_runtime_log(evidence.tdx.runtime_log) == (image_event(IMAGE_A),)


def test_runtime_log_path_can_be_overridden(sim_dir: Path, tmp_path: Path) -> None:
    """runtime_log= points the simulator at another log (RTMR3 still from DIR/tdx/rtmr3)."""
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"")
    evidence = TdxSimulatorCollector(sim_dir, insecure=True, runtime_log=other).collect(
        REPORT_DATA)
    assert evidence.tdx.runtime_log == b""


def test_corrupt_register_is_unavailable(sim_dir: Path) -> None:
    """A simulated RTMR3 file that is not 48 bytes is UNAVAILABLE, not silently reset."""
    layout = SimulatorLayout(sim_dir)
    layout.tdx_dir.mkdir()
    layout.rtmr3.write_bytes(bytes(47))
    with pytest.raises(KeybrokerError) as exc:
        TdxSimulatorCollector(sim_dir, insecure=True).collect(REPORT_DATA)
    assert exc.value.category is Category.UNAVAILABLE


def test_detect_never_lists_the_simulator(sim_dir: Path) -> None:
    """A simulator directory is invisible to detection and automatic selection."""
    assert registry.detect(tsm_root=sim_dir, sev_guest_device=sim_dir / "sev",
                           tdx_guest_device=sim_dir / "tdx", attestation_dir=sim_dir) == []
    with pytest.raises(KeybrokerError) as exc:
        registry.auto_select(tsm_root=sim_dir, sev_guest_device=sim_dir / "sev",
                             tdx_guest_device=sim_dir / "tdx", attestation_dir=sim_dir)
    assert exc.value.category is Category.UNAVAILABLE
