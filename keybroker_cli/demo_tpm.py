"""The demo's TPM machines: swtpm instances under the demo's simulator directory, each booted
with a simulated UEFI boot of one kernel, and enrolled with the demo's verifier through the
broker. INSECURE: swtpm's local CA is a test CA the verifier trusts only with its insecure
switch (``simulator_tpm_roots``).

Invariants:
- One machine per kernel digest, at ``<sim>/tpm/<first 16 hex digits>``; its TCTI is written
  to ``tcti`` in that directory while it runs (the agent and in-process collectors read it),
  and removed when it stops.
- ``tpm_machines`` starts, boots and enrols every machine, and always stops them on exit.
- The demo policy requires the quoted SHA-256 PCRs 0, 4 and 7 to have the values of the
  accepted kernel's boot (computed by ``SimulatedBoot``), a replayed event log and secure boot.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc

from attester_agent.collectors.base import Collector
from attester_agent.collectors.tpm import TpmCollector
from attester_agent.enrolment import enrol_tpm
from attester_agent.simulator.tpm import DEFAULT_KERNEL, SimulatedBoot, Swtpm, SwtpmLayout

DEMO_KERNEL = DEFAULT_KERNEL
WRONG_KERNEL = hashlib.sha256(b"keybroker simulated kernel v1 (tampered)").digest()
POLICY_PCRS = (0, 4, 7)


def missing_parts() -> list[str]:
    """What this machine lacks to run swtpm machines (empty when nothing)."""
    missing = [f"{tool} (Debian package {package})"
               for tool, package in (("swtpm", "swtpm"), ("swtpm_setup", "swtpm-tools"))
               if shutil.which(tool) is None]
    if importlib.util.find_spec("tpm2_pytss") is None:
        missing.append("tpm2-pytss (pip install 'keybroker[tpm]', built against Debian's "
                       "libtss2-dev)")
    return missing


def machine(sim: Path, kernel: bytes) -> SwtpmLayout:
    """The machine that boots ``kernel``."""
    return SwtpmLayout(sim / "tpm" / kernel.hex()[:16])


def ek_roots(sim: Path, kernels: Sequence[bytes]) -> list[Path]:
    """The EK CA certificates of the machines (each manufactured if needed)."""
    from attester_agent.simulator.tpm import manufacture  # noqa: PLC0415

    out: list[Path] = []
    for kernel in kernels:
        layout = machine(sim, kernel)
        manufacture(layout)
        out.extend(layout.ek_roots)
    return out


def tpm_section(kernel: bytes) -> dict[str, object]:
    """The demo policy's ``tpm:`` section accepting the boot of ``kernel``."""
    pcrs = SimulatedBoot(kernel_digest=kernel).pcrs()
    return {"pcrs": [{"bank": "sha256", "pcr": pcr, "values": [pcrs[pcr].hex()]}
                     for pcr in POLICY_PCRS],
            "require_event_log": True, "secure_boot": True}


def _tcti(layout: SwtpmLayout) -> str:
    try:
        return (layout.root / "tcti").read_text().strip()
    except OSError:
        raise RuntimeError(f"the demo TPM machine {layout.root} is not running") from None


def tpm_collector(sim: Path, kernel: bytes, init_data: bytes) -> Collector:
    """An in-process collector on the running machine that booted ``kernel``."""
    del init_data  # a TPM quote does not bind init-data
    layout = machine(sim, kernel)
    return TpmCollector(_tcti(layout), event_log=layout.event_log, name="tpm-simulator")


def agent_args(sim: Path, kernel: bytes) -> tuple[str, ...]:
    """``attester-agent`` simulator flags for the machine that booted ``kernel`` (its TCTI
    while it runs; a placeholder otherwise)."""
    layout = machine(sim, kernel)
    tcti = layout.root / "tcti"
    return ("--sim-tee", "tpm", "--tpm-tcti",
            tcti.read_text().strip() if tcti.exists() else "swtpm:host=127.0.0.1,port=PORT",
            "--tpm-event-log", str(layout.event_log))


@contextmanager
def tpm_machines(sim: Path, kernels: Sequence[bytes], broker: str,
                 credentials: grpc.ChannelCredentials) -> Iterator[list[str]]:
    """Start, boot and enrol one machine per kernel; yields one line per enrolled AK."""
    with ExitStack() as stack:
        lines = []
        for kernel in kernels:
            layout = machine(sim, kernel)
            tpm = Swtpm(layout).start()
            stack.callback(tpm.stop)
            stack.callback((layout.root / "tcti").unlink, missing_ok=True)
            tpm.boot(SimulatedBoot(kernel_digest=kernel))
            (layout.root / "tcti").write_text(tpm.tcti + "\n")
            enrolled = enrol_tpm(broker, TpmCollector(tpm.tcti, event_log=None), timeout=30.0,
                                 credentials=credentials)
            lines.append(f"swtpm {tpm.tcti} booted kernel {kernel.hex()[:16]}...: AK "
                         f"{enrolled.ak_name.hex()[:20]}... enrolled for EK "
                         f"{enrolled.ek_fingerprint[:16]}...")
        yield lines
