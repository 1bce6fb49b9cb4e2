"""INSECURE: SEV-SNP evidence from the software simulator signed by a test CA.

Invariants:
- Constructed only with ``insecure=True`` passed explicitly; otherwise construction is refused
  (``InsecureSimulatorRefused``). Never returned by detection or automatic selection.
- Every construction and every collection logs a WARNING saying the evidence is simulated.
- Reports carry exactly the requested report_data; HOST_DATA defaults to SHA-256 of the
  init-data when init-data is given, as a host would set it at launch.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Final

from attester_agent.collectors.base import check_report_data
from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Unavailable
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

SIMULATOR_CA_HINT = ("its CA files, as `keybroker demo --workdir DIR --prepare-only` writes "
                     "them into DIR/sim")

SUPPORTED_VERSIONS: Final = (3, 5)
DEFAULT_POLICY: Final = 0x30000
MEASUREMENT_SIZE: Final = 48
HOST_DATA_SIZE: Final = 32


class InsecureSimulatorRefused(RuntimeError):
    """The simulator collector was requested without the explicit insecure flag."""


class SimulatorCollector:
    """Simulated SEV-SNP reports under a test CA loaded from ``ca_dir``. INSECURE."""

    name: Final = "simulator"
    tee: Final = evidence_pb2.TEE_TYPE_SEV_SNP

    def __init__(
        self,
        ca_dir: Path,
        *,
        insecure: bool = False,
        measurement: bytes | None = None,
        policy: int = DEFAULT_POLICY,
        vmpl: int = 0,
        version: int = 3,
        host_data: bytes | None = None,
        init_data: bytes = b"",
    ) -> None:
        if insecure is not True:
            raise InsecureSimulatorRefused(
                "the SEV-SNP simulator produces evidence under an INSECURE test root; "
                "it must be enabled explicitly (insecure=True / --insecure-simulator)"
            )
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"simulator report version must be 3 or 5, got {version}")
        if measurement is not None and len(measurement) != MEASUREMENT_SIZE:
            raise ValueError(f"measurement must be {MEASUREMENT_SIZE} bytes")
        if host_data is not None and len(host_data) != HOST_DATA_SIZE:
            raise ValueError(f"host_data must be {HOST_DATA_SIZE} bytes")
        if host_data is None and init_data:
            host_data = hashlib.sha256(init_data).digest()
        self.ca_dir = ca_dir
        try:
            ca = SnpTestCa.load(ca_dir)
        except (OSError, ValueError) as exc:
            raise Unavailable(f"cannot load the simulator test CA from {ca_dir}",
                              expected=SIMULATOR_CA_HINT, actual=str(exc)) from exc
        self._simulator = SnpSimulator(
            ca,
            version=version,
            measurement=measurement if measurement is not None else bytes(MEASUREMENT_SIZE),
            host_data=host_data if host_data is not None else bytes(HOST_DATA_SIZE),
            policy=policy,
            vmpl=vmpl,
        )
        logger.warning(
            "INSECURE: using the SEV-SNP SIMULATOR with the test CA in %s; its evidence proves "
            "nothing about real hardware and must never be trusted in production", ca_dir
        )

    def available(self) -> bool:
        """Always True once constructed (construction already required the insecure flag)."""
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """A simulated, test-CA-signed report carrying ``report_data`` and its cert table."""
        check_report_data(report_data)
        logger.warning("INSECURE: producing SIMULATED SEV-SNP evidence (test CA in %s)",
                       self.ca_dir)
        report, cert_table = self._simulator.attest(report_data)
        return evidence_pb2.Evidence(
            snp=evidence_pb2.SnpEvidence(report=report, cert_table=cert_table)
        )
