"""INSECURE: TDX and SGX evidence from the DCAP simulator (``attester_agent.simulator.dcap``)
signed under a test CA kept in the simulator directory.

Simulator directory layout (``SimulatorLayout``; SEV-SNP keeps its CA files at the top):
- ``DIR/dcap/``: the DCAP test CA (``DcapTestCa.save`` / ``DcapTestCa.load``);
- ``DIR/tdx/rtmr3``: the simulated RTMR3, 48 bytes (absent = zero), extended by
  ``attester-agent measure --insecure-simulator`` exactly like the real register;
- ``DIR/tdx/runtime-events.jsonl``: the simulated TD's runtime event log.

Invariants:
- Constructed only with ``insecure=True`` passed explicitly (``InsecureSimulatorRefused``
  otherwise); never returned by detection or automatic selection; every construction and every
  collection logs a WARNING.
- Quotes carry exactly the requested report_data (checked like hardware quotes).
- TDX: MRCONFIGID defaults to SHA-384 of the init-data when init-data is given (as a host puts
  it at TD creation; zero otherwise). RTMR3 is read from ``DIR/tdx/rtmr3`` under the runtime
  log's shared lock, so the quote, the log sent with it and the register always agree; the
  CCEL sent is the simulator's, which replays to its RTMR0-2.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.ccel import Ccel
from attester_agent.collectors.simulator import SIMULATOR_CA_HINT, InsecureSimulatorRefused
from attester_agent.collectors.tdx_evidence import TdxSources, collect_tdx
from attester_agent.measure import SimulatedRtmr
from attester_agent.simulator.dcap import (
    DEFAULT_MR_ENCLAVE,
    DEFAULT_MR_SIGNER,
    SGX_ATTRIBUTES_PRODUCTION,
    TD_ATTRIBUTES_SEPT_VE_DISABLE,
    DcapTestCa,
    SgxSimulator,
    TdxSimulator,
)
from attester_agent.simulator.dcap_collateral import TCB_CHOICES
from keybroker.errors import BindingMismatch, Unavailable
from keybroker.evidence.dcap_quote import parse_sgx_quote
from keybroker.evidence.dcap_signature import SGX_FLAGS_DEBUG
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

TD_ATTRIBUTES_DEBUG: Final = 1 << 0
MR_CONFIG_ID_SIZE: Final = 48


@dataclass(frozen=True)
class SimulatorLayout:
    """Paths inside a simulator directory (see the module docstring)."""

    root: Path

    @property
    def dcap_ca(self) -> Path:
        """The DCAP test CA directory."""
        return self.root / "dcap"

    @property
    def tdx_dir(self) -> Path:
        """The simulated TD's state directory."""
        return self.root / "tdx"

    @property
    def rtmr3(self) -> Path:
        """The simulated RTMR3 file."""
        return self.tdx_dir / "rtmr3"

    @property
    def runtime_log(self) -> Path:
        """The simulated TD's runtime event log."""
        return self.tdx_dir / "runtime-events.jsonl"


def _refuse_unless_insecure(insecure: object, what: str) -> None:
    if insecure is not True:
        raise InsecureSimulatorRefused(
            f"the {what} simulator produces evidence under an INSECURE test root; it must be "
            "enabled explicitly (insecure=True / --insecure-simulator)")


def _check_tcb(tcb: str) -> None:
    if tcb not in TCB_CHOICES:
        raise ValueError(f"unknown simulator TCB {tcb!r}; one of {', '.join(TCB_CHOICES)}")


def _load_ca(layout: SimulatorLayout) -> DcapTestCa:
    try:
        return DcapTestCa.load(layout.dcap_ca)
    except (OSError, ValueError, TypeError) as exc:
        raise Unavailable(f"cannot load the DCAP simulator test CA from {layout.dcap_ca}",
                          expected=SIMULATOR_CA_HINT, actual=str(exc)) from exc


@dataclass(frozen=True)
class _SimulatorCcel:
    table: bytes
    data: bytes

    def read(self) -> Ccel:
        return Ccel(table=self.table, data=self.data)


class TdxSimulatorCollector:
    """Simulated TDX quotes, CCEL and runtime log under the DCAP test CA. INSECURE."""

    name: Final = "simulator"
    tee: Final = evidence_pb2.TEE_TYPE_TDX

    def __init__(
        self,
        sim_dir: Path,
        *,
        insecure: bool = False,
        version: int = 4,
        mr_td: bytes | None = None,
        td_attributes: int | None = None,
        debug: bool = False,
        mr_config_id: bytes | None = None,
        init_data: bytes = b"",
        tcb: str = "UpToDate",
        runtime_log: Path | None = None,
    ) -> None:
        _refuse_unless_insecure(insecure, "TDX")
        _check_tcb(tcb)
        if version not in (4, 5):
            raise ValueError(f"simulated TDX quote version must be 4 or 5, got {version}")
        if mr_config_id is not None and len(mr_config_id) != MR_CONFIG_ID_SIZE:
            raise ValueError(f"mr_config_id must be {MR_CONFIG_ID_SIZE} bytes")
        if mr_config_id is None:
            mr_config_id = (hashlib.sha384(init_data).digest() if init_data
                            else bytes(MR_CONFIG_ID_SIZE))
        self.layout = SimulatorLayout(sim_dir)
        attributes = (td_attributes if td_attributes is not None
                      else TD_ATTRIBUTES_SEPT_VE_DISABLE) | (TD_ATTRIBUTES_DEBUG if debug else 0)
        self._simulator = TdxSimulator(_load_ca(self.layout), version=version, mr_td=mr_td,
                                       td_attributes=attributes, mr_config_id=mr_config_id,
                                       tcb=tcb)
        self._register = SimulatedRtmr(self.layout.rtmr3)
        table, data = self._simulator.ccel()
        self.sources = TdxSources(ccel=_SimulatorCcel(table, data),
                                  runtime_log=runtime_log or self.layout.runtime_log)
        logger.warning("INSECURE: using the TDX SIMULATOR with the test CA in %s; its evidence "
                       "proves nothing about real hardware", self.layout.dcap_ca)

    @property
    def simulator(self) -> TdxSimulator:
        """The underlying quote simulator (MRTD, RTMRs, CCEL)."""
        return self._simulator

    def available(self) -> bool:
        """Always True once constructed (construction already required the insecure flag)."""
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """A simulated quote for ``report_data`` with the simulator's CCEL and runtime log."""
        logger.warning("INSECURE: producing SIMULATED TDX evidence (test CA in %s)",
                       self.layout.dcap_ca)
        return collect_tdx(self._quote, report_data, self.sources, source="simulator")

    def _quote(self, report_data: bytes) -> bytes:
        try:
            self._simulator.rtmr3 = self._register.read()
        except OSError as exc:
            raise Unavailable("cannot read the simulated RTMR3", rule="simulator RTMR3",
                              expected=f"48 bytes in {self.layout.rtmr3}",
                              actual=str(exc)) from exc
        return self._simulator.quote(report_data)


class SgxSimulatorCollector:
    """Simulated SGX v3 quotes under the DCAP test CA. INSECURE."""

    name: Final = "simulator"
    tee: Final = evidence_pb2.TEE_TYPE_SGX

    def __init__(
        self,
        sim_dir: Path,
        *,
        insecure: bool = False,
        mr_enclave: bytes | None = None,
        mr_signer: bytes | None = None,
        isv_prod_id: int = 1,
        isv_svn: int = 1,
        debug: bool = False,
        tcb: str = "UpToDate",
    ) -> None:
        _refuse_unless_insecure(insecure, "SGX")
        _check_tcb(tcb)
        self.layout = SimulatorLayout(sim_dir)
        attributes = SGX_ATTRIBUTES_PRODUCTION
        if debug:
            flags = int.from_bytes(attributes[:8], "little") | SGX_FLAGS_DEBUG
            attributes = flags.to_bytes(8, "little") + attributes[8:]
        self._simulator = SgxSimulator(
            _load_ca(self.layout),
            mr_enclave=mr_enclave if mr_enclave is not None else DEFAULT_MR_ENCLAVE,
            mr_signer=mr_signer if mr_signer is not None else DEFAULT_MR_SIGNER,
            isv_prod_id=isv_prod_id, isv_svn=isv_svn, attributes=attributes, tcb=tcb)
        logger.warning("INSECURE: using the SGX SIMULATOR with the test CA in %s; its evidence "
                       "proves nothing about real hardware", self.layout.dcap_ca)

    def available(self) -> bool:
        """Always True once constructed (construction already required the insecure flag)."""
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """A simulated SGX quote v3 carrying ``report_data``."""
        check_report_data(report_data)
        logger.warning("INSECURE: producing SIMULATED SGX evidence (test CA in %s)",
                       self.layout.dcap_ca)
        quote = self._simulator.quote(report_data)
        found = parse_sgx_quote(quote).sgx_report.report_data
        if found != report_data:  # pragma: no cover - the simulator signs what it is given
            raise BindingMismatch("simulated SGX quote carries another report_data",
                                  expected=report_data.hex(), actual=found.hex())
        return evidence_pb2.Evidence(sgx=evidence_pb2.SgxEvidence(quote=quote))
